"""VQA accuracy (Antol et al. 2015; the VQA v2 evaluation script), with its answer normalisation.

A predicted answer is right in proportion to how many humans gave it: ``min(#humans agreeing
/ 3, 1)``, averaged over the ten subsets of nine of the ten human answers (leave one
annotator out), so 3 or more agreeing humans score 1, 2 score 0.6 and 1 scores 0.3.

Answers are compared after the official normalisation, :func:`normalize_answer`:

* punctuation: ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` are deleted where a space is
  next to one of them somewhere in the answer, or when the answer holds a number like
  ``1,000``; otherwise they become spaces (``red/blue`` -> ``red blue``). A period is
  deleted unless a digit follows (``yes.`` -> ``yes``, ``2.5`` stays);
* lower case; number words from ``zero`` (and ``none``) to ``ten`` -> digits; the articles
  ``a``, ``an``, ``the`` dropped; contractions missing their apostrophe restored (``dont``
  -> ``don't``), from the official table.

The official script processes only the predictions this way; it takes the human answers
as released (already normalised) and only strips their punctuation, and not even that when
all ten agree. We normalise the human answers fully too, which changes nothing for
normalised answers and lets raw ones (``"Two"``, ``"a dog"``) be compared.

>>> vqa_accuracy(["Two"], [["2", "two", "2", "two", "3", "3", "3", "3", "3", "3"]])
1.0
>>> round(vqa_accuracy(["yes"], [["yes", "yes"] + ["no"] * 8]), 6)  # 2 of 10 humans agree
0.6
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mmcl.eval.text_inputs import check_paired, check_string_lists, check_strings

__all__ = ["normalize_answer", "vqa_accuracy", "vqa_scores"]

HUMANS_FOR_FULL_CREDIT = 3

_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<")
_PUNCTUATION += ("@", "`", ",", "?", "!")
_NUMBER_WITH_COMMA = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its "(?!<=" was meant as a look-behind but is
# a look-ahead for the text "<=", so in effect a period goes unless a digit follows it. The
# official call also passes re.UNICODE (32) as the count: at most 32 periods go.
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_LIMIT = 32
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4"}
_NUMBERS |= {"five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset(("a", "an", "the"))


def _contractions() -> dict[str, str]:
    """The official table of contractions written without their apostrophes."""
    # Entries written "word=replacement"; the official table has a few entries that can never
    # match (capitalised keys such as "Im", checked after lower-casing) or that go the wrong
    # way ("somebody'd" -> "somebodyd"): kept, as they are part of the definition.
    table = """
    aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't
    couldn'tve=couldn't've couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't
    hadnt=hadn't hadnt've=hadn't've hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd
    hed've=he'd've he'dve=he'd've hes=he's howd=how'd howll=how'll hows=how's Id've=I'd've
    I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd itd've=it'd've it'dve=it'd've itll=it'll
    let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've mightn'tve=mightn't've
    mightve=might've mustnt=mustn't mustve=must've neednt=needn't notve=not've oclock=o'clock
    oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't
    shed've=she'd've she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't
    shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
    somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll
    somebodys=somebody's someoned=someone'd someoned've=someone'd've
    someone'dve=someone'd've someonell=someone'll someones=someone's somethingd=something'd
    somethingd've=something'd've something'dve=something'd've somethingll=something'll
    thats=that's thered=there'd thered've=there'd've there'dve=there'd've therere=there're
    theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll
    theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've
    weve=we've werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've
    whens=when's whered=where'd wheres=where's whereve=where've whod=who'd whod've=who'd've
    who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're
    whys=why's wont=won't wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've
    wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've
    y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've you'dve=you'd've
    youll=you'll youre=you're youve=you've
    """
    return dict(entry.split("=") for entry in table.split())


_CONTRACTIONS = _contractions()


def normalize_answer(answer: str) -> str:
    """An answer as the VQA evaluation compares it.

    >>> [normalize_answer(a) for a in ("Two", "a dog", "dont", "yes.", "red/blue", "1,000")]
    ['2', 'dog', "don't", 'yes', 'red blue', '1000']
    """
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    # Whether a mark is deleted or spaced depends on the answer as given, for every mark.
    delete_all = _NUMBER_WITH_COMMA.search(text) is not None
    cleaned = text
    for mark in _PUNCTUATION:
        deleted = delete_all or f"{mark} " in text or f" {mark}" in text
        cleaned = cleaned.replace(mark, "" if deleted else " ")
    cleaned = _PERIOD.sub("", cleaned, count=_PERIOD_LIMIT)
    words = [_NUMBERS.get(word, word) for word in cleaned.lower().split()]
    words = [_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES]
    return " ".join(words)


def vqa_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> list[float]:
    """The VQA accuracy of each question, in [0, 1]; see :func:`vqa_accuracy`."""
    _check(predictions, answers)
    scores = []
    for prediction, humans in zip(predictions, answers, strict=True):
        predicted = normalize_answer(prediction)
        agrees = [normalize_answer(human) == predicted for human in humans]
        total_agreeing = sum(agrees)
        # Leave annotator j out: the others who agree are all agreeing ones but j itself.
        subsets = [min(1.0, (total_agreeing - agree) / HUMANS_FOR_FULL_CREDIT) for agree in agrees]
        scores.append(sum(subsets) / len(subsets))
    return scores


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Mean VQA accuracy in [0, 1] (the official script reports it x100).

    Args:
        predictions: one predicted answer per question.
        answers: the human answers of each question (ten in VQA). With fewer than four no
            prediction scores 1; for an answer known exactly, compare
            :func:`normalize_answer` of both instead.
    """
    scores = vqa_scores(predictions, answers)
    return sum(scores) / len(scores)


def _check(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> None:
    check_strings("predictions", predictions, "question")
    check_string_lists("answers", answers, "question")
    check_paired("predictions", predictions, "answers", answers, "question")
