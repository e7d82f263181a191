"""Bad input to the caption and VQA metrics, the scene question data set and the WordPiece
tokenizer: what mmcl promises.

- `bleu`, `cider_d`, `vqa_accuracy` and `attribute_accuracy` refuse lists of different lengths,
  an empty corpus, a reference (or answer) list that is empty, and a bare string where a list
  of strings belongs, with a ValueError naming the argument (and the index) and the way out.
- `bleu` refuses an n that is not a positive int.
- `SceneQuestions` refuses kinds of question it does not know, none, or one twice, listing the
  kinds it knows.
"""

from __future__ import annotations

import pytest

from mmcl.data.scene_qa import SceneQuestions
from mmcl.data.scenes import Scene
from mmcl.eval.captioning import bleu, cider_d
from mmcl.eval.scene_captions import attribute_accuracy
from mmcl.eval.vqa import vqa_accuracy

CAPTION_METRICS = [bleu, cider_d]


@pytest.mark.parametrize("metric", CAPTION_METRICS)
def test_caption_metrics_refuse_lists_of_different_lengths(metric):
    with pytest.raises(ValueError, match=r"candidates has 2 captions but references has 1 lists"):
        metric(["a cat", "a dog"], [["a cat"]])


@pytest.mark.parametrize("metric", CAPTION_METRICS)
def test_caption_metrics_refuse_an_empty_reference_list_naming_its_index(metric):
    with pytest.raises(ValueError, match=r"references\[1\] is an empty list"):
        metric(["a cat", "a dog"], [["a cat"], []])


@pytest.mark.parametrize("metric", CAPTION_METRICS)
def test_caption_metrics_refuse_a_bare_string_reference(metric):
    with pytest.raises(ValueError, match=r"references\[0\] must be a list of str, got str"):
        metric(["a cat"], ["a cat"])
    with pytest.raises(ValueError, match=r"candidates must be a list of str"):
        metric("a cat", [["a cat"]])
    with pytest.raises(ValueError, match=r"references\[0\]\[1\] must be a str, got int"):
        metric(["a cat"], [["a cat", 3]])


@pytest.mark.parametrize("metric", CAPTION_METRICS)
def test_caption_metrics_refuse_an_empty_corpus(metric):
    with pytest.raises(ValueError, match="need at least one image"):
        metric([], [])


@pytest.mark.parametrize("n", [0, -1, 2.0, True])
def test_bleu_refuses_an_order_that_is_not_a_positive_int(n):
    with pytest.raises(ValueError, match="n must be a positive int"):
        bleu(["a cat"], [["a cat"]], n=n)


def test_vqa_accuracy_refuses_mismatched_or_empty_answers():
    with pytest.raises(ValueError, match=r"predictions has 1 answers but answers has 2 lists"):
        vqa_accuracy(["yes"], [["yes"], ["no"]])
    with pytest.raises(ValueError, match=r"answers\[0\] is an empty list"):
        vqa_accuracy(["yes"], [[]])
    with pytest.raises(ValueError, match=r"answers\[0\] must be a list of str, got str"):
        vqa_accuracy(["yes"], ["yes"])
    with pytest.raises(ValueError, match="need at least one question"):
        vqa_accuracy([], [])


def test_attribute_accuracy_refuses_mismatched_lists():
    scene = Scene("star", "red", "small", 2, None, "white", layout_seed=0)
    with pytest.raises(ValueError, match="captions has 2 captions but scenes has 1 scenes"):
        attribute_accuracy(["two red stars", "a star"], [scene])
    with pytest.raises(ValueError, match=r"scenes\[0\] must be a Scene, got str"):
        attribute_accuracy(["two red stars"], ["star"])


@pytest.mark.parametrize("kinds", [(), ("shape", "size"), ("shape", "shape"), "shape"])
def test_scene_questions_refuse_unknown_missing_or_repeated_kinds(kinds):
    with pytest.raises(ValueError, match=r"kinds must be .*'shape', 'colour', 'count', 'where'"):
        SceneQuestions("train", 10, kinds=kinds)
