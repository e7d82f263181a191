"""A transformers LM cache whose keys and values grow inside buffers allocated once.

transformers' `DynamicCache` appends each step's keys and values with `torch.cat`, a copy of
the whole cache of every layer at every step. mmcl's generation loop knows in advance how many
positions it may decode (`KVCache.reserve`), so the bridges hand the LM a `DynamicCache` whose
full-attention layers are `ReservedLayer`s instead: each writes its new keys and values in
place into a buffer with room for them and returns views of the filled part.

This uses transformers' public cache API (a `DynamicCache` with its own layer objects); the
language model itself is untouched. Layers of other kinds (sliding windows, shared or dummy
layers) keep transformers' own classes, and a transformers without per-layer caches (4.x) keeps
its default cache.
"""

from __future__ import annotations

import torch

try:  # transformers >= 5: caches made of layer objects
    from transformers.cache_utils import DynamicCache, DynamicLayer
except ImportError:  # pragma: no cover - transformers 4.x, which the bridges also accept
    DynamicCache = DynamicLayer = None


if DynamicLayer is not None:

    class ReservedLayer(DynamicLayer):
        """A `DynamicLayer` that keeps its keys and values ``(rows, heads, positions, dim)`` as
        views of buffers with room for `room` positions. Whatever replaces `keys` from outside
        (a beam reorder, a row selection, a crop) stays valid: the next `update` sees that
        `keys` is no longer the start of its buffer, or no longer fits, and copies it into a
        new buffer once, which is what `DynamicLayer` does at every step."""

        def __init__(self, room: int = 0):
            super().__init__()
            self.room = room
            self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            length = self.get_seq_length()
            total = length + key_states.shape[-2]
            if not self._writes_in_place(key_states, total):
                self._buffers = tuple(
                    _with_room(old, new, max(self.room, total), length)
                    for old, new in ((self.keys, key_states), (self.values, value_states))
                )
            else:
                self._buffers[0][:, :, length:total] = key_states
                self._buffers[1][:, :, length:total] = value_states
            self.keys, self.values = (buffer[:, :, :total] for buffer in self._buffers)
            return self.keys, self.values

        def _writes_in_place(self, key_states: torch.Tensor, total: int) -> bool:
            # Whether `keys` is still a view of the start of this layer's buffer, with room,
            # and autograd holds none of it (an in-place write would spoil its saved tensors).
            if self._buffers is None or self.keys is None or self.keys.numel() == 0:
                return False
            if torch.is_grad_enabled() and (key_states.requires_grad or self.keys.requires_grad):
                return False
            buffer = self._buffers[0]
            return (
                total <= buffer.shape[2]
                and self.keys.data_ptr() == buffer.data_ptr()
                and self.values.data_ptr() == self._buffers[1].data_ptr()
                and self.keys.shape[:2] == buffer.shape[:2] == key_states.shape[:2]
                and self.keys.stride() == buffer.stride()
                and key_states.dtype == buffer.dtype
            )

        def reset(self) -> None:
            self._buffers = None
            super().reset()

    def _with_room(
        old: torch.Tensor | None, new: torch.Tensor, room: int, length: int
    ) -> torch.Tensor:
        # A buffer of `room` positions holding `old`'s `length` positions, then `new`.
        rows, heads, _, dim = new.shape
        buffer = new.new_empty(rows, heads, room, dim)
        if length:
            buffer[:, :, :length] = old
        buffer[:, :, length : length + new.shape[2]] = new
        return buffer


def reserved_cache(language_model: torch.nn.Module):
    """A `DynamicCache` for `language_model` whose full-attention layers write in place
    (`ReservedLayer`), or None where this transformers or this model's layers do not allow it
    (the LM then makes its own cache, as it would without mmcl)."""
    if DynamicCache is None:
        return None
    try:
        cache = DynamicCache(config=language_model.config)
    except (TypeError, ValueError, AttributeError, KeyError):
        return None
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None  # sliding windows, shared layers...: transformers' own classes
    cache.layers = [ReservedLayer() for _ in cache.layers]
    return cache


def reserve(lm_cache, positions: int) -> None:
    """Give every `ReservedLayer` of `lm_cache` room for `positions` positions in all (other
    caches and layers are left as they are)."""
    if DynamicLayer is None:
        return
    for layer in getattr(lm_cache, "layers", ()):
        if isinstance(layer, ReservedLayer):
            layer.room = max(layer.room, positions)
