"""Image files on disk as datasets: flat folders, class folders, and explicit path lists.

Unreadable files are errors that name the file; with `skip_bad=True` they are dropped from the
batch (with a warning naming them) and counted, so a long job does not die on one bad JPEG.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class ImageReadError(ValueError):
    def __init__(self, path: Path | str, reason: str | None = None):
        if reason is None:
            # One argument: a formatted message. A DataLoader worker's error comes back this
            # way, as the worker's whole traceback; keep only its last line, our message.
            message = str(path).rstrip().splitlines()[-1]
            name = f"{type(self).__module__}.{type(self).__qualname__}"
            message = message.removeprefix(f"{name}: ").removeprefix(f"{type(self).__name__}: ")
        else:
            message = f"{path}: cannot read image ({reason})"
        super().__init__(message)
        self.path = path


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image, so truncated files fail here and not later."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(path, str(error) or type(error).__name__) from error


def load_image_or_skip(path: str | Path, skip_bad: bool) -> Image.Image | None:
    """`load_image`, or None with a warning naming the file when it is unreadable and
    `skip_bad` is set (the caller's collate drops and counts the Nones)."""
    try:
        return load_image(path)
    except ImageReadError as error:
        if not skip_bad:
            raise
        warnings.warn(f"skipping unreadable image {error}", stacklevel=3)
        return None


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Image files below `folder` in a stable (sorted) order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    pattern = "**/*" if recursive else "*"
    return sorted(
        p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


def class_folders(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """`root/<class>/<image>` → (paths, labels, class folder names sorted alphabetically)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not classes:
        raise ValueError(f"{root}: expected one subfolder per class, found none")
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = list_images(root / name)
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise ValueError(f"{root}: the class folders hold no images ({sorted(IMAGE_EXTENSIONS)})")
    return paths, labels, classes


class ImageFiles(Dataset):
    """Images from a list of paths, transformed; items are (image, label, index)."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        transform: Callable[[Image.Image], Any],
        labels: Sequence[int] | None = None,
        skip_bad: bool = False,
    ):
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = [Path(p) for p in paths]
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)
        self.transform = transform
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = load_image_or_skip(self.paths[index], self.skip_bad)
        if image is None:
            return None
        return self.transform(image), self.labels[index], index


def collate_skipping_none(batch: list, empty: tuple[Any, ...]) -> tuple[Any, ...]:
    """Collate the items that are not `None` (unreadable files); append how many were dropped.

    `empty` is what the fields collate to when every item of the batch was dropped, since
    there is then nothing to infer their shapes from.

    >>> collate_skipping_none([(1, "a"), None], empty=((), ()))
    (tensor([1]), ('a',), 1)
    """
    good = [item for item in batch if item is not None]
    dropped = len(batch) - len(good)
    fields = tuple(default_collate(good)) if good else empty
    return (*fields, dropped)


def collate_skipping_bad(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Collate (image, label, index) items, dropping the `None`s of unreadable files.

    Returns images, labels, indices and how many items were dropped.
    """
    empty = torch.empty(0, dtype=torch.long)
    return collate_skipping_none(batch, empty=(torch.empty(0), empty, empty))
