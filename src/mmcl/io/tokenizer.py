"""CLIP's byte-level BPE tokenizer.

An independent implementation of the tokenizer OpenAI CLIP was trained with. It produces the
same ids as ``open_clip.tokenize``: text is cleaned (ftfy, HTML unescaping, whitespace
collapsing, lower-casing), split into words by CLIP's regex, each word is mapped byte by byte
to printable characters, marked with ``</w>`` at its end and merged greedily, lowest-ranked
merge first, with the 48,894 merges of ``bpe_simple_vocab_16e6.txt.gz`` (OpenAI, MIT licence).

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
from collections.abc import Iterable, Mapping
from itertools import pairwise
from pathlib import Path

import ftfy
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
_WORD_CACHE_SIZE = 1 << 17


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


class _Vocabulary:
    """Lookup tables for one merges file, shared by all tokenizers that use it."""

    def __init__(self, merges: list[tuple[str, str]]) -> None:
        byte_chars = _byte_to_char()
        self.byte_char = [byte_chars[b] for b in range(256)]
        symbols = list(byte_chars.values())
        symbols += [s + END_OF_WORD for s in symbols]
        symbols += [first + second for first, second in merges]
        symbols += [SOT_TEXT, EOT_TEXT]
        self.token_id = {s: i for i, s in enumerate(symbols)}
        self.merge_rank = {pair: rank for rank, pair in enumerate(merges)}
        self.sot_id = self.token_id[SOT_TEXT]
        self.eot_id = self.token_id[EOT_TEXT]
        # Bytes each token decodes to; end-of-word tokens carry a trailing space.
        char_byte = {c: b for b, c in byte_chars.items()}
        self.token_bytes: list[bytes] = []
        for symbol in symbols:
            body = symbol.removesuffix(END_OF_WORD)
            tail = b" " if body != symbol else b""
            self.token_bytes.append(bytes(char_byte[c] for c in body) + tail)
        self.token_bytes[self.sot_id] = self.token_bytes[self.eot_id] = b""
        # word -> token ids; words repeat a lot in captions, and BPE is the slow part.
        self.word_cache: dict[str, tuple[int, ...]] = {SOT_TEXT: (self.sot_id,)}
        self.word_cache[EOT_TEXT] = (self.eot_id,)

    def encode_word(self, word: str) -> tuple[int, ...]:
        cached = self.word_cache.get(word)
        if cached is not None:
            return cached
        ids = tuple(self.token_id[s] for s in self._bpe(word))
        if len(self.word_cache) >= _WORD_CACHE_SIZE:
            self.word_cache.clear()
            self.word_cache[SOT_TEXT] = (self.sot_id,)
            self.word_cache[EOT_TEXT] = (self.eot_id,)
        self.word_cache[word] = ids
        return ids

    def _bpe(self, word: str) -> list[str]:
        symbols = [self.byte_char[b] for b in word.encode("utf-8")]
        symbols[-1] += END_OF_WORD
        rank = self.merge_rank
        while len(symbols) > 1:
            best_pair, best_rank = None, NUM_MERGES
            for pair in pairwise(symbols):
                pair_rank = rank.get(pair, NUM_MERGES)
                if pair_rank < best_rank:
                    best_pair, best_rank = pair, pair_rank
            if best_pair is None:
                break
            # Merge every occurrence of the best pair, left to right, without overlaps.
            first, second = best_pair
            merged: list[str] = []
            i, n = 0, len(symbols)
            while i < n:
                if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols


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
        return self._encode(text)

    def _encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        # Stops once at least max_tokens ids are collected: the rest would be truncated away.
        ids: list[int] = []
        encode_word = self._vocab.encode_word
        for word in _WORD_PATTERN.findall(normalize_text(text)):
            ids += encode_word(word)
            if max_tokens is not None and len(ids) >= max_tokens:
                break
        return ids

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
        sot, eot = self._vocab.sot_id, self._vocab.eot_id
        # Rows go into a flat int64 array: torch.tensor() on nested lists is slower than BPE.
        flat = array.array("q")
        padding = [0] * length
        for i, text in enumerate(batch):
            ids = self._encode(text, max_tokens=length if truncate else None)
            row = [sot, *ids, eot]
            if len(row) > length:
                if not truncate:
                    raise ValueError(
                        f"texts[{i}] has {len(row)} tokens (with start and end tokens), more "
                        f"than the context length {length}; shorten it or pass truncate=True"
                    )
                row = row[:length]
                row[-1] = eot
            flat.extend(row)
            flat.extend(padding[len(row) :])
        if not batch:
            return torch.zeros(0, length, dtype=torch.long)
        return torch.frombuffer(flat, dtype=torch.long).view(len(batch), length).clone()


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
