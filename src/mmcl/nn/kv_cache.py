"""A key/value cache for incremental decoding, shared by every decoder and the generation loop.

Decoding one token at a time, each self-attention layer keeps the keys and values of the tokens
it has seen and attends over them with the new token's query, instead of recomputing the whole
prefix; a cross-attention layer projects its context (the image tokens) once. Every tensor the
cache holds has the decoded rows as its first dimension, so `select` can drop finished rows
and reorder beams for all layers at once.

Layers find their entries by themselves (the module object is the key), so a model passes one
cache down its stack and no layer needs a name:

>>> import torch
>>> from mmcl.nn import KVCache, MultiheadAttention
>>> attention, cache = MultiheadAttention(8, 2), KVCache()
>>> x = torch.randn(3, 4, 8)
>>> full = attention(x, causal=True)
>>> first = attention(x[:, :3], causal=True, cache=cache)
>>> last = attention(x[:, 3:], causal=True, cache=cache)  # one new token, three cached
>>> bool(torch.allclose(last, full[:, 3:], atol=1e-6)), cache.length(attention)
(True, 4)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch


class KVCache:
    """Growing entries (self-attention keys/values, appended each step) and constant ones
    (cross-attention keys/values, a model's image tokens), each ``(rows, ...)``.

    `tokens` is the history of token ids fed so far, ``(rows, seen)``: a model's step calls
    `advance` with its new tokens first, and reads positions (`seen`) from it.
    """

    def __init__(self) -> None:
        self._growing: dict[Hashable, tuple[torch.Tensor, ...]] = {}
        self._constant: dict[Hashable, object] = {}
        self._tracked: dict[Hashable, tuple[torch.Tensor, ...]] = {}
        self.tokens: torch.Tensor | None = None

    @property
    def seen(self) -> int:
        """How many token positions the model has consumed (before the current step's)."""
        return 0 if self.tokens is None else self.tokens.shape[1]

    def advance(self, new_tokens: torch.Tensor) -> int:
        """Record ``(rows, new)`` token ids; returns the position of the first of them."""
        offset = self.seen
        if self.tokens is not None and len(self.tokens) != len(new_tokens):
            raise ValueError(
                f"KVCache: {len(new_tokens)} rows of new tokens for a cache of "
                f"{len(self.tokens)} rows"
            )
        self.tokens = new_tokens if self.tokens is None else torch.cat([self.tokens, new_tokens], 1)
        return offset

    def extend(
        self, owner: Hashable, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``(rows, heads, new, head_dim)`` keys and values to `owner`'s, and return all
        of them so far."""
        if owner in self._growing:
            old_key, old_value = self._growing[owner]
            key, value = torch.cat([old_key, key], dim=2), torch.cat([old_value, value], dim=2)
        self._growing[owner] = (key, value)
        return key, value

    def length(self, owner: Hashable) -> int:
        """How many positions `owner` has cached (0 if none)."""
        entry = self._growing.get(owner)
        return 0 if entry is None else entry[0].shape[2]

    def constant(self, owner: Hashable, compute: Callable[[], object]) -> object:
        """`owner`'s constant entry, computed by `compute` the first time it is asked for.
        The value is a tensor or a tuple of tensors, each with the rows first."""
        if owner not in self._constant:
            self._constant[owner] = compute()
        return self._constant[owner]

    def has(self, owner: Hashable) -> bool:
        """Whether `owner` has an entry (growing or constant)."""
        return owner in self._growing or owner in self._constant

    def put(self, owner: Hashable, value: object) -> None:
        """Set a constant entry (e.g. the image tokens a decoder cross-attends to)."""
        self._constant[owner] = value

    def track(self, owner: Hashable, *tensors: torch.Tensor) -> None:
        """Set an entry of tensors with the rows first that every `select` reorders, beam
        reorders included: e.g. the row order of a cache the model keeps itself (a
        transformers LM's), which the model reads back with `tracked` and applies."""
        self._tracked[owner] = tensors

    def tracked(self, owner: Hashable) -> tuple[torch.Tensor, ...]:
        """`owner`'s entry set with `track`, with every `select` since applied."""
        return self._tracked[owner]

    def select(self, rows: torch.Tensor, constants: bool = True) -> None:
        """Keep rows `rows` (an index tensor; repeats allowed), in that order, in every entry.

        Beam search reorders beams with ``constants=False``: the beams of one input share its
        constant entries (its image), so a reorder within each input's beams leaves them valid
        and they need not be copied. Dropping or expanding rows needs ``constants=True``.
        """
        rows = rows.to(self._device(), torch.long)
        for owner, tensors in self._growing.items():
            self._growing[owner] = tuple(t.index_select(0, rows) for t in tensors)
        for owner, tensors in self._tracked.items():
            self._tracked[owner] = tuple(t.index_select(0, rows) for t in tensors)
        if self.tokens is not None:
            self.tokens = self.tokens.index_select(0, rows)
        if constants:
            for owner, value in self._constant.items():
                self._constant[owner] = _select(value, rows)

    def _device(self) -> torch.device:
        for tensors in (*self._growing.values(), *self._tracked.values()):
            return tensors[0].device
        if self.tokens is not None:
            return self.tokens.device
        for value in self._constant.values():
            first = value[0] if isinstance(value, tuple) else value
            return first.device
        return torch.device("cpu")


def _select(value: object, rows: torch.Tensor) -> object:
    if isinstance(value, tuple):
        return tuple(v.index_select(0, rows) for v in value)
    return value.index_select(0, rows)
