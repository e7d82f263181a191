"""CLIP's byte-level BPE tokenizer.

An independent implementation of the tokenizer OpenAI CLIP was trained with. It produces the
same ids as ``open_clip.tokenize``; :mod:`mmcl.io.tokenizer_vocab` turns text into ids (CLIP's
cleaning and splitting, BPE merges by the ``tokenizers`` library, caches), and this module
lays them out in rows of start token, ids, end token and padding, and decodes them.

>>> tokenize("a photo of a cat")[0, :7].tolist()
[49406, 320, 1125, 539, 320, 2368, 49407]
"""

from __future__ import annotations

import array
import functools
import operator
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from mmcl.io.tokenizer_vocab import (
    ID_SIZE,
    Vocabulary,
    default_vocabulary,
    normalize_text,
    read_merges,
)

__all__ = ["DEFAULT_CONTEXT_LENGTH", "Tokenizer", "get_tokenizer", "normalize_text", "tokenize"]

DEFAULT_CONTEXT_LENGTH = 77


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
            self._vocab = default_vocabulary()
        else:
            self._vocab = Vocabulary(read_merges(vocab_path), vocab_path)

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
        n_tokens = len(ids) // ID_SIZE + 2
        if n_tokens <= length:
            row = b"".join(
                (vocab.sot_ids, ids, vocab.eot_ids, bytes((length - n_tokens) * ID_SIZE))
            )
        elif truncate:  # as open_clip: keep the first `length` tokens, make the last one EOT
            row = (vocab.sot_ids + ids)[: (length - 1) * ID_SIZE] + vocab.eot_ids
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
