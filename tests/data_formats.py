"""Tiny CIFAR-10, CIFAR-100 and MNIST written in torchvision's formats, for tests.

CIFAR: the python version's pickled batches (a dict with "data", an (N, 3072) uint8 array of
the red, then green, then blue planes of each 32x32 image, and the labels) and a meta file of
class names; MNIST: big-endian IDX files (magic 0x0803 for images, 0x0801 for labels).
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer"]
CIFAR10_CLASSES += ["dog", "frog", "horse", "ship", "truck"]


def _pickle(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(value, protocol=2))


def random_cifar(
    count: int, classes: int, seed: int, first: int = 0
) -> tuple[np.ndarray, list[int]]:
    """(N, 32, 32, 3) uint8 images and labels that take every class in turn, from `first`."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    return images, [(first + i) % classes for i in range(count)]


def write_cifar10(root: Path, per_batch: int = 4, test: int = 10) -> dict[str, tuple]:
    """root/cifar-10-batches-py as torchvision leaves it; returns split -> (images, labels)."""
    folder = root / "cifar-10-batches-py"
    splits = {"train": ([], []), "test": ([], [])}
    files = [(f"data_batch_{i}", "train", per_batch) for i in range(1, 6)]
    for seed, (file, split, count) in enumerate([*files, ("test_batch", "test", test)]):
        images, labels = random_cifar(count, 10, seed, first=len(splits[split][1]))
        planes = images.transpose(0, 3, 1, 2).reshape(count, 3072)  # R, G, B planes per row
        _pickle(folder / file, {"batch_label": file, "labels": labels, "data": planes})
        splits[split][0].append(images)
        splits[split][1].extend(labels)
    _pickle(folder / "batches.meta", {"label_names": CIFAR10_CLASSES, "num_vis": 3072})
    return {split: (np.concatenate(images), labels) for split, (images, labels) in splits.items()}


def write_cifar100(root: Path, train: int = 8, test: int = 4) -> dict[str, tuple]:
    folder = root / "cifar-100-python"
    names = ["apple", "aquarium_fish"] + [f"class_{i}" for i in range(2, 100)]
    splits = {}
    for seed, (split, count) in enumerate((("train", train), ("test", test))):
        images, labels = random_cifar(count, 100, seed)
        planes = images.transpose(0, 3, 1, 2).reshape(count, 3072)
        coarse = [label // 5 for label in labels]
        _pickle(folder / split, {"fine_labels": labels, "coarse_labels": coarse, "data": planes})
        splits[split] = (images, labels)
    _pickle(folder / "meta", {"fine_label_names": names, "coarse_label_names": []})
    return splits


def write_idx(path: Path, values: np.ndarray, gz: bool) -> None:
    header = np.array([0x0800 + values.ndim, *values.shape], dtype=">u4").tobytes()
    data = header + values.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def write_mnist(root: Path, train: int = 20, test: int = 30, gz: bool = False) -> dict:
    """root/MNIST/raw as torchvision leaves it; returns split -> (images, labels)."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, prefix, count in (("train", "train", train), ("test", "t10k", test)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = np.arange(count) % 10
        write_idx(root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", labels, gz)
        splits[split] = (images, labels.tolist())
    return splits
