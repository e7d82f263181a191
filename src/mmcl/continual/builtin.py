"""mini-MTIL: a small multi-dataset continual-learning sequence that runs on a laptop CPU.

In the style of MTIL (Zheng et al. 2023, "Preventing Zero-Shot Transfer Degradation in
Continual Learning of Vision-Language Models"), every task is a whole classification data set
with its own class names and prompt templates. The protocol:

* **Tasks, in this order:** ``scene-shape`` (8 classes), ``scene-colour`` (8), ``scene-count``
  (4), ``scene-position`` (5): the built-in procedural scenes
  (:class:`~mmcl.data.scenes.SceneClassification`, train items from the scenes' "train" split,
  test items from their "test" split, which never share a scene); ``cifar10`` (10): CIFAR-10's
  train and test sets from the data root; ``mnist`` (10): MNIST's test set from the data root
  (the only part the shared data holds, so every form of the data gives the same protocol),
  split per class into disjoint 80% train / 20% test pools; ``digits`` (10): scikit-learn's
  ``load_digits()`` 8x8 digits, split the same way. The data root holds CIFAR-10 and MNIST as
  image folders or as torchvision leaves them (:mod:`mmcl.data.datasets`).
* **Sizes:** each task has ``train_size`` training and ``test_size`` test images (default 2,000
  and 500: about five minutes an epoch over all seven tasks for a small ViT on two CPU cores).
  Scenes are generated to exactly that size; the real data sets draw class-balanced subsets of
  their pools, capped at the pool (digits has 1,438 train and 359 test images).
* **Seeds:** ``seed`` fixes every choice: the scenes' generation seed, the MNIST and digits
  train/test pools and every subset. Each task's draws are keyed by its name and the seed, so
  selecting fewer tasks (``tasks=``) does not change the ones kept.
* **Order:** the order above, whatever the seed, unless ``shuffle_order=True``: then the
  selected tasks come in a permutation drawn from the seed alone (the same seed, the same
  order), so that several seeds average over task orders too. A task's items do not depend
  on its position.
* **Images:** ``(3, image_size, image_size)`` float tensors with CLIP's normalisation. Scenes
  are rendered at ``image_size``; files and digits go through ``get_preprocess(image_size)``
  (bicubic resize, centre crop, RGB). There is no augmentation, so each item is made once
  and kept in memory (:class:`KeptItems`: 12 KiB an item at 32 pixels, about 210 MiB for the
  default sizes).
* **Class names and templates:** OpenAI's for CIFAR-10 and MNIST
  (:func:`~mmcl.data.zeroshot.load_zero_shot_metadata`); digits uses MNIST's (class names
  "0".."9", ``a photo of the number: "{}".``); scenes use their views' names and templates.
* **Evaluation:** a task is always evaluated with its own class names and templates (averaged
  prompt embeddings as the classifier, labels local to the task). "Zero-shot on future tasks"
  is this same evaluation on tasks the model has not been trained on yet: the part of the
  accuracy matrix above the diagonal measures how well zero-shot transfer survives.
* **Missing data:** without the data (``data_root``, else ``MMCL_DATA_ROOT``, else
  ``../shared/data`` from the repository root; ``download=True`` fetches CIFAR-10 and MNIST
  with torchvision) or scikit-learn, the tasks that need them are left out with a warning
  naming what is missing; ``require_all=True`` raises instead.

>>> scenario = mini_mtil(train_size=8, test_size=4, tasks=["scene-count", "scene-shape"])
>>> print(describe(scenario))  # doctest: +NORMALIZE_WHITESPACE
mini-mtil: multi-dataset scenario, 2 tasks, seed 0
#  task         classes  train  test  templates  class names
0  scene-shape        8      8     4          6  circle, square, triangle, star, ...
1  scene-count        4      8     4          5  one, two, three, four
"""

from __future__ import annotations

import operator
import random
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from mmcl.continual.scenarios import multi_dataset
from mmcl.continual.tasks import Scenario, describe
from mmcl.data.datasets import (
    DATA_ROOT_ENV,
    LabelledImageFiles,
    LabelledImages,
    MissingDataError,
    data_root,
    find_dataset,
)
from mmcl.data.scenes import SceneClassification
from mmcl.data.zeroshot import load_zero_shot_metadata
from mmcl.io.transforms import get_preprocess

__all__ = [
    "MINI_MTIL_TASKS",
    "SHARED_DATA_ENV",
    "DigitImages",
    "KeptItems",
    "LabelledImageFiles",
    "MissingDataError",
    "balanced_subset",
    "describe",
    "mini_mtil",
    "mini_mtil_order",
    "shared_data_root",
    "split_per_class",
]

SHARED_DATA_ENV = DATA_ROOT_ENV  # the older name
MINI_MTIL_TASKS: tuple[str, ...] = (
    "scene-shape",
    "scene-colour",
    "scene-count",
    "scene-position",
    "cifar10",
    "mnist",
    "digits",
)
_TRAIN_FRACTION = 0.8  # of MNIST's and digits' images, per class; the rest is the test pool

Parts = tuple[Dataset, Dataset, list[str], list[str]]


def shared_data_root(root: str | Path | None = None) -> Path:
    """The data root (`mmcl.data.datasets.data_root`); the older name."""
    return data_root(root)


class DigitImages(Dataset):
    """8x8 digit images (values 0..16, as ``load_digits().images``) as ``(transform(PIL L
    image), label)``; ``transform`` does the upsampling (e.g. ``get_preprocess(32)``)."""

    def __init__(
        self, images: np.ndarray, labels: Sequence[int], transform: Callable[[Any], Any]
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        # 0..16 ink levels -> 0..255 grey, the range PIL and the CLIP transform expect.
        self.pixels = np.rint(np.asarray(images, dtype=np.float64) * (255 / 16)).astype(np.uint8)
        self.targets, self.transform = [int(y) for y in labels], transform

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.pixels[index], mode="L")

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.transform(self.image(index)), self.targets[index]


class KeptItems(Dataset):
    """`dataset` whose items are made once and then kept: a task is read every step and
    evaluated after every task, and decoding and resizing its files (or rendering its scenes)
    again each time cost more CPU than the tiny model's training did. The items carry no
    augmentation, so each is the same every time. Other attributes are the dataset's own."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset, self.kept = dataset, {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        index = operator.index(index)
        if index < 0:
            index += len(self)
        if index not in self.kept:
            self.kept[index] = self.dataset[index]
        return self.kept[index]

    def __getattr__(self, name: str) -> Any:  # only for what this class does not define
        if name in ("dataset", "kept"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _by_class(labels: Sequence[int], indices: Sequence[int], rng: random.Random) -> dict:
    groups: dict[int, list[int]] = defaultdict(list)
    for i in indices:
        groups[labels[i]].append(i)
    for label in sorted(groups):
        rng.shuffle(groups[label])
    return groups


def balanced_subset(
    labels: Sequence[int], size: int, rng: random.Random, pool: Sequence[int] | None = None
) -> list[int]:
    """At most ``size`` indices of ``pool`` (default: all), as class-balanced as the pool
    allows (classes take turns), random within a class, returned sorted.

    >>> labels = [0, 0, 0, 0, 1, 1]
    >>> [labels[i] for i in balanced_subset(labels, 4, random.Random(0))]
    [0, 0, 1, 1]
    """
    groups = _by_class(labels, range(len(labels)) if pool is None else pool, rng)
    ranked = sorted(
        (rank, label, i) for label, members in groups.items() for rank, i in enumerate(members)
    )
    return sorted(i for _, _, i in ranked[:size])


def split_per_class(
    labels: Sequence[int], fraction: float, rng: random.Random
) -> tuple[list[int], list[int]]:
    """Disjoint (first, rest) index lists: ``round(fraction * n)`` random items of every class
    go to the first, the others to the second; both sorted."""
    first, rest = [], []
    for members in _by_class(labels, range(len(labels)), rng).values():
        cut = round(fraction * len(members))
        first += members[:cut]
        rest += members[cut:]
    return sorted(first), sorted(rest)


def _task_rng(task: str, seed: int, purpose: str) -> random.Random:
    # A string seed is hashed (SHA-512) by random.Random: stable, and independent per task.
    return random.Random(f"mini-mtil/{task}/{purpose}/{seed}")


def labelled_images(
    name: str, split: str, root: Path, download: bool, classnames: Sequence[str]
) -> LabelledImages:
    """`find_dataset`, with its classes checked against `classnames` (labels are positions)."""
    found = find_dataset(name, split, root, download)
    found.check_classes(classnames)
    return found


def _scene_view(view: str) -> Callable[..., Parts]:
    def build(image_size, seed, train_size, test_size, root, download) -> Parts:
        train = SceneClassification(view, "train", train_size, image_size, seed)
        test = SceneClassification(view, "test", test_size, image_size, seed)
        return train, test, train.classnames, train.templates

    return build


def _cifar10(image_size, seed, train_size, test_size, root, download) -> Parts:
    meta = load_zero_shot_metadata("cifar10")
    transform = get_preprocess(image_size)
    parts = []
    for split, size in (("train", train_size), ("test", test_size)):
        found = labelled_images("cifar10", split, root, download, meta.classnames)
        keep = balanced_subset(found.labels, size, _task_rng("cifar10", seed, split))
        parts.append(found.subset(keep, transform))
    return parts[0], parts[1], list(meta.classnames), list(meta.templates)


def _mnist(image_size, seed, train_size, test_size, root, download) -> Parts:
    meta = load_zero_shot_metadata("mnist")
    found = labelled_images("mnist", "test", root, download, meta.classnames)
    train_pool, test_pool = split_per_class(
        found.labels, _TRAIN_FRACTION, _task_rng("mnist", seed, "pools")
    )
    transform = get_preprocess(image_size)
    parts = []
    for split, size, pool in (("train", train_size, train_pool), ("test", test_size, test_pool)):
        keep = balanced_subset(found.labels, size, _task_rng("mnist", seed, split), pool)
        parts.append(found.subset(keep, transform))
    return parts[0], parts[1], list(meta.classnames), list(meta.templates)


def _digits(image_size, seed, train_size, test_size, root, download) -> Parts:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MissingDataError("scikit-learn is not installed (pip install scikit-learn)") from None
    meta = load_zero_shot_metadata("mnist")  # the same ten digit names and OpenAI's template
    digits = load_digits()
    labels = [int(y) for y in digits.target]
    train_pool, test_pool = split_per_class(
        labels, _TRAIN_FRACTION, _task_rng("digits", seed, "pools")
    )
    transform = get_preprocess(image_size)
    parts = []
    for split, size, pool in (("train", train_size, train_pool), ("test", test_size, test_pool)):
        keep = balanced_subset(labels, size, _task_rng("digits", seed, split), pool)
        parts.append(DigitImages(digits.images[keep], [labels[i] for i in keep], transform))
    return parts[0], parts[1], list(meta.classnames), list(meta.templates)


_BUILDERS: dict[str, Callable[..., Parts]] = {
    "scene-shape": _scene_view("shape"),
    "scene-colour": _scene_view("colour"),
    "scene-count": _scene_view("count"),
    "scene-position": _scene_view("position"),
    "cifar10": _cifar10,
    "mnist": _mnist,
    "digits": _digits,
}


def mini_mtil_order(tasks: Sequence[str], seed: int, shuffle: bool) -> list[str]:
    """The order `mini_mtil` trains `tasks` in: the canonical one, or with `shuffle` a
    permutation of it drawn from `seed` alone (stable across runs, machines and Python
    versions: `random.Random` seeded with a string).

    >>> mini_mtil_order(["digits", "scene-shape"], seed=0, shuffle=False)
    ['scene-shape', 'digits']
    """
    canonical = [name for name in MINI_MTIL_TASKS if name in tasks]
    if shuffle:
        random.Random(f"mini-mtil/order/{seed}").shuffle(canonical)
    return canonical


def mini_mtil(
    image_size: int = 32,
    seed: int = 0,
    train_size: int = 2000,
    test_size: int = 500,
    data_root: str | Path | None = None,
    tasks: Sequence[str] | None = None,
    require_all: bool = False,
    download: bool = False,
    shuffle_order: bool = False,
) -> Scenario:
    """The mini-MTIL sequence (protocol in the module docstring) as a multi-dataset scenario.

    ``tasks`` picks a subset of :data:`MINI_MTIL_TASKS` (kept in the canonical order, or in
    an order drawn from ``seed`` with ``shuffle_order``: :func:`mini_mtil_order`);
    ``data_root`` is the folder holding CIFAR-10 and MNIST (:mod:`mmcl.data.datasets`), and
    ``download`` lets torchvision fetch them there when they are not.
    """
    if not isinstance(shuffle_order, bool):
        raise ValueError(f"shuffle_order must be True or False, got {shuffle_order!r}")
    for what, value in (
        ("image_size", image_size),
        ("train_size", train_size),
        ("test_size", test_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{what} must be a positive int, got {value!r}")
    if isinstance(tasks, str):  # one task name, not its letters
        tasks = [tasks]
    chosen = list(MINI_MTIL_TASKS) if tasks is None else list(tasks)
    if not chosen:
        raise ValueError(f"tasks is empty: choose from {list(MINI_MTIL_TASKS)}")
    unknown = sorted(set(chosen) - set(MINI_MTIL_TASKS), key=str)
    if unknown:
        raise ValueError(f"unknown mini-MTIL tasks {unknown}; valid: {list(MINI_MTIL_TASKS)}")
    root = shared_data_root(data_root)
    entries = []
    for name in mini_mtil_order(chosen, seed, shuffle_order):
        try:
            train, test, classnames, templates = _BUILDERS[name](
                image_size, seed, train_size, test_size, root, download
            )
        except MissingDataError as missing:
            if require_all:
                raise MissingDataError(f"mini_mtil task {name!r}: {missing}") from None
            warnings.warn(f"mini_mtil: leaving out task {name!r}: {missing}", stacklevel=2)
            continue
        entries.append((name, KeptItems(train), KeptItems(test), classnames, templates))
    if not entries:
        raise ValueError(f"mini_mtil: every selected task was left out ({chosen})")
    return multi_dataset(entries, seed=seed, name="mini-mtil")
