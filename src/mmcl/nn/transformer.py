"""Pre-LayerNorm transformer blocks and the stack used by both CLIP towers; a pre-LN
cross-attention block (open_clip's CoCa decoder)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmcl.nn.attention import MultiheadAttention, MultiheadSelfAttention
from mmcl.nn.kv_cache import KVCache
from mmcl.nn.layers import LayerNorm, activation_layer


def take_indices(count: int, indices: int | Sequence[int] | None) -> list[int]:
    """The blocks (or stages) whose outputs to return, as open_clip and timm read `indices`:
    None for all of ``count``, an int n for the last n, or a sequence of indices (negative
    ones from the end)."""
    if indices is None:
        return list(range(count))
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ValueError(f"indices: the last {indices} of {count} is out of range")
        return list(range(count - indices, count))
    taken = [count + i if i < 0 else i for i in indices]
    wrong = [i for i, t in zip(indices, taken, strict=True) if not 0 <= t < count]
    if wrong or not taken:
        raise ValueError(f"indices {list(indices)}: each must be in [-{count}, {count - 1}]")
    return taken


class Mlp(nn.Module):
    """``c_proj(gelu(c_fc(x)))``; the names are those of OpenAI's checkpoints."""

    def __init__(self, width: int, mlp_width: int, quick_gelu: bool = False):
        super().__init__()
        self.c_fc = nn.Linear(width, mlp_width)
        self.gelu = activation_layer(quick_gelu)
        self.c_proj = nn.Linear(mlp_width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int, quick_gelu: bool = False):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = MultiheadSelfAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = Mlp(width, mlp_width, quick_gelu)

    def forward(
        self,
        x: torch.Tensor,
        causal: bool = False,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """``(batch, tokens, width)`` -> the same; with ``positions`` ``(batch,)``, only row
        ``b``'s token ``positions[b]`` is computed: ``(batch, 1, width)``. `mask` (boolean,
        True where a query may attend) and `cache`: see `MultiheadAttention`."""
        kept = x
        if positions is not None:
            kept = x[torch.arange(len(x), device=x.device), positions].unsqueeze(1)
        # Only given when set: the attention's callers from before masks and caches still fit.
        extra = {k: v for k, v in (("mask", mask), ("cache", cache)) if v is not None}
        x = kept + self.attn(self.ln_1(x), causal=causal, query_positions=positions, **extra)
        return x + self.mlp(self.ln_2(x))


class CrossAttentionBlock(nn.Module):
    """Pre-LN cross-attention block: ``x + attn(ln_1(x), ln_1_kv(context))``, then an MLP;
    the names of open_clip's cross-attention blocks (CoCa's multimodal decoder).

    With a `cache`, the context's keys and values are computed at the first step only."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_width: int,
        context_width: int | None = None,
        quick_gelu: bool = False,
    ):
        super().__init__()
        context_width = width if context_width is None else context_width
        self.ln_1 = LayerNorm(width)
        self.attn = MultiheadAttention(width, heads, context_width=context_width)
        self.ln_1_kv = LayerNorm(context_width)
        self.ln_2 = LayerNorm(width)
        self.mlp = Mlp(width, mlp_width, quick_gelu)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """`x` ``(batch, queries, width)``, `context` ``(batch, keys, context_width)``;
        `mask` True where a query may attend to a context token (e.g. its padding mask)."""
        if cache is None or not cache.has(self.attn):
            context = self.ln_1_kv(context)  # once cached, the keys and values are reused
        x = x + self.attn(self.ln_1(x), context=context, mask=mask, cache=cache)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks on (batch, tokens, width) inputs.

    `pooled_last_block` (default True): when the caller reads one token per row
    (``output_positions``), the last block computes that token alone: its attention query,
    projection and MLP, as the other tokens' final states would be thrown away. The same
    function and gradients, to rounding, for less work (one block's other tokens), in every
    precision and grad mode. Hooks on the last block then see ``(batch, 1, width)``; set it to
    False to run every token through it (e.g. for an adapter there that reads other tokens).
    """

    def __init__(
        self, width: int, layers: int, heads: int, mlp_width: int, quick_gelu: bool = False
    ):
        super().__init__()
        self.width = width
        self.layers = layers
        self.grad_checkpointing = False
        self.pooled_last_block = True
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_width, quick_gelu) for _ in range(layers)
        )

    def forward(
        self,
        x: torch.Tensor,
        causal: bool = False,
        output_positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """``(batch, tokens, width)`` -> the same, or, with ``output_positions`` ``(batch,)``,
        only the final state of row ``b``'s token ``output_positions[b]``: ``(batch, width)``.
        `mask` (boolean, True where a query may attend; with `causal`, both apply) and `cache`
        (incremental decoding; the new tokens in `x`): see `MultiheadAttention`."""
        pooled_last = output_positions is not None and self.pooled_last_block
        last = len(self.resblocks) - 1
        # Only given when set, so a block swapped by `accelerate` runs its own fast path.
        extra = {k: v for k, v in (("mask", mask), ("cache", cache)) if v is not None}
        for index, block in enumerate(self.resblocks):
            positions = output_positions if pooled_last and index == last else None
            if self.grad_checkpointing and torch.is_grad_enabled() and cache is None:
                x = checkpoint(block, x, causal, positions, mask, use_reentrant=False)
            else:
                x = block(x, causal=causal, positions=positions, **extra)
        if output_positions is None:
            return x
        if pooled_last and len(self.resblocks) > 0:
            return x.squeeze(1)
        return x[torch.arange(x.shape[0], device=x.device), output_positions]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        causal: bool = False,
        indices: int | Sequence[int] | None = None,
        stop_early: bool = False,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Every token through every block: the final states and the outputs of the blocks
        `indices` chooses (see `take_indices`), each ``(batch, tokens, width)``. With
        `stop_early` the blocks after the last one chosen are not run (the final states are
        then that block's). `mask`: as in `forward`."""
        taken = take_indices(len(self.resblocks), indices)
        blocks = self.resblocks[: max(taken) + 1] if stop_early else self.resblocks
        intermediates = []
        for index, block in enumerate(blocks):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, causal, None, mask, use_reentrant=False)
            else:
                x = block(x, causal=causal, **({} if mask is None else {"mask": mask}))
            if index in taken:
                intermediates.append(x)
        return x, intermediates
