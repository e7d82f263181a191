"""Attribute accuracy of generated scene captions: hand-written captions, and the built-in
captions (always truthful) never read as contradicting their scene."""

from __future__ import annotations

import doctest

import pytest

from mmcl.data.scenes import Scene, SceneCaptions
from mmcl.eval import scene_captions
from mmcl.eval.scene_captions import SceneCaptionAttributes, attribute_accuracy, parse_scene_caption


@pytest.mark.parametrize(
    ("caption", "shape", "colour", "count"),
    [
        ("two small red stars on a white background", "star", "red", 2),
        ("a picture of a pink heart on the left", "heart", "pink", 1),  # "a picture" is no count
        ("red stars, 3 of them, all big", "star", "red", 3),
        ("a single turquoise plus sign at the top", "cross", "cyan", 1),
        ("four violet rhombuses against black", "diamond", "purple", 4),
        ("there are two hoops coloured orange", "ring", "orange", 2),
        ("one disc in the middle", "circle", None, 1),  # no colour named
        ("three yellow objects", None, "yellow", 3),  # generic noun: no shape
        ("some green squares", "square", "green", None),  # plural, no number
        ("a red star and a blue circle", None, None, 1),  # two shapes, two colours
        ("two stars, three stars", "star", None, None),  # contradictory counts
        ("a blue triangle on a red background", "triangle", "blue", 1),  # background colour
        ("a triangle on a light grey background", "triangle", None, 1),
        ("five hearts", "heart", None, 5),  # a wrong count is still read
        ("", None, None, None),
    ],
)
def test_parse_hand_written_captions(caption, shape, colour, count):
    assert parse_scene_caption(caption) == SceneCaptionAttributes(shape, colour, count)


def test_attribute_accuracy_hand_worked():
    stars = Scene("star", "red", "small", 2, None, "white", layout_seed=0)
    heart = Scene("heart", "pink", "large", 1, "left", "black", layout_seed=1)
    captions = [
        "two red stars",  # all right
        "a red star",  # count wrong (one)
        "a pink heart",  # all right
        "two blue hearts",  # shape right, colour and count wrong
    ]
    accuracy = attribute_accuracy(captions, [stars, stars, heart, heart])
    assert accuracy == {"shape": 1.0, "colour": 0.75, "count": 0.5}


def test_builtin_captions_never_contradict_their_scene():
    data = SceneCaptions("val", 600, seed=3)
    named = dict.fromkeys(("shape", "colour", "count"), 0)
    for i in range(600):
        scene, caption = data.scene_and_caption(i)
        said = parse_scene_caption(caption)
        for attribute in named:
            value = getattr(said, attribute)
            assert value in (None, getattr(scene, attribute)), (caption, scene)
            named[attribute] += value is not None
    # The captions leave out the colour about 8% and the shape about 10% of the time.
    assert named["shape"] > 0.8 * 600 and named["colour"] > 0.85 * 600
    assert named["count"] > 0.9 * 600


def test_doctests():
    assert doctest.testmod(scene_captions).failed == 0
