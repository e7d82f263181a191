"""Domains for domain-incremental scenarios: the same classes, a different input distribution.

:func:`transformed_domains` turns one labelled dataset into several domains, each applying its
own transform to every image (labels unchanged); :func:`rotated_domains` (rotation by an angle)
and :func:`colour_permuted_domains` (a fixed permutation of the RGB channels) are ready-made
examples, in the style of Rotated-MNIST and colour-shifted benchmarks. The transforms work on
CHW tensors (e.g. already preprocessed images) and on PIL images, and read no randomness, so a
domain is a fixed function of its parameters. Pass the result to
:func:`mmcl.continual.scenarios.domain_incremental`.

>>> import torch
>>> from torch.utils.data import TensorDataset
>>> data = TensorDataset(torch.arange(4.0).view(1, 1, 2, 2).repeat(2, 3, 1, 1), torch.tensor([0, 1]))
>>> (name, train, test), = rotated_domains(data, data, [90])
>>> name, train[0][0][0].tolist(), train.targets
('rotated-90', [[1.0, 3.0], [0.0, 2.0]], [0, 1])
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from mmcl.continual.tasks import dataset_targets

__all__ = [
    "PermuteChannels",
    "Rotate",
    "TransformedDataset",
    "colour_permuted_domains",
    "rotated_domains",
    "transformed_domains",
]

# The identity, then the two cyclic shifts (the first three differ in every channel pairwise,
# so the default domains are all different), then the three swaps.
CHANNEL_PERMUTATIONS: tuple[tuple[int, int, int], ...] = (
    (0, 1, 2),
    (1, 2, 0),
    (2, 0, 1),
    (0, 2, 1),
    (2, 1, 0),
    (1, 0, 2),
)


class TransformedDataset(Dataset):
    """``(transform(image), label)`` for every ``(image, label)`` of ``dataset``; forwards
    ``classnames``, ``templates`` and ``targets`` (labels are unchanged)."""

    def __init__(self, dataset: Any, transform: Callable[[Any], Any]) -> None:
        self.dataset = dataset
        self.transform = transform
        self.classnames = getattr(dataset, "classnames", None)
        self.templates = getattr(dataset, "templates", None)

    @cached_property
    def targets(self) -> list[int]:
        return dataset_targets(self.dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, label = self.dataset[index]
        return self.transform(image), label

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} items, {self.transform!r})"


class Rotate:
    """Rotate a CHW tensor or PIL image by ``angle`` degrees counter-clockwise, same size.

    Multiples of 90 are exact (``torch.rot90``); other angles are bilinear with corners filled
    with 0, which is the mean colour of CLIP-normalised tensors.
    """

    def __init__(self, angle: float) -> None:
        if isinstance(angle, bool) or not isinstance(angle, numbers.Real):
            raise ValueError(f"angle must be a number of degrees, got {angle!r}")
        self.angle = angle

    def __call__(self, image: Any) -> Any:
        if isinstance(image, torch.Tensor) and self.angle % 90 == 0:
            quarter_turns = int(self.angle // 90) % 4
            # A quarter turn of a non-square image would swap height and width: keep the size.
            if quarter_turns % 2 == 0 or image.shape[-1] == image.shape[-2]:
                return torch.rot90(image, quarter_turns, dims=(-2, -1))
        if isinstance(image, Image.Image):
            return image.rotate(self.angle, resample=Image.Resampling.BILINEAR)
        return TF.rotate(image, self.angle, interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.angle})"


class PermuteChannels:
    """Reorder the colour channels: output channel ``i`` is input channel ``order[i]``."""

    def __init__(self, order: Sequence[int]) -> None:
        order = tuple(order)
        try:
            indices = tuple(-1 if isinstance(i, bool) else operator.index(i) for i in order)
        except TypeError:
            indices = ()
        if sorted(indices) != [0, 1, 2]:
            raise ValueError(f"order must be a permutation of (0, 1, 2), got {order}")
        self.order = indices

    def __call__(self, image: Any) -> Any:
        if isinstance(image, Image.Image):
            bands = image.convert("RGB").split()
            return Image.merge("RGB", [bands[i] for i in self.order])
        if image.ndim < 3 or image.shape[-3] != 3:
            raise ValueError(f"expected 3 colour channels, got image shape {tuple(image.shape)}")
        return image[..., list(self.order), :, :]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.order})"


def transformed_domains(
    train: Any, test: Any, transforms: Mapping[str, Callable[[Any], Any]]
) -> list[tuple[str, TransformedDataset, TransformedDataset]]:
    """One ``(name, train, test)`` domain per named transform, applied to both splits."""
    if not transforms:
        raise ValueError("transformed_domains needs at least one named transform")
    return [
        (name, TransformedDataset(train, transform), TransformedDataset(test, transform))
        for name, transform in transforms.items()
    ]


def rotated_domains(
    train: Any, test: Any, angles: Sequence[float], prefix: str = "rotated"
) -> list[tuple[str, TransformedDataset, TransformedDataset]]:
    """Domains ``"{prefix}-{angle}"``: every image rotated by ``angle`` degrees."""
    rotations = [Rotate(a) for a in angles]
    turns = [a % 360 for a in angles]  # 0 and 360 degrees are the same domain
    if len(set(turns)) != len(turns):
        raise ValueError(f"angles must be distinct modulo 360 degrees, got {list(angles)}")
    transforms = {f"{prefix}-{r.angle:g}": r for r in rotations}
    _check_distinct(transforms, angles, "angles")
    return transformed_domains(train, test, transforms)


def colour_permuted_domains(
    train: Any,
    test: Any,
    orders: Sequence[Sequence[int]] = CHANNEL_PERMUTATIONS[:3],
    prefix: str = "channels",
) -> list[tuple[str, TransformedDataset, TransformedDataset]]:
    """Domains ``"{prefix}-rgb"``, ``"{prefix}-gbr"``, ...: the RGB channels reordered (a
    colour shift that keeps shapes and brightness structure, not the hues)."""
    permutations = [PermuteChannels(o) for o in orders]  # checks each order first
    transforms = {f"{prefix}-{''.join('rgb'[i] for i in p.order)}": p for p in permutations}
    _check_distinct(transforms, orders, "orders")
    return transformed_domains(train, test, transforms)


def _check_distinct(transforms: Mapping[str, Any], given: Sequence[Any], what: str) -> None:
    # Two equal parameters would make two tasks of the same name (the second one lost).
    if len(transforms) != len(given):
        raise ValueError(f"{what} must be distinct, got {list(given)}")
