"""CIFAR-10, CIFAR-100 and MNIST by name, from the user's data root, in the formats users have.

Under the data root (`data_root`: an explicit path, else $MMCL_DATA_ROOT, else the older
$MMCL_SHARED_DATA, else ``../shared/data`` beside a source checkout), a data set is read from
the first of these that is there:

* image folders: ``<root>/<name>/<split>/<class>/<image>`` (``cifar10/train/airplane/1.png``);
* torchvision's files, as ``torchvision.datasets.CIFAR10(root)`` / ``CIFAR100`` / ``MNIST``
  leave them: ``<root>/cifar-10-batches-py/``, ``<root>/cifar-100-python/``,
  ``<root>/MNIST/raw/`` (the IDX files, gzipped or not).

Nothing is downloaded unless asked: with ``download=True`` a data set found in neither form
is fetched by torchvision (``download=True``) into the root, then read as above. CIFAR's
files are Python pickles: they are read by an unpickler that builds only dicts, lists, strings
and numpy arrays, so a file that holds anything else is refused rather than run.

>>> names = [name for name in DATASETS]
>>> names
['cifar10', 'cifar100', 'mnist']
"""

from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from mmcl.data.images import class_folders, load_image

DATA_ROOT_ENV = "MMCL_DATA_ROOT"
OLD_DATA_ROOT_ENV = "MMCL_SHARED_DATA"  # the name before MMCL_DATA_ROOT; still read
SPLITS = ("train", "test")


class MissingDataError(FileNotFoundError):
    """A data set (or what reads it) is not available."""


@dataclass(frozen=True)
class _Format:
    folder: str  # torchvision's folder under the root
    files: dict[str, tuple[str, ...]]  # split -> its files in the folder
    download: str  # the torchvision.datasets class that fetches it


DATASETS = {
    "cifar10": _Format(
        "cifar-10-batches-py",
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        "CIFAR10",
    ),
    "cifar100": _Format("cifar-100-python", {"train": ("train",), "test": ("test",)}, "CIFAR100"),
    "mnist": _Format(
        "MNIST/raw",
        {
            "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        },
        "MNIST",
    ),
}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """`root`, else $MMCL_DATA_ROOT, else $MMCL_SHARED_DATA, else ``../shared/data`` from the
    repository root of a source checkout (which may not exist)."""
    if root is not None:
        return Path(root)
    for variable in (DATA_ROOT_ENV, OLD_DATA_ROOT_ENV):
        if os.environ.get(variable):
            return Path(os.environ[variable])
    # src/mmcl/data/datasets.py -> parents[3] is the repository root.
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


@dataclass
class LabelledImages:
    """A data set's images and labels, from image files (`paths`) or from torchvision's
    arrays (`pixels`, uint8, ``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB)."""

    classnames: list[str]
    labels: list[int]
    origin: str  # where it was read, for messages
    paths: list[Path] | None = None
    pixels: np.ndarray | None = None

    def subset(self, indices: Sequence[int], transform: Callable[[Any], Any]) -> Dataset:
        """The items at `indices` as ``(transform(image), label)``."""
        labels = [self.labels[i] for i in indices]
        if self.paths is not None:
            return LabelledImageFiles([self.paths[i] for i in indices], labels, transform)
        return PixelImages(self.pixels[list(indices)], labels, transform)

    def check_classes(self, expected: Sequence[str]) -> None:
        """Labels are positions in `classnames`; they are right only if those are the
        expected classes in order."""
        found = [name.replace("_", " ") for name in self.classnames]
        if found != list(expected):
            kind = "class folders" if self.paths is not None else "the classes"
            raise ValueError(f"{self.origin}: expected {kind} {list(expected)}, found {found}")


class LabelledImageFiles(Dataset):
    """``(transform(image), label)`` for a list of image files; ``targets`` are the labels."""

    def __init__(
        self, paths: Sequence[Path], labels: Sequence[int], transform: Callable[[Any], Any]
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths, self.targets, self.transform = list(paths), list(labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.transform(load_image(self.paths[index])), self.targets[index]


class PixelImages(Dataset):
    """``(transform(PIL image), label)`` for uint8 pixel arrays (grey or RGB)."""

    def __init__(
        self, pixels: np.ndarray, labels: Sequence[int], transform: Callable[[Any], Any]
    ) -> None:
        if len(pixels) != len(labels):
            raise ValueError(f"{len(pixels)} images but {len(labels)} labels")
        self.pixels, self.targets, self.transform = pixels, list(labels), transform

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.pixels[index])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.transform(self.image(index)), self.targets[index]


def find_dataset(
    name: str, split: str, root: str | os.PathLike | None = None, download: bool = False
) -> LabelledImages:
    """`name`'s `split` from the data root, in whichever form it is there (module docstring);
    with `download`, fetched by torchvision when it is in neither."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    base = data_root(root)
    folder = base / name / split
    if folder.is_dir():
        paths, labels, classes = class_folders(folder)
        return LabelledImages(list(classes), labels, str(folder), paths=paths)
    fmt = DATASETS[name]
    if not _has_files(base / fmt.folder, fmt.files[split]):
        if not download:
            raise MissingDataError(
                f"{name} ({split}) not found under the data root {base}: looked for image "
                f"folders {folder}/<class>/ and torchvision's files in {base / fmt.folder}. "
                f"Point --data-root (or {DATA_ROOT_ENV}) at the folder that holds them, or add "
                f"--download (download=True) to fetch {name} with torchvision"
            )
        _download(name, split, base)
    reader = _read_mnist if name == "mnist" else _read_cifar
    return reader(name, base / fmt.folder, fmt.files[split])


def _has_files(folder: Path, names: Sequence[str]) -> bool:
    return all(_existing(folder / name) is not None for name in names)


def _existing(path: Path) -> Path | None:
    """`path`, or its gzipped form (torchvision keeps MNIST's .gz files beside the others)."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _download(name: str, split: str, base: Path) -> None:
    import torchvision.datasets

    kind = getattr(torchvision.datasets, DATASETS[name].download)
    try:
        kind(str(base), train=split == "train", download=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        raise MissingDataError(
            f"{name}: torchvision could not download it into {base}: {error}"
        ) from None


class _ArraysOnly(pickle.Unpickler):
    """Builds dicts, lists, strings and numpy arrays; refuses every other object."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes pickled at protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused: {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            loaded = _ArraysOnly(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise ValueError(f"{path}: not one of CIFAR's pickled batches ({error})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: not one of CIFAR's pickled batches (not a dict)")
    # Python 2's pickles give str keys read as latin-1, Python 3's bytes: one kind here.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in loaded.items()}


def _read_cifar(name: str, folder: Path, files: Sequence[str]) -> LabelledImages:
    label_key, meta_file, names_key = (
        ("fine_labels", "meta", "fine_label_names")
        if name == "cifar100"
        else ("labels", "batches.meta", "label_names")
    )
    pixels, labels = [], []
    for file in files:
        batch = _unpickle(folder / file)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8)
            pixels.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels += [int(y) for y in batch[label_key]]
        except (KeyError, ValueError) as error:
            raise ValueError(f"{folder / file}: not a {name} batch ({error})") from None
    meta = _unpickle(folder / meta_file)
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(names_key, [])]
    stacked = np.concatenate(pixels)
    if len(stacked) != len(labels):
        raise ValueError(f"{folder}: {len(stacked)} images but {len(labels)} labels")
    return LabelledImages(classes, labels, str(folder), pixels=stacked)


def _read_idx(path: Path, dimensions: int) -> np.ndarray:
    """An IDX file (MNIST's format): a big-endian header, then unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    header = np.frombuffer(data[:4], dtype=">u4")[0] if len(data) >= 4 else 0
    if header != 0x0800 + dimensions:  # 0x08: unsigned bytes
        raise ValueError(f"{path}: not an IDX file of {dimensions}-dimensional unsigned bytes")
    shape = tuple(int(n) for n in np.frombuffer(data[4 : 4 + 4 * dimensions], dtype=">u4"))
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dimensions)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"{path}: the header says {shape}, the file holds {values.size} values")
    return values.reshape(shape)


def _read_mnist(name: str, folder: Path, files: Sequence[str]) -> LabelledImages:
    images_file, labels_file = (_existing(folder / file) for file in files)
    pixels, labels = _read_idx(images_file, 3), _read_idx(labels_file, 1)
    if len(pixels) != len(labels):
        raise ValueError(f"{folder}: {len(pixels)} images but {len(labels)} labels")
    classes = [str(digit) for digit in range(10)]
    return LabelledImages(classes, labels.tolist(), str(folder), pixels=pixels)
