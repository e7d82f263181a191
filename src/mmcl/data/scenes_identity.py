"""What a procedural scene is: its attributes, its identity and split, and how one is drawn
at random.

A scene is ``count`` identical objects (same shape, colour and size) on a plain or faintly
textured background. Its discrete attributes plus an integer ``layout_seed`` (jitter of
placement, rotation, shade and background texture) are its identity, :class:`Scene`; its
split is a fixed function of a hash of that identity, so train, val and test never share a
scene. :mod:`mmcl.data.scenes` builds the data sets on top.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from typing import Any

from mmcl.data.scenes_render import BACKGROUND_RGB, COLOUR_RGB, POSITION_CENTRES, SHAPE_POLYGONS

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "COUNTS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "SPLIT_FRACTIONS",
    "Scene",
    "sample_scene",
    "split_of",
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
    >>> scene.split in SPLITS, scene.split == split_of(scene)
    (True, True)
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
