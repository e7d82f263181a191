"""Caption metrics as the COCO caption evaluation (``pycocoevalcap``) defines them: corpus-level
BLEU and CIDEr-D.

Both take ``candidates`` (one generated caption per image) and ``references`` (a list of
human captions per image). Captions are first tokenised with
:func:`~mmcl.eval.caption_tokens.coco_tokenize`, a Python version of the COCO evaluation's
PTBTokenizer pass (lower case, punctuation split off and dropped, ``don't`` -> ``do n't``);
pass ``tokenize=False`` for text that is already tokenised, e.g. by the real PTBTokenizer.
Scores are then those of pycocoevalcap's ``Bleu`` and ``Cider`` scorers on the same tokens,
quirks included (named in the comments below).

>>> candidates = ["a red star on the left", "two blue circles"]
>>> references = [["a red star on the left", "a star"], ["two blue circles", "blue discs"]]
>>> round(bleu(candidates, references), 6)
1.0
>>> cider_d(candidates, references) > 0
True
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from mmcl.eval.caption_tokens import coco_tokenize
from mmcl.eval.text_inputs import check_paired, check_string_lists, check_strings

__all__ = ["bleu", "cider_d", "coco_tokenize"]

# pycocoevalcap's BLEU adds these to every n-gram count and total, so that an order without
# any match gives a tiny score rather than log(0); we keep them to give the same numbers.
_BLEU_TINY = 1e-15
_BLEU_SMALL = 1e-9
CIDER_ORDER = 4  # CIDEr-D uses 1- to 4-grams
CIDER_SIGMA = 6.0  # standard deviation of CIDEr-D's Gaussian length penalty, in tokens
CIDER_SCALE = 10.0

Ngram = tuple[str, ...]


def bleu(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    n: int = 4,
    *,
    tokenize: bool = True,
) -> float:
    """Corpus-level BLEU-``n`` in [0, 1], as ``pycocoevalcap.bleu.Bleu(n)`` reports it.

    n-gram matches are clipped by the most times the n-gram occurs in any one reference of
    the image, and summed over the corpus before the precisions are taken. The brevity
    penalty compares the corpus's candidate length with the sum over images of the
    reference length closest to the candidate's (the shorter one on a tie).

    >>> round(bleu(["a cat on a mat"], [["a cat on the mat"]], n=1), 6)  # 4 of 5 words match
    0.8
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (the longest n-gram), got {n!r}")
    candidate_words, reference_words = _tokenised(candidates, references, tokenize)
    matches, totals = [0] * n, [0] * n
    candidate_length = reference_length = 0
    for words, refs in zip(candidate_words, reference_words, strict=True):
        candidate_length += len(words)
        # The closest reference length; min over (distance, length) breaks ties to the shorter.
        reference_length += min((abs(len(ref) - len(words)), len(ref)) for ref in refs)[1]
        most_in_a_reference: dict[Ngram, int] = {}
        for ref in refs:
            for ngram, count in _ngram_counts(ref, n).items():
                most_in_a_reference[ngram] = max(most_in_a_reference.get(ngram, 0), count)
        for ngram, count in _ngram_counts(words, n).items():
            matches[len(ngram) - 1] += min(count, most_in_a_reference.get(ngram, 0))
        for k in range(n):
            totals[k] += max(0, len(words) - k)

    log_precision = sum(
        math.log((matches[k] + _BLEU_TINY) / (totals[k] + _BLEU_SMALL)) for k in range(n)
    )
    score = math.exp(log_precision / n)
    ratio = (candidate_length + _BLEU_TINY) / (reference_length + _BLEU_SMALL)
    if ratio < 1:
        score *= math.exp(1 - 1 / ratio)
    return score


def cider_d(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    tokenize: bool = True,
) -> float:
    """Corpus CIDEr-D (Vedantam et al. 2015), as ``pycocoevalcap.cider.Cider`` reports it.

    Each caption is a TF-IDF vector of its 1- to 4-grams, with document frequencies counted
    over the references of this corpus (one document per image). Per image and n-gram order,
    the candidate's similarity to each reference is the cosine with the candidate's
    weights clipped to the reference's, times a Gaussian length penalty (sigma 6 tokens);
    the image's score is the mean over orders and references, times 10, and the corpus's
    the mean over images. Scores are not bounded by 10: with few images, n-grams found in
    every reference weigh nothing, and a single image always scores 0.

    >>> cider_d(["a cat"], [["a cat"]])  # one image: every n-gram is in every document
    0.0
    """
    candidate_words, reference_words = _tokenised(candidates, references, tokenize)
    reference_counts = [
        [_ngram_counts(ref, CIDER_ORDER) for ref in refs] for refs in reference_words
    ]
    document_frequency: Counter[Ngram] = Counter()
    for counts in reference_counts:
        document_frequency.update({ngram for count in counts for ngram in count})
    log_documents = math.log(len(candidate_words))

    def tfidf(words: list[str], counts: Counter[Ngram]) -> _TfIdf:
        weights: list[dict[Ngram, float]] = [{} for _ in range(CIDER_ORDER)]
        for ngram, count in counts.items():
            # An n-gram in no reference gets the largest idf, log(documents / 1).
            idf = log_documents - math.log(max(1, document_frequency[ngram]))
            weights[len(ngram) - 1][ngram] = count * idf
        norms = [math.sqrt(sum(w * w for w in order.values())) for order in weights]
        # pycocoevalcap measures a caption's length in bigrams (words - 1, none for an empty
        # caption); the difference of two lengths is the same as in words unless one is empty.
        return _TfIdf(weights, norms, max(0, len(words) - 1))

    scores = []
    for words, refs, counts in zip(candidate_words, reference_words, reference_counts, strict=True):
        candidate = tfidf(words, _ngram_counts(words, CIDER_ORDER))
        total = 0.0
        for ref_words, ref_counts in zip(refs, counts, strict=True):
            total += sum(_similarity(candidate, tfidf(ref_words, ref_counts)))
        scores.append(CIDER_SCALE * total / CIDER_ORDER / len(refs))
    return sum(scores) / len(scores)


class _TfIdf:
    __slots__ = ("length", "norms", "weights")

    def __init__(self, weights: list[dict[Ngram, float]], norms: list[float], length: int):
        self.weights, self.norms, self.length = weights, norms, length


def _similarity(candidate: _TfIdf, reference: _TfIdf) -> list[float]:
    """Per n-gram order: clipped cosine similarity times the Gaussian length penalty."""
    delta = candidate.length - reference.length
    penalty = math.exp(-(delta**2) / (2 * CIDER_SIGMA**2))
    values = []
    for order, (mine, theirs) in enumerate(zip(candidate.weights, reference.weights, strict=True)):
        # The "D" of CIDEr-D: a candidate weight counts at most as much as the reference's,
        # so repeating a matching n-gram does not raise the score.
        value = sum(min(w, theirs.get(g, 0.0)) * theirs.get(g, 0.0) for g, w in mine.items())
        if candidate.norms[order] and reference.norms[order]:
            value /= candidate.norms[order] * reference.norms[order]
        values.append(value * penalty)
    return values


def _ngram_counts(words: list[str], n: int) -> Counter[Ngram]:
    return Counter(
        tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1)
    )


def _tokenised(
    candidates: Sequence[str], references: Sequence[Sequence[str]], tokenize: bool
) -> tuple[list[list[str]], list[list[list[str]]]]:
    """Check the arguments; return each caption as a list of tokens."""
    check_strings("candidates", candidates, "image")
    check_string_lists("references", references, "image")
    check_paired("candidates", candidates, "references", references, "image")

    def words(text: str) -> list[str]:
        return (coco_tokenize(text) if tokenize else text).split()

    return [words(text) for text in candidates], [list(map(words, refs)) for refs in references]
