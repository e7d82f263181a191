"""VQA accuracy: hand-worked leave-one-annotator-out averages and the official normalisation."""

from __future__ import annotations

import doctest

import pytest

from mmcl.eval import vqa
from mmcl.eval.vqa import normalize_answer, vqa_accuracy, vqa_scores


def ten_answers(agreeing: int, answer: str = "cat", other: str = "dog") -> list[str]:
    return [answer] * agreeing + [other] * (10 - agreeing)


# k of the 10 humans gave the predicted answer. Leaving out one of those k leaves k - 1
# agreeing (k subsets); leaving out another leaves k (10 - k subsets); each subset scores
# min(agreeing / 3, 1):
#   k = 0: 0
#   k = 1: (1 * 0/3 + 9 * 1/3) / 10 = 3/10
#   k = 2: (2 * 1/3 + 8 * 2/3) / 10 = 6/10
#   k = 3: (3 * 2/3 + 7 * 1) / 10 = 9/10
#   k = 4: (4 * 1 + 6 * 1) / 10 = 1
#   k = 10: 1
@pytest.mark.parametrize(
    ("agreeing", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]
)
def test_accuracy_by_number_of_agreeing_humans(agreeing, expected):
    assert vqa_accuracy(["cat"], [ten_answers(agreeing)]) == pytest.approx(expected, abs=1e-12)


def test_mean_over_questions():
    predictions = ["cat", "cat", "cat"]
    answers = [ten_answers(1), ten_answers(3), ten_answers(0)]
    assert vqa_scores(predictions, answers) == pytest.approx([0.3, 0.9, 0.0])
    assert vqa_accuracy(predictions, answers) == pytest.approx(1.2 / 3)


@pytest.mark.parametrize(
    ("prediction", "human"),
    [
        ("Two", "2"),  # number words -> digits, lower case
        ("none", "0"),
        ("a dog", "dog"),  # articles dropped
        ("the red one", "red 1"),
        ("dont", "don't"),  # contractions restored
        ("yes.", "yes"),  # a period with no digit after it goes
        ("yes!", "yes"),
        ("red/blue", "red blue"),  # a mark with no space beside it becomes a space
        ("hot - dog", "hot dog"),  # a mark with a space beside it is deleted
        ("10,000", "10000"),  # a number with a comma: every mark is deleted
        ("  Yes\n", "yes"),
    ],
)
def test_normalisation_matches_equivalent_answers(prediction, human):
    assert normalize_answer(prediction) == normalize_answer(human)
    assert vqa_accuracy([prediction], [[human] * 4 + ["other"] * 6]) == 1.0


@pytest.mark.parametrize(
    ("prediction", "human"),
    [
        ("2.5", "25"),  # a period before a digit stays
        ("dog", "dogs"),
        ("yes", "no"),
        ("one dog", "dog"),
    ],
)
def test_normalisation_keeps_different_answers_apart(prediction, human):
    assert normalize_answer(prediction) != normalize_answer(human)


def test_normalised_forms():
    assert normalize_answer("The Man's Hat!") == "man's hat"
    assert normalize_answer("2.5 m.") == "2.5 m"
    assert normalize_answer("isnt it") == "isn't it"


def test_doctests():
    assert doctest.testmod(vqa).failed == 0
