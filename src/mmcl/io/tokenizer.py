"""CLIP's byte-level BPE tokenizer.

An independent implementation of the tokenizer OpenAI CLIP was trained with. It produces the
same ids as ``open_clip.tokenize``: text is cleaned (ftfy, HTML unescaping, whitespace
collapsing, lower-casing), split into words by CLIP's regex, each word is mapped byte by byte
to printable characters, marked with ``</w>`` at its end and merged greedily, lowest-ranked
merge first, with the 48,894 merges of ``bpe_simple_vocab_16e6.txt.gz`` (OpenAI, MIT licence).

It is built for speed on captions: plain ASCII text skips ftfy, whitespace-separated pieces
of text ("cat," "don't") are cached with their ids, a batch is cleaned, split and looked up
in a few C-level calls and laid out with numpy, and new words are merged by the
``tokenizers`` library's BPE (Rust) where it is installed, behind our own cleaning and
splitting (the tests hold both merge engines to ``open_clip`` id for id).

>>> tokenize("a photo of a cat")[0, :7].tolist()
[49406, 320, 1125, 539, 320, 2368, 49407]
"""

from __future__ import annotations

import array
import functools
import gzip
import html
import importlib.resources
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from itertools import chain, pairwise
from pathlib import Path

import ftfy
import numpy as np
import regex
import torch

__all__ = ["DEFAULT_CONTEXT_LENGTH", "Tokenizer", "get_tokenizer", "normalize_text", "tokenize"]

DEFAULT_CONTEXT_LENGTH = 77
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
_ID_SIZE = len(_ROW_BREAK_IDS)
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


def _read_merges(vocab_path: str | Path | None) -> list[tuple[str, str]]:
    if vocab_path is None:
        data = importlib.resources.files(__package__).joinpath(VOCAB_FILENAME).read_bytes()
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
    as CLIP's merging of every occurrence of the lowest-ranked pair at once.
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


def _rust_merger(
    merges: list[tuple[str, str]], token_id: dict[str, int], initial: set[str]
) -> Callable[[str], list[int]] | None:
    """The ``tokenizers`` library's BPE model as a merge engine: byte symbols in, ids out.

    Only the merging of one word's symbols is delegated; cleaning and splitting stay ours
    (Hugging Face's own CLIP pipeline cleans text differently). ``None`` where the library is
    not installed or would merge differently.
    """
    try:
        from tokenizers.models import BPE
    except ImportError:
        return None
    if not _merges_apply_in_rank_order(merges, initial):
        return None
    # Our caches make its own cache redundant.
    model = BPE(vocab=token_id, merges=merges, end_of_word_suffix=END_OF_WORD, cache_capacity=0)
    tokenize = model.tokenize
    return lambda symbols: [token.id for token in tokenize(symbols)]


class _Vocabulary:
    """Lookup tables and caches for one merges file, shared by all tokenizers that use it.

    ``use_tokenizers``: merge words with the ``tokenizers`` library (Rust, about 4x faster
    than our Python) where it is installed and gives the same ids; tests turn it off.
    """

    def __init__(self, merges: list[tuple[str, str]], use_tokenizers: bool = True) -> None:
        byte_chars = _byte_to_char()
        self.byte_char = [byte_chars[b] for b in range(256)]
        # A word's UTF-8 bytes, read as Latin-1, translate to its BPE symbols in one call.
        self.byte_table = str.maketrans({chr(b): c for b, c in byte_chars.items()})
        symbols = list(byte_chars.values())
        symbols += [s + END_OF_WORD for s in symbols]
        initial = set(symbols)
        symbols += [first + second for first, second in merges]
        symbols += [SOT_TEXT, EOT_TEXT]
        self.token_id = {s: i for i, s in enumerate(symbols)}
        self.merge_rank = {pair: rank for rank, pair in enumerate(merges)}
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
        self.rust_merge = _rust_merger(merges, self.token_id, initial) if use_tokenizers else None
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

    def _encode_word(self, word: str) -> tuple[int, ...]:
        symbols = word.encode("utf-8").decode("latin-1").translate(self.byte_table)
        if self.rust_merge is not None:
            return tuple(self.rust_merge(symbols))
        token_id = self.token_id
        return tuple(token_id[s] for s in self._bpe(symbols))

    def _bpe(self, word: str) -> list[str]:
        """CLIP's merging of one word's byte symbols, in Python."""
        symbols = list(word)
        symbols[-1] += END_OF_WORD
        rank_of = self.merge_rank.get
        while len(symbols) > 1:
            best_rank = NUM_MERGES
            for pair in pairwise(symbols):
                rank = rank_of(pair, NUM_MERGES)
                if rank < best_rank:
                    best_pair, best_rank = pair, rank
            if best_rank == NUM_MERGES:  # no pair left is a merge
                break
            # Merge every occurrence of the best pair, left to right, without overlaps.
            first, second = best_pair
            i = symbols.index(first)
            while i < len(symbols) - 1:
                if symbols[i] == first and symbols[i + 1] == second:
                    symbols[i : i + 2] = [first + second]
                i += 1
        return symbols

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
def _default_vocabulary() -> _Vocabulary:
    return _Vocabulary(_read_merges(None))


def _check_context_length(context_length: int) -> int:
    if isinstance(context_length, bool):
        raise TypeError("context_length must be an int, got bool")
    try:
        value = operator.index(context_length)
    except TypeError:
        raise TypeError(
            f"context_length must be an int, got {type(context_length).__name__}"
        ) from None
    if value <= 0:
        raise ValueError(f"context_length must be positive, got {value}")
    return value


def _as_text_list(texts: str | Iterable[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray, Mapping)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
    batch = list(texts)
    if set(map(type, batch)) - {str}:  # the common all-str case costs one C-level pass
        for i, text in enumerate(batch):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    return batch


class Tokenizer:
    """CLIP's byte-level BPE tokenizer, id-for-id compatible with ``open_clip.tokenize``.

    Args:
        vocab_path: a BPE merges file (gzipped or plain text) in CLIP's format; ``None`` uses
            the bundled ``bpe_simple_vocab_16e6.txt.gz``.
        context_length: default row length of the tensors :meth:`__call__` returns.

    >>> tok = Tokenizer(context_length=8)
    >>> tok.encode("A photo of a cat.")
    [320, 1125, 539, 320, 2368, 269]
    >>> tok("A photo of a cat.").tolist()
    [[49406, 320, 1125, 539, 320, 2368, 269, 49407]]
    >>> tok.decode(tok.encode("A photo of a cat."))
    'a photo of a cat .'
    """

    def __init__(
        self, vocab_path: str | Path | None = None, context_length: int = DEFAULT_CONTEXT_LENGTH
    ) -> None:
        self._vocab_path = vocab_path
        self._context_length = _check_context_length(context_length)
        if vocab_path is None:
            self._vocab = _default_vocabulary()
        else:
            self._vocab = _Vocabulary(_read_merges(vocab_path))

    def __reduce__(self):
        # Pickle (e.g. into DataLoader workers) as a path, not as megabytes of tables.
        return type(self), (self._vocab_path, self._context_length)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_path={self._vocab_path!r}, context_length={self._context_length})"

    @property
    def sot_token_id(self) -> int:
        return self._vocab.sot_id

    @property
    def eot_token_id(self) -> int:
        return self._vocab.eot_id

    @property
    def vocab_size(self) -> int:
        return len(self._vocab.token_id)

    @property
    def context_length(self) -> int:
        return self._context_length

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without start/end tokens.

        >>> get_tokenizer().encode("Hello, World!")
        [3306, 267, 1002, 256]
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = array.array("q")
        ids.frombytes(self._vocab.text_ids(text))
        return ids.tolist()

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Text of token ids, words separated by spaces.

        The start token is skipped and decoding stops at the first end token, so padded rows
        of :meth:`__call__` decode cleanly (id 0 is a real token, ``!``, and is kept before
        the end token). Undoes :meth:`encode` up to :func:`normalize_text` and the spaces
        between words: ``"don't"`` decodes as ``"don 't"``.

        >>> tok = get_tokenizer()
        >>> tok.decode(tok("Hello, World!")[0])
        'hello , world !'
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode takes one sequence of ids, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        vocab = self._vocab
        token_bytes = vocab.token_bytes
        pieces = []
        for position, token_id in enumerate(ids):
            if token_id == vocab.eot_id:
                break
            if not 0 <= token_id < len(token_bytes):
                raise ValueError(f"ids[{position}] = {token_id} is not a token id")
            pieces.append(token_bytes[token_id])
        return b"".join(pieces).decode("utf-8", errors="replace").strip()

    def __call__(
        self,
        texts: str | Iterable[str],
        context_length: int | None = None,
        truncate: bool = True,
    ) -> torch.LongTensor:
        """Tokenise a text or a batch into a ``(N, context_length)`` tensor of ids.

        Each row is the start token, the text's tokens, the end token, then zeros. A text too
        long for the row is cut and its last kept position overwritten with the end token
        (``truncate=True``, as ``open_clip.tokenize`` does) or rejected with ``ValueError``.

        >>> get_tokenizer()(["a dog", "a cat"], context_length=5)
        tensor([[49406,   320,  1929, 49407,     0],
                [49406,   320,  2368, 49407,     0]])
        """
        batch = _as_text_list(texts)
        if context_length is None:
            length = self._context_length
        else:
            length = _check_context_length(context_length)
        if len(batch) == 1:  # a lone text (a dataset's __getitem__) skips the batch machinery
            return self._one_row(batch[0], length, truncate)
        if not batch:
            return torch.zeros(0, length, dtype=torch.long)
        vocab = self._vocab
        rows = _layout_rows(
            vocab.batch_ids(batch), len(batch), length, truncate, vocab.sot_id, vocab.eot_id
        )
        return torch.from_numpy(rows)

    def _one_row(self, text: str, length: int, truncate: bool) -> torch.LongTensor:
        vocab = self._vocab
        ids = vocab.text_ids(text)
        n_tokens = len(ids) // _ID_SIZE + 2
        if n_tokens <= length:
            row = b"".join(
                (vocab.sot_ids, ids, vocab.eot_ids, bytes((length - n_tokens) * _ID_SIZE))
            )
        elif truncate:  # as open_clip: keep the first `length` tokens, make the last one EOT
            row = (vocab.sot_ids + ids)[: (length - 1) * _ID_SIZE] + vocab.eot_ids
        else:
            raise ValueError(
                f"texts[0] has {n_tokens} tokens (with start and end tokens), more "
                f"than the context length {length}; shorten it or pass truncate=True"
            )
        return torch.from_numpy(np.ndarray((1, length), np.int64, bytearray(row)))


def _layout_rows(
    packed: np.ndarray, n_rows: int, length: int, truncate: bool, sot_id: int, eot_id: int
) -> np.ndarray:
    """Rows of ``[SOT, ids..., EOT, 0...]`` from all rows' ids, each row's followed by -1.

    >>> _layout_rows(np.array([5, 6, -1, -1, 7, 8, 9, -1]), 3, 5, True, 1, 2)
    array([[1, 5, 6, 2, 0],
           [1, 2, 0, 0, 0],
           [1, 7, 8, 9, 2]])
    >>> _layout_rows(np.array([5, 6, 7, 8, -1]), 1, 4, True, 1, 2)  # cut, ends with EOT
    array([[1, 5, 6, 2]])
    """
    breaks = np.flatnonzero(packed < 0)
    starts = np.zeros(n_rows, dtype=np.int64)
    starts[1:] = breaks[:-1] + 1
    n_ids = breaks - starts
    too_long = n_ids + 2 > length
    if not truncate and too_long.any():
        i = int(np.argmax(too_long))
        raise ValueError(
            f"texts[{i}] has {n_ids[i] + 2} tokens (with start and end tokens), more "
            f"than the context length {length}; shorten it or pass truncate=True"
        )
    # packed[j] goes to column j - starts[row] + 1 of its row; each -1 lands just after its
    # row's ids, where the EOT goes.
    per_row = n_ids + 1
    row_begins = np.arange(0, n_rows * length, length)
    positions = np.arange(len(packed)) + np.repeat(row_begins - starts + 1, per_row)
    values = packed.copy()
    values[breaks] = eot_id
    if too_long.any():
        # As open_clip: keep the first `length` tokens and make the last one EOT.
        keep = positions - np.repeat(row_begins, per_row) < length
        positions, values = positions[keep], values[keep]
    rows = np.zeros((n_rows, length), dtype=np.int64)
    rows[:, 0] = sot_id
    rows.reshape(-1)[positions] = values
    rows[too_long, length - 1] = eot_id
    return rows


@functools.lru_cache(maxsize=8)
def get_tokenizer(context_length: int = DEFAULT_CONTEXT_LENGTH) -> Tokenizer:
    """The default CLIP tokenizer; instances share one copy of the vocabulary.

    >>> get_tokenizer() is get_tokenizer()
    True
    >>> get_tokenizer().vocab_size
    49408
    """
    return Tokenizer(context_length=context_length)


def tokenize(
    texts: str | Iterable[str],
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    truncate: bool = True,
) -> torch.LongTensor:
    """Tokenise with the default CLIP tokenizer; a drop-in for ``open_clip.tokenize``.

    >>> tokenize(["a diagram", "a dog"]).shape
    torch.Size([2, 77])
    """
    return get_tokenizer()(texts, context_length=context_length, truncate=truncate)
