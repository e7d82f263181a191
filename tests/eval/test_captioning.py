"""BLEU and CIDEr-D against pycocoevalcap (the COCO caption evaluation) on a corpus written for
the purpose, hand-worked cases, and the tokenisation against recorded PTBTokenizer output."""

from __future__ import annotations

import contextlib
import doctest
import io
import math

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from mmcl.eval import caption_tokens, captioning
from mmcl.eval.captioning import bleu, cider_d, coco_tokenize

# Already tokenised as the COCO evaluation tokenises (lower case, no punctuation). It has
# candidates shorter and longer than every reference, one reference or five, n-grams repeated
# within a caption ("a red a red a red"), a candidate with no 4-gram match, one with no match
# at all, an empty candidate, equal distances to two reference lengths, and clitics.
CANDIDATES = [
    "a man riding a wave on top of a surfboard",
    "a red a red a red a red star",
    "two dogs",
    "a plate of food with broccoli carrots and rice on a wooden table next to a glass of "
    "water and a fork",
    "a cat",
    "zebras graze",
    "",
    "a small blue circle on the left",
    "the dog does n't want to get off the couch",
    "a black and white photo of an old train station",
    "four green crosses",
    "a b c d",
]
REFERENCES = [
    [
        "a man riding a wave on top of a surfboard",
        "a surfer rides a large wave in the ocean",
        "a person on a surfboard riding a wave",
    ],
    ["a red star", "one red star on a white background"],
    [
        "two dogs playing with a frisbee in the park",
        "two brown dogs run across the grass",
        "a pair of dogs chase a frisbee",
        "dogs in a park",
        "two dogs and a frisbee",
    ],
    ["a plate of food with broccoli and rice", "a meal of rice carrots and broccoli"],
    ["a cat sitting on the laptop 's keyboard", "a grey cat lies on a laptop"],
    ["giraffes eat leaves from tall trees"],
    ["an empty street at night", "a street with lights on at night"],
    ["a small blue circle on the left", "a blue disc at the left", "one small blue circle"],
    ["the dog does n't want to leave the couch", "a dog lying on a couch"],
    ["a black and white photo of a train station", "an old train station in black and white"],
    ["four green crosses", "4 green plus signs", "green crosses four of them"],
    ["a b c", "a b c d e"],  # candidate length 4 is as close to 3 as to 5
]
# The same corpus as people write it; the COCO tokenisation of each is the line above.
RAW_CANDIDATES = [
    "A man riding a wave on top of a surfboard.",
    "A red, a red, a red, a red star!",
    "Two dogs",
    "A plate of food with broccoli, carrots and rice on a wooden table -- next to a glass of "
    "water and a fork.",
    "A cat.",
    "Zebras graze...",
    "",
    'A small "blue" circle on the left.',
    "The dog doesn't want to get off the couch.",
    "A black and white photo of an old train station.",
    "Four green crosses;",
    "A B C D",
]


def coco_scores(candidates: list[str], references: list[list[str]]) -> tuple[list, float]:
    gts = {i: list(refs) for i, refs in enumerate(references)}
    res = {i: [candidate] for i, candidate in enumerate(candidates)}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its counts
        bleus, _ = Bleu(4).compute_score(gts, res, verbose=0)
        cider, _ = Cider().compute_score(gts, res)
    return bleus, float(cider)


def test_bleu_and_cider_d_equal_pycocoevalcap_on_a_tokenised_corpus():
    bleus, cider = coco_scores(CANDIDATES, REFERENCES)
    for n in range(1, 5):
        assert bleu(CANDIDATES, REFERENCES, n, tokenize=False) == pytest.approx(
            bleus[n - 1], abs=1e-6
        )
        assert bleu(CANDIDATES, REFERENCES, n) == pytest.approx(bleus[n - 1], abs=1e-6)
    assert cider_d(CANDIDATES, REFERENCES, tokenize=False) == pytest.approx(cider, abs=1e-6)
    assert cider_d(CANDIDATES, REFERENCES) == pytest.approx(cider, abs=1e-6)
    # The corpus exercises the scores: neither 0 nor perfect.
    assert 0.2 < bleus[3] < 0.9 and 1.0 < cider < 5.0


def test_raw_captions_score_as_their_coco_tokenisation():
    assert [coco_tokenize(text) for text in RAW_CANDIDATES] == CANDIDATES
    bleus, cider = coco_scores(CANDIDATES, REFERENCES)
    assert bleu(RAW_CANDIDATES, REFERENCES) == pytest.approx(bleus[3], abs=1e-6)
    assert cider_d(RAW_CANDIDATES, REFERENCES) == pytest.approx(cider, abs=1e-6)


@pytest.mark.parametrize("subset", [slice(0, 3), slice(3, 9), slice(5, 12), slice(11, 12)])
def test_sub_corpora_equal_pycocoevalcap(subset):
    # Different corpora give different document frequencies (CIDEr-D) and totals (BLEU).
    candidates, references = CANDIDATES[subset], REFERENCES[subset]
    bleus, cider = coco_scores(candidates, references)
    for n in range(1, 5):
        assert bleu(candidates, references, n) == pytest.approx(bleus[n - 1], abs=1e-6)
    assert cider_d(candidates, references) == pytest.approx(cider, abs=1e-6)


# ------------------------------------------------------------------------ hand-worked
def test_bleu_hand_worked():
    # Unigrams: the x2, cat, on, mat match (5 of 6); bigrams: "the cat", "on the", "the mat"
    # (3 of 5); equal lengths, no brevity penalty: BLEU-2 = sqrt(5/6 * 3/5) = sqrt(1/2).
    candidate, reference = ["the cat sat on the mat"], [["the cat is on the mat"]]
    assert bleu(candidate, reference, n=1) == pytest.approx(5 / 6, abs=1e-8)
    assert bleu(candidate, reference, n=2) == pytest.approx(math.sqrt(0.5), abs=1e-8)
    # Brevity: 2 words against 6: precision 1 times exp(1 - 6/2).
    assert bleu(["the cat"], [["the cat sat on the mat"]], n=1) == pytest.approx(
        math.exp(-2), abs=1e-8
    )
    # Clipping: "the" 7 times, at most 2 in the reference: 2/7.
    assert bleu(["the the the the the the the"], [["the cat is on the mat", "a cat"]], n=1) == (
        pytest.approx(2 / 7, abs=1e-8)
    )


def test_bleu_is_corpus_level_and_picks_the_shorter_of_two_closest_references():
    # 4 of 4 and 0 of 2 unigrams: corpus precision 4/6, not the mean of 1 and 0.
    assert bleu(["a b c d", "e f"], [["a b c d"], ["g h"]], n=1) == pytest.approx(4 / 6, abs=1e-8)
    # Length 4 is 1 from both 3 and 5; COCO takes 3, so no brevity penalty (5 would give one).
    assert bleu(["a b c d"], [["a b c", "a b c d e"]], n=1) == pytest.approx(1.0, abs=1e-8)


def test_cider_d_hand_worked():
    # Two images, so idf = log(2) - log(df) and every reference n-gram has df 1. Image 1
    # repeats its only reference: cosine 1 for unigrams and bigrams, 0 for the orders it
    # lacks, no length difference: 10 * (1 + 1 + 0 + 0) / 4 = 5. Image 2 shares nothing: 0.
    assert cider_d(["a b", "c"], [["a b"], ["d"]]) == pytest.approx(2.5, abs=1e-9)
    # One image: every n-gram is in every document, so every weight is log(1/1) = 0.
    assert cider_d(["a red star"], [["a red star"]]) == 0.0


def test_cider_d_clips_repeated_ngrams():
    # Two images, idf L = log 2 for every n-gram below. "a a" against "a b": unigram weights
    # {a: 2L} and {a: L, b: L}; clipped, a counts min(2L, L) * L = L^2, over norms 2L and
    # sqrt(2) L: 1 / (2 sqrt 2) (unclipped it would be twice that). No bigram in common, equal
    # lengths: image 1 scores 10 * 1 / (2 sqrt 2) / 4, image 2 nothing.
    expected = 10 * (1 / (2 * math.sqrt(2))) / 4 / 2
    assert cider_d(["a a", "x"], [["a b"], ["y"]]) == pytest.approx(expected, abs=1e-9)


def test_cider_d_gaussian_length_penalty():
    # "a b" against "a b c" (idf L for all): unigram cosine 2L^2 / (sqrt 2 L * sqrt 3 L),
    # bigram cosine L^2 / (L * sqrt 2 L), no trigrams; lengths differ by one (in bigrams as
    # in words), so each order is scaled by exp(-1 / (2 * 6^2)).
    orders = 2 / math.sqrt(6) + 1 / math.sqrt(2)
    expected = 10 * math.exp(-1 / 72) * orders / 4 / 2
    assert cider_d(["a b", "x"], [["a b c"], ["y"]]) == pytest.approx(expected, abs=1e-9)


# ----------------------------------------------------------------------- tokenisation
# Raw caption -> the output of Stanford PTBTokenizer 3.4.1 (pycocoevalcap's jar, run with
# pycocoevalcap's "-preserveLines -lowerCase") after pycocoevalcap dropped its punctuation.
PTB_RECORDED = [
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
    (
        "There's a cat sitting on the laptop's keyboard.",
        "there 's a cat sitting on the laptop 's keyboard",
    ),
    (
        "A woman (in a red dress) holds an umbrella.",
        "a woman -lrb- in a red dress -rrb- holds an umbrella",
    ),
    (
        'Several people are standing around a "food truck".',
        "several people are standing around a food truck",
    ),
    (
        "A 10-year-old boy swings a bat at 3:15 p.m.",
        "a 10-year-old boy swings a bat at 3:15 p.m.",
    ),
    (
        "The dog doesn't want to get off the couch -- really!",
        "the dog does n't want to get off the couch really",
    ),
    (
        "It's 50% off at the store [on sale]; {wow}",
        "it 's 50 % off at the store -lsb- on sale -rsb- -lcb- wow -rcb-",
    ),
    (
        "A cat cannot catch the laser, she'd said... they're gonna try.",
        "a cat can not catch the laser she 'd said they 're gon na try",
    ),
    (
        "Two men playing video games on a TV/monitor & a $5 bill.",
        "two men playing video games on a tv/monitor & a $ 5 bill",
    ),
    (
        "Children can't wait for the cake!!! Bananas!? Yes, 1,000 bananas.",
        "children ca n't wait for the cake !!! bananas !? yes 1,000 bananas",
    ),
    (
        "A young boy - maybe 5 - eating a hot-dog at 12:30pm in the U.S.",
        "a young boy maybe 5 eating a hot-dog at 12:30 pm in the u.s.",
    ),
    (
        "The girls' soccer team; someone's bike at 2.5m.",
        "the girls soccer team someone 's bike at 2.5 m.",
    ),
    ("Plan A. Then go", "plan a then go"),
    ("john f. kennedy and vitamin c.", "john f. kennedy and vitamin c."),
    ("n.y.c is big, hello.world", "n.y.c is big hello.world"),
]


@pytest.mark.parametrize(("raw", "ptb"), PTB_RECORDED)
def test_tokenisation_equals_recorded_ptb_output(raw, ptb):
    assert coco_tokenize(raw) == ptb
    assert coco_tokenize(ptb) == ptb  # already tokenised text passes through


def test_doctests():
    for module in (captioning, caption_tokens):
        assert doctest.testmod(module).failed == 0
