"""A built-in procedural data set of captioned scenes, for training and testing CLIP models
without any files. This module holds the data sets and re-exports the names of its parts:
what a scene is (:mod:`~mmcl.data.scenes_identity`), its captions and class names
(:mod:`~mmcl.data.scenes_text`) and its drawing (:mod:`~mmcl.data.scenes_render`).

A scene is ``count`` identical objects (same shape, colour and size) on a plain or faintly
textured background. Its discrete attributes plus an integer ``layout_seed`` (jitter of
placement, rotation, shade and background texture) are its identity, :class:`Scene`.

* Attributes: 8 shapes, 8 colours, 2 sizes, counts 1-4, 5 positions, 4 backgrounds.
  ``position`` is defined for single objects only (``None`` when ``count > 1``: several
  objects fill distinct cells of a 2x2 grid, and no position label would be truthful).
  Object colours are saturated hues and backgrounds are greys, so they never coincide.
* Splits: a scene's split is a fixed function of a hash of its identity (80% train,
  10% val, 10% test), so train, val and test can never share a scene. Splits share the
  attribute combinations; what is held out is the concrete scene.
* ``SceneCaptions``: ``(image, caption)`` pairs with varied, always truthful captions.
* ``SceneClassification``: the labelled views "shape", "colour", "count" and "position",
  each with class names and prompt templates for zero-shot evaluation; the labelled
  attribute is exactly balanced (label ``i % num_classes``), the others are random.

Every item is a pure function of ``(split, seed, index)`` and is generated on the fly.

>>> data = SceneCaptions("train", size=1000, image_size=32)
>>> image, text = data[0]
>>> tuple(image.shape), isinstance(text, str)
((3, 32, 32), True)
"""

from __future__ import annotations

import random
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from mmcl.data.scenes_identity import (
    BACKGROUNDS,
    COLOURS,
    COUNTS,
    POSITIONS,
    SHAPES,
    SIZES,
    SPLITS,
    Scene,
    _check_choice,
    sample_scene,
    split_of,
)
from mmcl.data.scenes_render import render
from mmcl.data.scenes_text import (
    COLOUR_WORDS,
    COUNT_WORDS,
    POSITION_PHRASES,
    SHAPE_WORDS,
    SIZE_WORDS,
    VIEWS,
    _check_view,
    caption,
    view_classnames,
    view_templates,
)
from mmcl.io.transforms import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "COLOUR_WORDS",
    "COUNTS",
    "COUNT_WORDS",
    "POSITIONS",
    "POSITION_PHRASES",
    "SHAPES",
    "SHAPE_WORDS",
    "SIZES",
    "SIZE_WORDS",
    "SPLITS",
    "VIEWS",
    "Scene",
    "SceneCaptions",
    "SceneClassification",
    "caption",
    "default_transform",
    "render",
    "sample_scene",
    "save_preview",
    "split_of",
    "view_classnames",
    "view_templates",
]


# ---------------------------------------------------------------------------- datasets
class _NormalisedTensor:
    """PIL RGB image -> ``(3, H, W)`` float tensor with CLIP's mean/std (== ToTensor +
    Normalize, written out because the two torchvision calls cost more than the drawing)."""

    def __init__(self) -> None:
        std = torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.offset = -torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1) / std

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        pixels = pixels.view(image.size[1], image.size[0], 3).permute(2, 0, 1)
        return torch.addcmul(self.offset, pixels.float(), self.scale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={OPENAI_DATASET_MEAN}, std={OPENAI_DATASET_STD})"


def default_transform() -> Callable[[Image.Image], torch.Tensor]:
    """``ToTensor`` + CLIP normalisation (no resize: scenes are rendered at the target size)."""
    return _NormalisedTensor()


class _SceneDataset(Dataset):
    _kind = ""

    def __init__(
        self,
        split: str,
        size: int,
        image_size: int,
        seed: int,
        transform: Callable[[Image.Image], Any] | None,
    ) -> None:
        _check_choice("split", split, SPLITS)
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size <= 0:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        self.split, self.size, self.image_size, self.seed = split, size, image_size, seed
        self.transform = transform if transform is not None else default_transform()

    def __len__(self) -> int:
        return self.size

    def _rng(self, index: int) -> random.Random:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        # A string seed is hashed with SHA-512 by random.Random: stable across processes.
        return random.Random(f"{self._kind}/{self.split}/{self.seed}/{index % self.size}")

    def image(self, index: int) -> Image.Image:
        """The untransformed rendered image of item ``index``."""
        return render(self.scene(index), self.image_size)

    def scene(self, index: int) -> Scene:  # pragma: no cover - overridden
        raise NotImplementedError


class SceneCaptions(_SceneDataset):
    """``(image, caption)`` pairs of procedural scenes; item i depends only on (split, seed, i).

    ``image`` is ``transform(PIL image)`` (default: CLIP-normalised tensor; pass
    ``transform=lambda im: im`` for the PIL image); ``caption`` is the string, or
    ``tokenizer([caption])[0]`` when a tokenizer is given.

    >>> from mmcl.io.tokenizer import tokenize
    >>> data = SceneCaptions("train", size=100, tokenizer=tokenize)
    >>> image, tokens = data[3]
    >>> tuple(image.shape), tuple(tokens.shape)
    ((3, 32, 32), (77,))
    >>> data.scene(3) == data.scene(3), isinstance(data.caption(3), str)
    (True, True)
    """

    _kind = "captions"

    def __init__(
        self,
        split: str,
        size: int,
        image_size: int = 32,
        seed: int = 0,
        transform: Callable[[Image.Image], Any] | None = None,
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(split, size, image_size, seed, transform)
        self.tokenizer = tokenizer

    def scene_and_caption(self, index: int) -> tuple[Scene, str]:
        rng = self._rng(index)
        scene = sample_scene(rng, self.split)
        return scene, caption(scene, rng)

    def scene(self, index: int) -> Scene:
        return self.scene_and_caption(index)[0]

    def caption(self, index: int) -> str:
        return self.scene_and_caption(index)[1]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        scene, text = self.scene_and_caption(index)
        image = self.transform(render(scene, self.image_size))
        if self.tokenizer is not None:
            return image, self.tokenizer([text])[0]
        return image, text


class SceneClassification(_SceneDataset):
    """``(image, label)`` for one attribute ("shape", "colour", "count" or "position").

    Labels index :func:`view_classnames`; item i has label ``i % num_classes`` (exactly
    balanced), with every other attribute random. The position view only has single objects.

    >>> data = SceneClassification("shape", "test", size=16)
    >>> image, label = data[2]
    >>> data.classnames[label], data.scene(2).shape
    ('triangle', 'triangle')
    """

    _kind = "classification"

    def __init__(
        self,
        view: str,
        split: str,
        size: int,
        image_size: int = 32,
        seed: int = 0,
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        _check_view(view)
        super().__init__(split, size, image_size, seed, transform)
        # The view is part of the RNG key, so the views of one seed are independent.
        self._kind = f"classification/{view}"
        self.view = view
        self.classnames = view_classnames(view)
        self.templates = view_templates(view)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def label(self, index: int) -> int:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        return (index % self.size) % self.num_classes

    def scene(self, index: int) -> Scene:
        rng = self._rng(index)
        value = VIEWS[self.view][self.label(index)]
        return sample_scene(rng, self.split, **{self.view: value})

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.transform(render(self.scene(index), self.image_size)), self.label(index)


# ----------------------------------------------------------------------------- preview
def save_preview(
    path: str | Path, n: int = 16, split: str = "train", image_size: int = 32, seed: int = 0
) -> Path:
    """Save a grid of ``n`` captioned examples (images upscaled to 128 px) as a PNG."""
    data = SceneCaptions(split, n, image_size=image_size, seed=seed, transform=lambda im: im)
    cell, text_height, columns = 128, 40, min(n, 8)
    rows = -(-n // columns)
    sheet = Image.new("RGB", (columns * cell, rows * (cell + text_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        image, text = data[i]
        x, y = (i % columns) * cell, (i // columns) * (cell + text_height)
        sheet.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        draw.multiline_text((x + 2, y + cell + 1), textwrap.fill(text, 24), fill="black")
    path = Path(path)
    sheet.save(path)
    return path
