"""Scene questions: answers checked against each scene's own record (questions parsed here,
independently of how they were written), balance, determinism and the images."""

from __future__ import annotations

import doctest
import re
from collections import Counter

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmcl.data import scene_qa
from mmcl.data.scene_qa import QUESTION_KINDS, SceneQuestions, scene_texts
from mmcl.data.scenes import COLOURS, POSITIONS, SHAPE_WORDS, SHAPES, render

_SHAPE_OF = {form: shape for shape, forms in SHAPE_WORDS.items() for form in forms[0]}
_NUMBER = {"one": 1, "two": 2, "three": 3, "four": 4}
_POSITION_OF = {
    "on the left": "left",
    "on the right": "right",
    "at the top": "top",
    "at the bottom": "bottom",
    "in the center": "center",
}


def yes_no_claim(question: str) -> tuple[str, object, str | None]:
    """(attribute, claimed value, the noun the question names) of a yes/no question."""
    text = question.removesuffix("?")
    if m := re.fullmatch(r"is there exactly one (\w+)", text):
        return "count", 1, m[1]
    if m := re.fullmatch(r"are there exactly (\w+) (\w+)", text):
        return "count", _NUMBER[m[1]], m[2]
    if m := re.fullmatch(r"are there any (.+)|is there an? (.+) in the image", text):
        return "shape", _SHAPE_OF[m[1] or m[2]], None
    if m := re.fullmatch(r"is the (\w+) (on the \w+|at the \w+|in the center)", text):
        return "position", _POSITION_OF[m[2]], m[1]
    if m := re.fullmatch(r"(?:is|are) the (\w+) (\w+)", text):
        assert m[2] in COLOURS, question
        return "colour", m[2], m[1]
    raise AssertionError(f"not a yes/no question of a known form: {question!r}")


def check_names_only_true_things(question: str, scene, asked: str | None = None) -> None:
    """Every shape or colour a question takes for granted (does not ask about) is the scene's."""
    for word in re.findall(r"[a-z]+", question):
        if word in _SHAPE_OF and asked != "shape":
            assert _SHAPE_OF[word] == scene.shape, (question, scene)
        if word in COLOURS and asked != "colour":
            assert word == scene.colour, (question, scene)


def test_what_answers_are_the_scenes_own_attributes():
    data = SceneQuestions("train", 400, kinds=("shape", "colour", "count", "where"), seed=2)
    for i in range(len(data)):
        record = data.record(i)
        scene = record.scene
        expected = {
            "shape": scene.shape,
            "colour": scene.colour,
            "count": str(scene.count),
            "where": scene.position,
        }[record.kind]
        assert record.answer == expected, record
        check_names_only_true_things(record.question, scene)
        if record.kind == "where":
            assert scene.count == 1
            assert record.question.startswith(("where is", "in which part"))
        if record.kind == "count":
            assert record.question.startswith(("how many", "what is the number"))


def test_yes_no_answers_are_true_of_the_scene():
    data = SceneQuestions("val", 400, kinds=("yes/no",), seed=4)
    asked = Counter()
    for i in range(len(data)):
        record = data.record(i)
        scene = record.scene
        attribute, claimed, noun = yes_no_claim(record.question)
        assert attribute == record.attribute
        truth = getattr(scene, attribute) == claimed
        assert record.answer == ("yes" if truth else "no"), record
        if noun is not None:  # the thing asked about exists: "the star", "the objects"
            assert noun in ("object", "objects", "shape", "shapes", *SHAPE_WORDS[scene.shape][0])
            if attribute == "count" and claimed > 1 or attribute != "count" and scene.count > 1:
                assert noun.endswith("s"), record
        check_names_only_true_things(record.question, scene, asked=attribute)
        asked[attribute] += 1
    assert set(asked) == {"shape", "colour", "count", "position"}


def test_exactly_half_of_the_yes_no_answers_are_yes():
    only = SceneQuestions("train", 100, kinds=("yes/no",))
    assert Counter(only.record(i).answer for i in range(100)) == {"yes": 50, "no": 50}
    mixed = SceneQuestions("test", 200)  # 40 yes/no questions among 200
    answers = [mixed.record(i).answer for i in range(200) if mixed.record(i).kind == "yes/no"]
    assert Counter(answers) == {"yes": 20, "no": 20}
    odd = SceneQuestions("train", 7, kinds=("yes/no",))  # one more yes when odd
    assert Counter(odd.record(i).answer for i in range(7)) == {"yes": 4, "no": 3}


def test_kinds_take_turns_and_what_answers_are_balanced():
    data = SceneQuestions("train", 5 * 8 * 5)
    kinds = [data.record(i).kind for i in range(len(data))]
    assert kinds[:5] == list(QUESTION_KINDS) and Counter(kinds) == dict.fromkeys(QUESTION_KINDS, 40)
    by_kind: dict[str, Counter] = {kind: Counter() for kind in QUESTION_KINDS}
    for i in range(len(data)):
        record = data.record(i)
        by_kind[record.kind][record.answer] += 1
    assert by_kind["shape"] == dict.fromkeys(SHAPES, 5)
    assert by_kind["colour"] == dict.fromkeys(COLOURS, 5)
    assert by_kind["count"] == dict.fromkeys(["1", "2", "3", "4"], 10)
    assert by_kind["where"] == dict.fromkeys(POSITIONS, 8)


def test_deterministic_given_the_seed():
    a, b = SceneQuestions("train", 30, seed=5), SceneQuestions("train", 30, seed=5)
    for i in (0, 3, 29, -1):
        image_a, question_a, answer_a = a[i]
        image_b, question_b, answer_b = b[i]
        assert torch.equal(image_a, image_b) and (question_a, answer_a) == (question_b, answer_b)
        assert a.record(i) == b.record(i)
    other = SceneQuestions("train", 30, seed=6)
    assert sum(a.record(i).scene != other.record(i).scene for i in range(30)) == 30
    # Another choice of kinds draws other scenes, not a relabelling of the same ones.
    shapes_only = SceneQuestions("train", 30, seed=5, kinds=("shape",))
    assert sum(a.record(i).scene != shapes_only.record(i).scene for i in range(30)) == 30


def test_items_are_the_rendered_scene_the_question_and_the_answer():
    data = SceneQuestions("test", 10, image_size=24, transform=lambda image: image)
    for i in range(10):
        image, question, answer = data[i]
        record = data.record(i)
        assert np.array_equal(np.asarray(image), np.asarray(render(record.scene, 24)))
        assert (question, answer) == (record.question, record.answer)
        assert record.scene.split == "test"
    images, questions, answers = next(iter(DataLoader(SceneQuestions("val", 8), batch_size=4)))
    assert images.shape == (4, 3, 32, 32) and len(questions) == len(answers) == 4


def test_scene_texts_are_captions_then_questions_and_answers():
    texts = scene_texts(20, split="val", seed=1)
    questions = SceneQuestions("val", 20, seed=1)
    assert len(texts) == 60
    assert texts[20::2] == [questions.record(i).question for i in range(20)]
    assert texts[21::2] == [questions.record(i).answer for i in range(20)]


def test_doctests():
    assert doctest.testmod(scene_qa).failed == 0
