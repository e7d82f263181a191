"""Image files on disk as datasets: flat folders, class folders, and explicit path lists.

Unreadable files are errors that name the file; with `skip_bad=True` they are dropped from the
batch (with a warning naming them) and counted, so a long job does not die on one bad JPEG.
Unreadable means anything that does not decode to an image: a missing, empty, truncated or
corrupt file, a dangling or looping symbolic link, a folder or FIFO with an image's name (only
regular files are opened, so a FIFO cannot block a job), and an image of more pixels than
Pillow's limit, ``PIL.Image.MAX_IMAGE_PIXELS`` (89,478,485 by default; `pixel_limit` or the
CLI's ``--max-image-pixels`` changes it): a few bytes of PNG can claim 100000 x 100000 pixels.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate, get_worker_info

# HIGH_BIT_DEPTH_CHOICES: "scale" such images to 8 bits (`mmcl.io.transforms.To8Bit`, in the
# preprocessing) or "refuse" them as unreadable.
from mmcl.choices import HIGH_BIT_DEPTH_CHOICES
from mmcl.io.transforms import HIGH_BIT_DEPTH_MODES

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


def load_image(path: str | Path, high_bit_depth: str = "scale") -> Image.Image:
    """Open and fully decode an image, so truncated files fail here and not later.

    Raises `ImageReadError` naming the file for anything that is not a readable image (see the
    module docstring), including an image of more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``.
    Images of more than 8 bits a sample (16-bit PNGs, grey or colour; 32-bit integer or float
    images) are returned as Pillow reads them with ``high_bit_depth="scale"`` (mmcl's
    preprocessing scales them to 8 bits), and refused with ``high_bit_depth="refuse"``.
    """
    if high_bit_depth not in HIGH_BIT_DEPTH_CHOICES:
        raise ValueError(
            f"high_bit_depth must be one of {HIGH_BIT_DEPTH_CHOICES}, got {high_bit_depth!r}"
        )
    path = Path(path)
    handle = _open_regular_file(path)
    try:
        with handle, warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; both are bombs to us.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(handle) as image:
                if high_bit_depth == "refuse" and _more_than_8_bits(image):
                    raise ImageReadError(path, "more than 8 bits a sample, refused as asked")
                image.load()
                return image.copy()
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(path, _too_many_pixels(error)) from None
    except UnidentifiedImageError:
        raise ImageReadError(
            path, "not an image file, or one of a format Pillow cannot read"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(path, str(error) or type(error).__name__) from error


def _open_regular_file(path: Path) -> BinaryIO:
    """Open `path` for reading if it is a regular file (following symbolic links); anything
    else is an `ImageReadError`. Opened without blocking, so a FIFO cannot hang the job."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        reason = "a dangling symbolic link" if path.is_symlink() else "no such file"
        raise ImageReadError(path, reason) from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ImageReadError(path, "a loop of symbolic links") from None
        raise ImageReadError(path, error.strerror or str(error)) from None
    kind = stat.S_IFMT(os.fstat(descriptor).st_mode)
    if kind != stat.S_IFREG:
        os.close(descriptor)
        raise ImageReadError(path, f"{_FILE_KINDS.get(kind, 'something')}, not a regular file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")


_FILE_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _too_many_pixels(error: Exception) -> str:
    claimed = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{int(claimed.group(1)):,} pixels" if claimed else "too many pixels"
    return (
        f"{size}, over the limit of {Image.MAX_IMAGE_PIXELS:,}: a decompression bomb? "
        f"Raise the limit with --max-image-pixels, or mmcl.data.images.pixel_limit in Python"
    )


def _more_than_8_bits(image: Image.Image) -> bool:
    if image.mode in HIGH_BIT_DEPTH_MODES or image.mode == "F":
        return True
    # Pillow decodes 16-bit colour and grey+alpha PNGs to 8-bit modes; the decoder's raw mode
    # (e.g. "RGB;16B") still tells.
    for tile in image.tile:
        args = tile.args
        rawmode = args if isinstance(args, str) else next(iter(args or ()), "")
        if isinstance(rawmode, str) and ";16" in rawmode:
            return True
    return False


@contextlib.contextmanager
def pixel_limit(limit: int | None) -> Iterator[None]:
    """Within the block, images of more than `limit` pixels are unreadable (None: no limit).

    The limit is Pillow's ``PIL.Image.MAX_IMAGE_PIXELS`` (default 89,478,485, about 9459 x
    9459), restored on leaving; `ImageFiles` made within the block keep it in DataLoader
    workers too. mmcl refuses images above it, where Pillow only warns below twice it.

    >>> with pixel_limit(200_000_000):
    ...     pass  # read very large scans here
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"the pixel limit must be a positive integer or None, got {limit!r}")
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def load_image_or_skip(
    path: str | Path, skip_bad: bool, high_bit_depth: str = "scale"
) -> Image.Image | None:
    """`load_image`, or None with a warning naming the file when it is unreadable and
    `skip_bad` is set (the caller's collate drops and counts the Nones)."""
    try:
        return load_image(path, high_bit_depth)
    except ImageReadError as error:
        if not skip_bad:
            raise
        warnings.warn(f"skipping unreadable image {error}", stacklevel=3)
        return None


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Entries below `folder` with an image file's extension, in a stable (sorted) order.

    Entries that have an image's name but are not readable files (a dangling or looping
    symbolic link, a FIFO, a folder named ``x.jpg``) are listed too, so that reading them
    fails naming them, or with ``skip_bad`` counts them, rather than dropping them unseen.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_EXTENSIONS)


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
    """Images from a list of paths, transformed; items are (image, label, index).

    `high_bit_depth` is `load_image`'s. The pixel limit in force when the dataset is made
    (`pixel_limit`) also holds in DataLoader worker processes, which may not inherit it.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        transform: Callable[[Image.Image], Any],
        labels: Sequence[int] | None = None,
        skip_bad: bool = False,
        high_bit_depth: str = "scale",
    ):
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        if high_bit_depth not in HIGH_BIT_DEPTH_CHOICES:
            raise ValueError(
                f"high_bit_depth must be one of {HIGH_BIT_DEPTH_CHOICES}, got {high_bit_depth!r}"
            )
        self.paths = [Path(p) for p in paths]
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)
        self.transform = transform
        self.skip_bad = skip_bad
        self.high_bit_depth = high_bit_depth
        self.max_image_pixels = Image.MAX_IMAGE_PIXELS

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        if get_worker_info() is not None:  # a worker process: its own copy of Pillow's setting
            Image.MAX_IMAGE_PIXELS = self.max_image_pixels
        image = load_image_or_skip(self.paths[index], self.skip_bad, self.high_bit_depth)
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
