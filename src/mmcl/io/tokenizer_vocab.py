"""CLIP's BPE vocabulary: its merges file, text cleaning, and text to ids with caches.

Text is cleaned (ftfy, HTML unescaping, whitespace collapsing, lower-casing), split into words
by CLIP's regex, each word is mapped byte by byte to printable characters, marked with
``</w>`` at its end and merged greedily, lowest-ranked merge first, with the 48,894 merges of
``bpe_simple_vocab_16e6.txt.gz`` (OpenAI, MIT licence). :mod:`mmcl.io.tokenizer` lays the ids
out in rows.

It is built for speed on captions: plain ASCII text skips ftfy, whitespace-separated pieces
of text ("cat," "don't") are cached with their ids, a batch is cleaned, split and looked up
in a few C-level calls, and new words are merged by the ``tokenizers`` library's BPE (Rust).

>>> vocab = default_vocabulary()
>>> np.frombuffer(vocab.text_ids("A photo of a cat"), dtype=np.int64).tolist()
[320, 1125, 539, 320, 2368]
"""

from __future__ import annotations

import array
import functools
import gzip
import html
import importlib.resources
import re
from collections.abc import Callable, Mapping
from itertools import chain
from pathlib import Path

import ftfy
import numpy as np
import regex
from tokenizers.models import BPE

__all__ = [
    "ID_SIZE",
    "NUM_MERGES",
    "Vocabulary",
    "default_vocabulary",
    "normalize_text",
    "read_merges",
]

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
# CLIP's vocabulary: 256 bytes, 256 bytes + "</w>", the merges, then 2 special tokens.
# The file holds more merges than that; CLIP uses only the first NUM_MERGES.
VOCAB_SIZE = 49408
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2
SOT_TEXT = "<start_of_text>"
EOT_TEXT = "<end_of_text>"
END_OF_WORD = "</w>"

# CLIP's pre-tokenisation: contractions, letter runs, single digits, runs of other symbols.
# Like the reference, literal special-token text in a caption becomes the special token.
# Needs the third-party `regex` package for \p{..}.
_WORD_PATTERN = regex.compile(
    rf"{SOT_TEXT}|{EOT_TEXT}|'s|'t|'re|'ve|'m|'ll|'d|\p{{L}}+|\p{{N}}|[^\s\p{{L}}\p{{N}}]+",
    regex.IGNORECASE,
)
# Text made only of these characters passes through ftfy and html.unescape unchanged
# (no "&", no control characters ftfy removes), so cleaning can skip them; the tests check
# this against ftfy on random ASCII.
_PLAIN_ASCII = re.compile(r"[\t\n\r -%'-~]*")
# A batch is cleaned and split as one string, its texts joined by _ROW_SEPARATOR. "\x00" is not
# plain (ftfy deletes it), so a batch that matches this and holds exactly one "\x00" per
# separator is all plain text.
_ROW_BREAK = "\x00"
_ROW_SEPARATOR = f" {_ROW_BREAK} "
_PLAIN_BATCH = re.compile(r"[\x00\t\n\r -%'-~]*")
# Ids are cached packed as int64 ("q" in array); -1 marks a row break.
_ROW_BREAK_IDS = array.array("q", [-1]).tobytes()
ID_SIZE = len(_ROW_BREAK_IDS)
_CACHE_SIZE = 1 << 17


def normalize_text(text: str) -> str:
    """Clean text the way CLIP does before tokenising.

    ftfy fixes mojibake and odd Unicode, HTML entities are unescaped (twice, as in CLIP),
    runs of whitespace become one space, and the result is lower-cased.

    >>> normalize_text("  Caf\\u00c3\\u00a9 &amp;amp;\\tCO.  ")
    'café & co.'
    """
    if not _PLAIN_ASCII.fullmatch(text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def _byte_to_char() -> dict[int, str]:
    """Give every byte a visible character so that BPE symbols never contain whitespace.

    Printable Latin-1 bytes stand for themselves; the 68 others take U+0100 onwards in byte
    order. The dict's order (printable bytes first) is the order of token ids 0..255.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def read_merges(vocab_path: str | Path | None) -> list[tuple[str, str]]:
    """The merges of a CLIP merges file (gzipped or plain), or of the bundled one."""
    if vocab_path is None:
        data = importlib.resources.files("mmcl.io").joinpath(VOCAB_FILENAME).read_bytes()
    else:
        data = Path(vocab_path).read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip magic number
        data = gzip.decompress(data)
    lines = data.decode("utf-8").split("\n")[1 : NUM_MERGES + 1]  # line 0 is a version header
    merges = [tuple(line.split()) for line in lines]
    if len(merges) < NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(
            f"{vocab_path or VOCAB_FILENAME}: expected a version line and {NUM_MERGES} "
            "lines of two space-separated symbols"
        )
    return merges  # type: ignore[return-value]


class _BoundedCache(dict):
    """A dict that computes missing values with ``compute`` and empties itself when full.

    Lookups of present keys stay C-level dict lookups, so ``map(cache.__getitem__, keys)``
    runs at C speed on a warm cache.
    """

    def __init__(self, compute: Callable, pinned: Mapping) -> None:
        super().__init__(pinned)
        self._compute = compute
        self.pinned = dict(pinned)  # entries that survive emptying

    def __missing__(self, key):
        value = self._compute(key)
        if len(self) >= _CACHE_SIZE:
            self.clear()
            self.update(self.pinned)
        self[key] = value
        return value


def _merges_apply_in_rank_order(merges: list[tuple[str, str]], initial: set[str]) -> bool:
    """Whether every merge's parts exist, made by earlier merges only, and no result repeats.

    Then a merge never creates a pair ranked at or below its own, so merging pairs one at a
    time, lowest rank then leftmost first (the ``tokenizers`` library), gives the same result
    as CLIP's merging of every occurrence of the lowest-ranked pair at once. CLIP's merges
    file has this property.
    """
    made_by: dict[str, int] = {}
    for rank, (first, second) in enumerate(merges):
        if first + second in made_by or first + second in initial:
            return False
        made_by[first + second] = rank
    for rank, pair in enumerate(merges):
        if any(part not in initial and made_by.get(part, rank) >= rank for part in pair):
            return False
    return True


class Vocabulary:
    """Lookup tables and caches for one merges file, shared by all tokenizers that use it.

    Words are merged by the ``tokenizers`` library's BPE model (Rust). Only the merging of one
    word's symbols is delegated; cleaning and splitting stay ours (Hugging Face's own CLIP
    pipeline cleans text differently).
    """

    def __init__(self, merges: list[tuple[str, str]], source: str | Path = VOCAB_FILENAME) -> None:
        byte_chars = _byte_to_char()
        self.byte_char = [byte_chars[b] for b in range(256)]
        # A word's UTF-8 bytes, read as Latin-1, translate to its BPE symbols in one call.
        self.byte_table = str.maketrans({chr(b): c for b, c in byte_chars.items()})
        symbols = list(byte_chars.values())
        symbols += [s + END_OF_WORD for s in symbols]
        initial = set(symbols)
        if not _merges_apply_in_rank_order(merges, initial):
            raise ValueError(
                f"{source}: the merges are not in the order they were learnt (each made of "
                "bytes and earlier merges only, none made twice), as CLIP's are"
            )
        symbols += [first + second for first, second in merges]
        symbols += [SOT_TEXT, EOT_TEXT]
        self.token_id = {s: i for i, s in enumerate(symbols)}
        self.sot_id = self.token_id[SOT_TEXT]
        self.eot_id = self.token_id[EOT_TEXT]
        self.sot_ids = array.array("q", [self.sot_id]).tobytes()
        self.eot_ids = array.array("q", [self.eot_id]).tobytes()
        # Bytes each token decodes to; end-of-word tokens carry a trailing space.
        char_byte = {c: b for b, c in byte_chars.items()}
        self.token_bytes: list[bytes] = []
        for symbol in symbols:
            body = symbol.removesuffix(END_OF_WORD)
            tail = b" " if body != symbol else b""
            self.token_bytes.append(bytes(char_byte[c] for c in body) + tail)
        self.token_bytes[self.sot_id] = self.token_bytes[self.eot_id] = b""
        # Our caches make the model's own cache redundant.
        model = BPE(
            vocab=self.token_id, merges=merges, end_of_word_suffix=END_OF_WORD, cache_capacity=0
        )
        self._merge_symbols = model.tokenize
        # Two caches, as words and pieces of captions repeat a lot and BPE is the slow part:
        # word (one match of _WORD_PATTERN) -> ids, and chunk (a whitespace-free piece of
        # cleaned, lower-cased text, e.g. "cat," or "don't") -> its ids packed as int64.
        self.word_ids = _BoundedCache(
            self._encode_word, {SOT_TEXT: (self.sot_id,), EOT_TEXT: (self.eot_id,)}
        )
        self.chunk_ids = _BoundedCache(self._encode_chunk, {_ROW_BREAK: _ROW_BREAK_IDS})

    def clear_caches(self) -> None:
        """Forget every cached word and chunk (for cold-cache tests and benchmarks)."""
        for cache in (self.word_ids, self.chunk_ids):
            cache.clear()
            cache.update(cache.pinned)

    def _encode_chunk(self, chunk: str) -> bytes:
        # CLIP's regex never matches across whitespace, so splitting cleaned text at whitespace
        # first and matching each piece alone finds the same words in the same order.
        word_ids = self.word_ids
        if chunk.isascii() and chunk.isalpha():  # one word, the usual case: skip the regex
            return array.array("q", word_ids[chunk]).tobytes()
        words = _WORD_PATTERN.findall(chunk)
        return array.array("q", chain.from_iterable(map(word_ids.__getitem__, words))).tobytes()

    def merge(self, symbols: str) -> tuple[int, ...]:
        """The ids of one word given as byte symbols (``byte_char``), ``</w>`` not yet added."""
        return tuple(token.id for token in self._merge_symbols(symbols))

    def _encode_word(self, word: str) -> tuple[int, ...]:
        return self.merge(word.encode("utf-8").decode("latin-1").translate(self.byte_table))

    def text_ids(self, text: str) -> bytes:
        """The ids of one text, packed as int64."""
        if not _PLAIN_ASCII.fullmatch(text):
            text = normalize_text(text)
            if _ROW_BREAK in text:  # never seen (ftfy deletes "\x00"), but it is the row marker
                return self._encode_chunk(text)
        return b"".join(map(self.chunk_ids.__getitem__, text.lower().split()))

    def batch_ids(self, texts: list[str]) -> np.ndarray:
        """The ids of all texts in one array, each text's ids followed by -1."""
        joined = _ROW_SEPARATOR.join(texts)
        if not _PLAIN_BATCH.fullmatch(joined):
            cleaned = [t if _PLAIN_ASCII.fullmatch(t) else normalize_text(t) for t in texts]
            joined = _ROW_SEPARATOR.join(cleaned)
        if joined.count(_ROW_BREAK) == len(texts) - 1:
            # Lower-casing cleaned text again changes nothing, and splitting it at whitespace
            # gives the words " ".join(...) put back together.
            chunks = joined.lower().split()
            chunks.append(_ROW_BREAK)
            packed = b"".join(map(self.chunk_ids.__getitem__, chunks))
        else:  # a text holds "\x00" itself: take the texts one at a time
            text_ids = self.text_ids
            packed = b"".join(chain.from_iterable((text_ids(t), _ROW_BREAK_IDS) for t in texts))
        return np.frombuffer(packed, dtype=np.int64)


@functools.cache
def default_vocabulary() -> Vocabulary:
    """The vocabulary of the bundled merges file, built once."""
    return Vocabulary(read_merges(None))
