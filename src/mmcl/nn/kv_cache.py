"""A key/value cache for incremental decoding, shared by every decoder and the generation loop.

Decoding one token at a time, each self-attention layer keeps the keys and values of the tokens
it has seen and attends over them with the new token's query, instead of recomputing the whole
prefix; a cross-attention layer projects its context (the image tokens) once. Every tensor the
cache holds has the decoded rows as its first dimension (the constant entries: one row per
input, shared by its beams), so `select` can drop finished rows and reorder beams for all
layers at once. The generation loop `reserve`s room for every position it may decode: the keys
and values then grow inside one buffer per entry, written in place, instead of being copied
whole into a new tensor at every step.

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

    Beams (`repeat_rows`) share their input's constant entries: the cache then holds one row of
    them per input, read by that input's `rows_per_constant` consecutive rows (attention takes
    keys with fewer rows than queries for this; see `mmcl.nn.attention.MultiheadAttention`).
    ``share_constants=False`` copies them to every beam instead (mmcl's path before).
    """

    def __init__(self, share_constants: bool = True) -> None:
        # owner -> (keys, values), each (rows, heads, room, head_dim), of which the first
        # `_lengths[owner]` positions are filled (room > length after a `reserve`).
        self._growing: dict[Hashable, tuple[torch.Tensor, ...]] = {}
        self._lengths: dict[Hashable, int] = {}
        self._room = 0
        self._constant: dict[Hashable, object] = {}
        self._tracked: dict[Hashable, tuple[torch.Tensor, ...]] = {}
        self.tokens: torch.Tensor | None = None
        self.share_constants = share_constants
        self.rows_per_input = 1  # the beams: rows r * k ... r * k + k - 1 decode input r

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

    def reserve(self, positions: int) -> None:
        """Make room for `positions` token positions in all (see `seen`): `extend` then
        writes each step's keys and values into one buffer per entry, allocated once, instead
        of concatenating (a copy of the whole cache every step)."""
        self._room = max(self._room, positions)

    @property
    def reserved(self) -> int:
        """The positions made room for by `reserve` (0: none)."""
        return self._room

    def extend(
        self, owner: Hashable, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``(rows, heads, new, head_dim)`` keys and values to `owner`'s, and return all
        of them so far (views of the entry's buffer where room was reserved)."""
        length = self._lengths.get(owner, 0)
        total = length + key.shape[2]
        entry = self._growing.get(owner)
        if (self._room <= total and entry is None) or _records_gradients(key, value, entry):
            # No room to keep (or autograd needs the old tensors as they are): concatenate.
            if entry is not None:
                key = torch.cat([entry[0][:, :, :length], key], dim=2)
                value = torch.cat([entry[1][:, :, :length], value], dim=2)
            self._growing[owner], self._lengths[owner] = (key, value), total
            return key, value
        if entry is None or entry[0].shape[2] < total:
            room = max(self._room, total)
            entry = tuple(
                _with_room(old, length, new, room)
                for old, new in zip((entry or (None, None)), (key, value), strict=True)
            )
            self._growing[owner] = entry
        else:
            entry[0][:, :, length:total] = key
            entry[1][:, :, length:total] = value
        self._lengths[owner] = total
        return entry[0][:, :, :total], entry[1][:, :, :total]

    def length(self, owner: Hashable) -> int:
        """How many positions `owner` has cached (0 if none)."""
        return self._lengths.get(owner, 0)

    def constant(self, owner: Hashable, compute: Callable[[], object]) -> object:
        """`owner`'s constant entry, computed by `compute` the first time it is asked for
        (before `repeat_rows`: one row per input). The value is a tensor or a tuple of
        tensors, each with the rows first."""
        if owner not in self._constant:
            self._constant[owner] = compute()
        return self._constant[owner]

    def has(self, owner: Hashable) -> bool:
        """Whether `owner` has an entry (growing, constant or tracked)."""
        return owner in self._growing or owner in self._constant or owner in self._tracked

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

    @property
    def rows_per_constant(self) -> int:
        """How many consecutive rows read one row of the constant entries."""
        return self.rows_per_input if self.share_constants else 1

    def repeat_rows(self, times: int) -> None:
        """Repeat every row `times` times in place (row r becomes rows ``r * times`` to
        ``r * times + times - 1``): the beams of each input. The constant entries are not
        copied: each input keeps one row of them, shared by its beams (`rows_per_constant`
        grows `times`-fold), unless the cache was made with ``share_constants=False``."""
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        rows = torch.arange(self._rows(), device=self._device()).repeat_interleave(times)
        self._select_rows(rows)
        if not self.share_constants:
            for owner, value in self._constant.items():
                self._constant[owner] = _select(value, rows)
        self.rows_per_input *= times

    def select(self, rows: torch.Tensor) -> None:
        """Keep rows `rows` (an index tensor; repeats allowed), in that order, in every entry.

        After `repeat_rows`, each consecutive group of `rows_per_input` of `rows` must come from
        one input's rows: a reorder of the beams within each input leaves the constant entries
        as they are (every beam of an input reads the same), and inputs dropped or repeated
        whole take their constants along.
        """
        rows = rows.to(self._device(), torch.long)
        group = self.rows_per_input
        if group == 1:
            self._select_rows(rows)
            for owner, value in self._constant.items():
                self._constant[owner] = _select(value, rows)
            return
        if len(rows) % group:
            raise ValueError(
                f"KVCache.select: {len(rows)} rows do not make whole inputs of {group} rows "
                f"(beams) each"
            )
        inputs = rows.view(-1, group) // group  # the input each kept row comes from
        before = self._rows() // group
        if not bool((inputs == inputs[:, :1]).all()):
            raise ValueError(
                "KVCache.select: a group of rows mixes rows of several inputs (beams must stay "
                "with their input)"
            )
        self._select_rows(rows)
        inputs = inputs[:, 0]
        if len(inputs) == before and bool(
            (inputs == torch.arange(len(inputs), device=inputs.device)).all()
        ):
            return  # a reorder of beams within their inputs: the constants stay as they are
        kept = inputs if self.share_constants else rows
        for owner, value in self._constant.items():
            self._constant[owner] = _select(value, kept)

    def _select_rows(self, rows: torch.Tensor) -> None:
        # The entries with one row per decoded row: all but the constants.
        for owner, tensors in self._growing.items():
            length = self._lengths[owner]
            self._growing[owner] = tuple(_select_filled(t, rows, length) for t in tensors)
        for owner, tensors in self._tracked.items():
            self._tracked[owner] = tuple(t.index_select(0, rows) for t in tensors)
        if self.tokens is not None:
            self.tokens = self.tokens.index_select(0, rows)

    def _rows(self) -> int:
        # How many rows are decoded: from any per-row entry, else from the constants.
        if self.tokens is not None:
            return len(self.tokens)
        for tensors in (*self._growing.values(), *self._tracked.values()):
            return len(tensors[0])
        return self._constant_rows() * self.rows_per_constant

    def _constant_rows(self) -> int:
        for value in self._constant.values():
            return len(value[0] if isinstance(value, tuple) else value)
        return 0

    def _device(self) -> torch.device:
        for tensors in (*self._growing.values(), *self._tracked.values()):
            return tensors[0].device
        if self.tokens is not None:
            return self.tokens.device
        for value in self._constant.values():
            first = value[0] if isinstance(value, tuple) else value
            return first.device
        return torch.device("cpu")


def _with_room(old: torch.Tensor | None, length: int, new: torch.Tensor, room: int) -> torch.Tensor:
    # A buffer with `room` positions holding `old`'s first `length` and then `new`.
    rows, heads, _, dim = new.shape
    buffer = new.new_empty(rows, heads, room, dim)
    if old is not None:
        buffer[:, :, :length] = old[:, :, :length]
    buffer[:, :, length : length + new.shape[2]] = new
    return buffer


def _select_filled(buffer: torch.Tensor, rows: torch.Tensor, length: int) -> torch.Tensor:
    # Rows `rows` of a buffer, with its room kept but only its first `length` positions copied.
    if buffer.shape[2] == length or buffer.requires_grad:
        return buffer.index_select(0, rows)
    selected = buffer.new_empty(len(rows), *buffer.shape[1:])
    torch.index_select(buffer[:, :, :length], 0, rows, out=selected[:, :, :length])
    return selected


def _records_gradients(key: torch.Tensor, value: torch.Tensor, entry) -> bool:
    tensors = (key, value, *(entry or ()))
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _select(value: object, rows: torch.Tensor) -> object:
    if isinstance(value, tuple):
        return tuple(v.index_select(0, rows) for v in value)
    return value.index_select(0, rows)
