"""The words of the procedural scenes: varied, truthful captions, and the class names and
prompt templates of the classification views ("shape", "colour", "count", "position").

>>> import random
>>> scene = Scene("star", "red", "small", 2, None, "white", layout_seed=0)
>>> "star" in caption(scene, random.Random(0)) or "object" in caption(scene, random.Random(0))
True
"""

from __future__ import annotations

import random
from typing import Any

from mmcl.data.scenes_identity import COLOURS, COUNTS, POSITIONS, SHAPES, Scene, _check_choice

__all__ = [
    "COLOUR_WORDS",
    "COUNT_WORDS",
    "GENERIC_NOUNS",
    "POSITION_PHRASES",
    "SHAPE_WORDS",
    "SIZE_WORDS",
    "VIEWS",
    "caption",
    "view_classnames",
    "view_templates",
]

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
