"""A built-in procedural data set of captioned scenes, for training and testing CLIP models
without any files.

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

import hashlib
import random
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from mmcl.data.scenes_render import BACKGROUND_RGB, COLOUR_RGB, POSITION_CENTRES, SHAPE_POLYGONS
from mmcl.data.scenes_render import render as render
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

SHAPES: tuple[str, ...] = tuple(SHAPE_POLYGONS)
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)
SIZES: tuple[str, ...] = ("small", "large")
COUNTS: tuple[int, ...] = (1, 2, 3, 4)
POSITIONS: tuple[str, ...] = tuple(POSITION_CENTRES)
BACKGROUNDS: tuple[str, ...] = tuple(BACKGROUND_RGB)

# Fractions of all scenes in each split, by identity hash.
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
SPLITS: tuple[str, ...] = tuple(SPLIT_FRACTIONS)
_LAYOUT_SEED_BITS = 32
_ATTRIBUTES = ("shape", "colour", "size", "count", "position", "background")


@dataclass(frozen=True)
class Scene:
    """One scene's identity: its attributes and the seed of its layout jitter.

    >>> scene = Scene("heart", "pink", "small", 1, "left", "black", layout_seed=3)
    >>> render(scene, 32).size, split_of(scene) in SPLITS
    ((32, 32), True)
    """

    shape: str
    colour: str
    size: str
    count: int
    position: str | None  # only for count == 1; None otherwise
    background: str
    layout_seed: int

    def __post_init__(self) -> None:
        for name, valid in (
            ("shape", SHAPES),
            ("colour", COLOURS),
            ("size", SIZES),
            ("count", COUNTS),
            ("background", BACKGROUNDS),
        ):
            if getattr(self, name) not in valid:
                raise ValueError(
                    f"{name} must be one of {list(valid)}, got {getattr(self, name)!r}"
                )
        if self.count == 1 and self.position not in POSITIONS:
            raise ValueError(
                f"a single object needs a position in {list(POSITIONS)}, got {self.position!r}"
            )
        if self.count > 1 and self.position is not None:
            raise ValueError(f"position is only defined for count 1, got count {self.count}")

    @property
    def split(self) -> str:
        return split_of(self)


def _split_of_identity(identity: tuple) -> str:
    # blake2b rather than hash(): stable across processes and Python versions.
    digest = hashlib.blake2b(repr(identity).encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    for split, fraction in SPLIT_FRACTIONS.items():
        if u < fraction:
            return split
        u -= fraction
    return SPLITS[-1]


def split_of(scene: Scene) -> str:
    """The split ("train", "val" or "test") that ``scene`` belongs to, from its identity."""
    return _split_of_identity(astuple(scene))


def _check_choice(kind: str, value: object, valid: Sequence[object]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid: {list(valid)}")


def sample_scene(rng: random.Random, split: str, **fixed: Any) -> Scene:
    """Draw a scene of ``split``, attributes uniform unless given in ``fixed``.

    ``fixed`` may set any attribute except ``layout_seed``; fixing ``position`` implies
    count 1. The layout seed is redrawn until the scene hashes into ``split`` (about 1.25
    tries for train, 10 for val/test), which is what keeps the splits disjoint.
    """
    _check_choice("split", split, SPLITS)
    unknown = set(fixed) - set(_ATTRIBUTES)
    if unknown:
        raise ValueError(f"cannot fix {sorted(unknown)}; attributes: {list(_ATTRIBUTES)}")

    def pick(name: str, choices: Sequence[Any]) -> Any:
        return fixed[name] if name in fixed else rng.choice(choices)

    shape = pick("shape", SHAPES)
    colour = pick("colour", COLOURS)
    size = pick("size", SIZES)
    count = fixed.get("count", 1) if "position" in fixed else pick("count", COUNTS)
    position = pick("position", POSITIONS) if count == 1 else fixed.get("position")
    background = pick("background", BACKGROUNDS)
    # Validate once (Scene raises on bad values) before looking for a layout seed.
    scene = Scene(shape, colour, size, count, position, background, layout_seed=0)
    attributes = astuple(scene)[:-1]
    while True:
        layout_seed = rng.getrandbits(_LAYOUT_SEED_BITS)
        if _split_of_identity((*attributes, layout_seed)) == split:
            return Scene(*attributes, layout_seed)


# ----------------------------------------------------------------------------- captions
# Words a caption may use for each attribute value (first = canonical). The tests parse
# captions with these same tables to check that every mentioned attribute is true.
SHAPE_WORDS: dict[str, tuple[tuple[str, str], ...]] = {  # (singular, plural)
    "circle": (("circle", "circles"), ("disc", "discs")),
    "square": (("square", "squares"),),
    "triangle": (("triangle", "triangles"),),
    "star": (("star", "stars"),),
    "ring": (("ring", "rings"), ("hoop", "hoops")),
    "cross": (("cross", "crosses"), ("plus sign", "plus signs")),
    "diamond": (("diamond", "diamonds"), ("rhombus", "rhombuses")),
    "heart": (("heart", "hearts"),),
}
GENERIC_NOUNS: tuple[tuple[str, str], ...] = (("object", "objects"), ("shape", "shapes"))
COLOUR_WORDS: dict[str, tuple[str, ...]] = {c: (c,) for c in COLOURS} | {
    "purple": ("purple", "violet"),
    "cyan": ("cyan", "turquoise"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
COUNT_WORDS: dict[int, tuple[str, ...]] = {
    1: ("one", "a single"),
    2: ("two", "2"),
    3: ("three", "3"),
    4: ("four", "4"),
}
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "on the left side", "on the left of the image", "at the left"),
    "right": ("on the right", "on the right side", "on the right of the image", "at the right"),
    "top": ("at the top", "at the top of the image", "near the top", "on the top"),
    "bottom": ("at the bottom", "at the bottom of the image", "near the bottom", "on the bottom"),
    "center": ("in the center", "in the middle", "in the centre", "at the center of the image"),
}
# Sentence frames around the counted noun phrase; the bare phrase is listed twice to make it
# the most common. "{be}" is "is" or "are".
_FRAMES = (
    "{}",
    "{}",
    "a photo of {}",
    "a picture of {}",
    "an image of {}",
    "a drawing of {}",
    "there {be} {}",
)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption(scene: Scene, rng: random.Random) -> str:
    """A varied, truthful description of ``scene``, e.g. "two small red stars on a white
    background" or "a picture of a pink heart on the left".

    Colour and count are almost always mentioned, the shape in ~90% of captions (else a
    generic noun like "objects"), size, position and background about half of the time.
    """
    plural = scene.count > 1
    if rng.random() < 0.9:
        nouns = SHAPE_WORDS[scene.shape]
        noun = nouns[0] if rng.random() < 0.85 else rng.choice(nouns)
    else:
        noun = rng.choice(GENERIC_NOUNS)
    noun_text = noun[plural]
    colour = rng.choice(COLOUR_WORDS[scene.colour]) if rng.random() < 0.92 else ""
    size = rng.choice(SIZE_WORDS[scene.size]) if rng.random() < 0.5 else ""
    position = rng.choice(POSITION_PHRASES[scene.position]) if scene.position else ""
    position = position if rng.random() < 0.6 else ""
    background = scene.background if rng.random() < 0.45 else ""

    adjectives = " ".join(word for word in (size, colour) if word)
    style = rng.random()
    if plural and colour and style < 0.15:
        # "red stars, two of them" / "blue circles, 3 of them, all big".
        number = rng.choice(COUNT_WORDS[scene.count])
        text = f"{colour} {noun_text}, {number} of them"
        if size:
            text += f", all {size}"
    elif colour and style < 0.25:
        # Colour after the noun: "two stars in red", "a heart coloured pink".
        counted = _count_phrase(scene.count, f"{size} {noun_text}".strip(), rng)
        text = f"{counted} {rng.choice(('in', 'coloured', 'colored'))} {colour}"
    else:
        counted = _count_phrase(scene.count, f"{adjectives} {noun_text}".strip(), rng)
        text = rng.choice(_FRAMES).format(counted, be="are" if plural else "is")
    if position:
        text += f"{rng.choice((' ', ', '))}{position}"
    if background:
        text += rng.choice(
            (
                f" on a {background} background",
                f", {background} background",
                f" against {background}",
            )
        )
    return text


def _count_phrase(count: int, noun_phrase: str, rng: random.Random) -> str:
    if count == 1:
        roll = rng.random()
        if roll < 0.7:
            return _article(noun_phrase)
        return f"{'one' if roll < 0.85 else 'a single'} {noun_phrase}"
    if rng.random() < 0.05:
        return f"some {noun_phrase}"
    return f"{rng.choice(COUNT_WORDS[count])} {noun_phrase}"


# ------------------------------------------------------------------------------ views
VIEWS: dict[str, tuple[Any, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "count": COUNTS,
    "position": POSITIONS,
}
_COUNT_NAMES = {1: "one", 2: "two", 3: "three", 4: "four"}
_VIEW_TEMPLATES: dict[str, tuple[str, ...]] = {
    "shape": (
        "a photo of a {}.",
        "a drawing of a {}.",
        "a {} shape.",
        "a picture of a {}.",
        "an image of a {}.",
        "a {}.",
    ),
    "colour": (
        "a photo of {} objects.",
        "a picture of something {}.",
        "{} shapes.",
        "a drawing of {} shapes.",
        "an image of {} objects.",
        "the colour {}.",
    ),
    "count": (
        "a photo of {} objects.",
        "{} shapes.",
        "a picture of {} shapes.",
        "an image of {} objects.",
        "there are {} objects.",
    ),
    "position": (
        "an object on the {} of the image.",
        "a shape at the {}.",
        "a photo of an object at the {}.",
        "a picture of a shape on the {}.",
        "something at the {} of the image.",
    ),
}


def _check_view(view: str) -> None:
    _check_choice("view", view, list(VIEWS))


def view_classnames(view: str) -> list[str]:
    """Class names of a classification view, in label order.

    >>> view_classnames("count")
    ['one', 'two', 'three', 'four']
    """
    _check_view(view)
    if view == "count":
        return [_COUNT_NAMES[c] for c in COUNTS]
    return list(VIEWS[view])


def view_templates(view: str) -> list[str]:
    """Zero-shot prompt templates of a view, with ``{}`` for the class name."""
    _check_view(view)
    return list(_VIEW_TEMPLATES[view])


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
