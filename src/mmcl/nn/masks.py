"""Attention masks as pure functions: boolean, True where a query may attend to a key.

That is the convention of `torch.nn.functional.scaled_dot_product_attention` (the opposite of
`torch.nn.MultiheadAttention`'s `key_padding_mask`, where True means "ignore"). Every mask
broadcasts against ``(batch, heads, queries, keys)``; `merge_masks` combines any of them.

>>> causal_mask(3).int()
tensor([[1, 0, 0],
        [1, 1, 0],
        [1, 1, 1]], dtype=torch.int32)
>>> causal_mask(1, keys=3).int()  # one new token after two cached ones sees all three
tensor([[1, 1, 1]], dtype=torch.int32)
>>> key_padding_mask(torch.tensor([[5, 7, 0]]), pad_id=0).shape
torch.Size([1, 1, 1, 3])
"""

from __future__ import annotations

import torch


def causal_mask(
    queries: int, keys: int | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """``(queries, keys)``: the queries are the last `queries` of `keys` positions (the newest
    tokens after ``keys - queries`` cached ones), and each sees itself and what came before.

    Aligned at the bottom right, unlike ``scaled_dot_product_attention(is_causal=True)``,
    which aligns at the top left and so is wrong for a query block that follows a cache.
    """
    keys = queries if keys is None else keys
    if keys < queries:
        raise ValueError(f"causal_mask: {queries} queries cannot follow only {keys} keys")
    query_positions = torch.arange(keys - queries, keys, device=device).unsqueeze(1)
    return torch.arange(keys, device=device).unsqueeze(0) <= query_positions


def key_padding_mask(tokens_or_padding: torch.Tensor, pad_id: int | None = None) -> torch.Tensor:
    """``(batch, 1, 1, keys)``: every query may attend to the keys that are not padding.

    Give token ids ``(batch, keys)`` and `pad_id`, or a boolean ``(batch, keys)`` that is True
    at the padding (`pad_id` None), as Hugging Face's ``attention_mask == 0`` is.
    """
    padding = tokens_or_padding if pad_id is None else tokens_or_padding == pad_id
    if padding.dtype != torch.bool:
        raise ValueError("key_padding_mask: give token ids with a pad_id, or a boolean padding")
    return (~padding)[:, None, None, :]


def prefix_causal_mask(
    prefix: int, length: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """``(length, length)``: the first `prefix` positions see each other both ways, the rest
    are causal (UniLM's prefix language model; BLIP-2's image-grounded generation)."""
    mask = causal_mask(length, device=device)
    mask[:prefix, :prefix] = True
    return mask


def merge_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """The positions every given mask allows (None entries are skipped; None if all are)."""
    merged = None
    for mask in masks:
        if mask is not None:
            merged = mask if merged is None else merged & mask
    return merged
