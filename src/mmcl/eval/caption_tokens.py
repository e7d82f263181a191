"""The COCO caption evaluation's tokenisation, in Python: what BLEU and CIDEr-D see of a caption.

The COCO evaluation (``pycocoevalcap``) runs every caption through Stanford's PTBTokenizer
(CoreNLP 3.4.1, Java, ``-preserveLines -lowerCase``) and then drops the tokens in its list of
punctuation. :func:`coco_tokenize` does the same in Python, without Java:

* lower-case every token (after splitting, as PTBTokenizer does);
* split off punctuation and symbols: ``"dog, cat."`` -> ``dog , cat .``; words keep their
  inner hyphens, slashes, ampersands and periods (``t-shirt``, ``and/or``, ``at&t``,
  ``a.b``), numbers their inner ``.``, ``,`` and ``:`` (``3.50``, ``1,000``, ``12:30``),
  acronyms and initials their periods (``u.s.``, ``p.m.``, ``vitamin c.``; but ``plan a.``
  before a capital ends a sentence: ``plan a``), and web addresses stay whole;
* split English clitics as the Penn Treebank does: ``it's`` -> ``it 's``, ``don't`` ->
  ``do n't``, ``can't`` -> ``ca n't``, ``cannot`` -> ``can not``, ``gonna`` -> ``gon na``;
* write brackets as PTB escapes: ``(`` -> ``-lrb-``, ``[`` -> ``-lsb-``, ``{`` -> ``-lcb-``
  (and the closing ones ``-rrb-``, ``-rsb-``, ``-rcb-``). COCO's punctuation list spells them
  in upper case, but its tokenizer has already lower-cased them, so COCO keeps them: so do we;
* drop COCO's punctuation tokens: quotes, ``. , ? ! : ; -`` and their runs (``...``, ``--``).

Known differences from PTBTokenizer, all rare in captions: abbreviations lose their period
(``mr. smith``, ``dr.``, ``etc.`` -> ``mr smith``, ``dr``, ``etc``), and the old forms
``'tis``, ``'twas``, ``'n'``, ``rock'n'roll`` and ``y'all`` are not split as PTB splits them
(``'t is``, ``rock 'n' roll``, ``y' all``). Like PTB, runs of ``!`` and ``?`` stay one token
(``!!!``, ``!?``), which COCO's list does not drop.

Applied to its own output, :func:`coco_tokenize` changes nothing, so already tokenised text
(for instance the output of the real PTBTokenizer) passes through unchanged.

>>> coco_tokenize("A dog's ball, isn't it?")
"a dog 's ball is n't it"
>>> coco_tokenize("Two T-shirts (red) cost $3.50.")
'two t-shirts -lrb- red -rrb- cost $ 3.50'
"""

from __future__ import annotations

import re

__all__ = ["COCO_PUNCTUATION", "coco_tokenize"]

# pycocoevalcap's list (tokenizer/ptbtokenizer.py), lower-cased where its tokenizer lower-cases:
# the bracket escapes "-LRB-" etc. are on the list, but never match the lower-cased tokens.
COCO_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";", '"']
)
_BRACKETS = {
    "(": "-lrb-",
    ")": "-rrb-",
    "[": "-lsb-",
    "]": "-rsb-",
    "{": "-lcb-",
    "}": "-rcb-",
}
# Words PTB splits in two (its "cannot", "gonna", ... rules).
_SPLIT_WORDS = {
    "cannot": ("can", "not"),
    "gonna": ("gon", "na"),
    "gotta": ("got", "ta"),
    "wanna": ("wan", "na"),
    "gimme": ("gim", "me"),
    "lemme": ("lem", "me"),
}
_CLITIC_TAIL = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_TOKEN = re.compile(
    r"""
      (?:https?|ftp)://\S+ | www\.\S+              # web addresses, whole
    | -[lr][rsc]b-                                 # bracket escapes, already tokenised
    | (?:[^\W\d_]\.){2,}(?!\w)                   # acronyms: u.s. e.g. p.m.
    | [^\W\d_]\.(?!\w)(?!\s+[A-Z])               # initials: "f. kennedy", "vitamin c."
    | \d+(?:[.,:]\d+)+ | \.\d+                     # 3.50 1,000 12:30 .5
    | '(?:s|re|ve|ll|d|m)(?!\w)                    # a clitic standing alone: 's
    | [!?]{2,}                                     # "!!!" and "!?" stay whole, as in PTB
    | [\w@]+(?:[-/'&.][\w@]+)*                     # words: t-shirt and/or at&t o'clock a.b
    | \S                                           # any other mark, one at a time
    """,
    re.VERBOSE,
)


def coco_tokenize(text: str) -> str:
    """``text`` as the COCO caption evaluation scores it: lower-case tokens joined by spaces.

    >>> coco_tokenize('He said "no" -- twice... I cannot!')
    'he said no twice i can not'
    """
    if not isinstance(text, str):
        raise TypeError(f"coco_tokenize takes a str, got {type(text).__name__}")
    tokens: list[str] = []
    # Tokenise, then lower-case, as PTBTokenizer does: a capital after "a." ends a sentence.
    for token in map(str.lower, _TOKEN.findall(text)):
        if token in _SPLIT_WORDS:
            tokens.extend(_SPLIT_WORDS[token])
            continue
        clitic = _CLITIC_TAIL.match(token) if "'" in token else None
        if clitic:
            tokens.extend(clitic.groups())
            continue
        token = _BRACKETS.get(token, token)
        if token not in COCO_PUNCTUATION:
            tokens.append(token)
    return " ".join(tokens)
