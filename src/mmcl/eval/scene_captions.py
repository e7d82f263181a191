"""Attribute accuracy of generated captions of the built-in scenes: does a caption name the
scene's shape, colour and count?

:func:`parse_scene_caption` reads the words the scene captions use (the tables of
:mod:`mmcl.data.scenes_text`, synonyms included: "disc" is a circle, "violet" purple, "2"
two) and :func:`attribute_accuracy` compares them with the scenes. An attribute counts as
right only when the caption names exactly one value and it is the scene's: a caption that
names no colour, or two, is wrong on colour. So a captioner cannot score by saying little.

* shape: a shape noun ("stars", "plus sign"); the generic "object"/"shape" names none.
* colour: an object colour word; background words ("white", "light grey", ...) are not
  object colours, nor is a colour word followed by "background".
* count: a number word ("two", "3", "a single", "one"); without one, a singular noun
  ("a red star", "a picture of a heart") means one, and a plural noun alone ("some
  stars") names no count.

>>> parse_scene_caption("two small violet discs on the left")
SceneCaptionAttributes(shape='circle', colour='purple', count=2)
>>> parse_scene_caption("a picture of a red star")
SceneCaptionAttributes(shape='star', colour='red', count=1)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from mmcl.data.scenes_identity import Scene
from mmcl.data.scenes_text import COLOUR_WORDS, COUNT_WORDS, GENERIC_NOUNS, SHAPE_WORDS
from mmcl.eval.text_inputs import check_paired, check_strings

__all__ = ["ATTRIBUTES", "SceneCaptionAttributes", "attribute_accuracy", "parse_scene_caption"]

ATTRIBUTES = ("shape", "colour", "count")

_WORD = re.compile(r"[a-z]+|\d+")


def _noun_table() -> dict[tuple[str, ...], tuple[str | None, bool]]:
    """Noun phrases as word tuples -> (shape, or None for a generic noun; plural?)."""
    nouns: dict[tuple[str, ...], tuple[str | None, bool]] = {}
    for shape, forms in SHAPE_WORDS.items():
        for singular, plural in forms:
            nouns[tuple(singular.split())] = (shape, False)
            nouns[tuple(plural.split())] = (shape, True)
    for singular, plural in GENERIC_NOUNS:
        nouns[(singular,)] = (None, False)
        nouns[(plural,)] = (None, True)
    return nouns


_NOUNS = _noun_table()
_COLOURS = {word: colour for colour, words in COLOUR_WORDS.items() for word in words}
# Number words of the captions ("a single" is read as "single"), and the rest up to ten so
# that a wrong count ("five stars") is read as wrong rather than as no count.
_COUNTS = {word.split()[-1]: count for count, words in COUNT_WORDS.items() for word in words}
_COUNTS |= {str(n): n for n in range(11)} | {"zero": 0, "five": 5, "six": 6, "seven": 7}
_COUNTS |= {"eight": 8, "nine": 9, "ten": 10}
_LONGEST_NOUN = max(len(words) for words in _NOUNS)


class SceneCaptionAttributes(NamedTuple):
    """What a caption says of a scene; ``None`` where it names no value or several."""

    shape: str | None
    colour: str | None
    count: int | None


def parse_scene_caption(caption: str) -> SceneCaptionAttributes:
    """The shape, colour and count a caption names (``None``: none, or contradictory)."""
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    words = _WORD.findall(caption.lower())
    shapes, plurals, colours, counts = set(), set(), set(), set()
    i = 0
    while i < len(words):
        for length in range(_LONGEST_NOUN, 0, -1):  # "plus signs" before "plus"
            noun = _NOUNS.get(tuple(words[i : i + length]))
            if noun is not None:
                shape, plural = noun
                if shape is not None:
                    shapes.add(shape)
                plurals.add(plural)
                i += length
                break
        else:
            word = words[i]
            following = words[i + 1] if i + 1 < len(words) else ""
            if word in _COLOURS and following != "background":
                colours.add(_COLOURS[word])
            elif word in _COUNTS:
                counts.add(_COUNTS[word])
            i += 1
    if not counts and plurals == {False}:
        counts = {1}  # "a red star": a singular noun and no number
    return SceneCaptionAttributes(_only(shapes), _only(colours), _only(counts))


def _only(values: set):
    return next(iter(values)) if len(values) == 1 else None


def attribute_accuracy(captions: Sequence[str], scenes: Sequence[Scene]) -> dict[str, float]:
    """Fraction of captions that name each attribute of their scene rightly.

    >>> from mmcl.data.scenes import Scene
    >>> scenes = [Scene("star", "red", "small", 2, None, "white", layout_seed=0)] * 2
    >>> attribute_accuracy(["two red stars", "a blue star"], scenes)
    {'shape': 1.0, 'colour': 0.5, 'count': 0.5}
    """
    check_strings("captions", captions, "scene")
    if isinstance(scenes, Scene) or not isinstance(scenes, Sequence):
        raise ValueError(f"scenes must be a list of Scene, got {type(scenes).__name__}")
    check_paired("captions", captions, "scenes", scenes, "scene")
    right = dict.fromkeys(ATTRIBUTES, 0)
    for i, (caption, scene) in enumerate(zip(captions, scenes, strict=True)):
        if not isinstance(scene, Scene):
            raise ValueError(f"scenes[{i}] must be a Scene, got {type(scene).__name__}")
        said = parse_scene_caption(caption)
        right["shape"] += said.shape == scene.shape
        right["colour"] += said.colour == scene.colour
        right["count"] += said.count == scene.count
    return {name: right[name] / len(captions) for name in ATTRIBUTES}
