"""Attention layers with the parameter names of `torch.nn.MultiheadAttention`.

Keeping those names (`in_proj_weight`, `in_proj_bias`, `out_proj`; `q_proj_weight`,
`k_proj_weight`, `v_proj_weight` for a context of another width) lets OpenAI and open_clip
checkpoints load without renaming, while the computation goes through
`scaled_dot_product_attention`, which picks fused kernels where the hardware has them.

One layer serves self-attention and cross-attention, with causal and any boolean masks
(`mmcl.nn.masks`: True where a query may attend) and a `KVCache` for incremental decoding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mmcl.nn.kv_cache import KVCache
from mmcl.nn.masks import causal_mask, merge_masks


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """Scaled dot-product attention of ``(batch, heads, queries, head_dim)`` queries over
    ``(batch, heads, keys, head_dim)`` keys and values.

    `mask`: boolean, broadcast to ``(batch, heads, queries, keys)``, True where a query may
    attend. `causal`: the queries are the last ones of the keys' positions (a block of new
    tokens after cached ones) and see only what came before them (`masks.causal_mask`).
    A query that may attend to no key at all gets zeros (not the NaN a softmax over nothing
    would give), so fully padded rows stay finite.
    """
    queries, keys = query.shape[2], key.shape[2]
    if _matmuls_are_faster(query, key, value):
        if causal and queries > 1:
            mask = merge_masks(mask, causal_mask(queries, keys, device=query.device))
        return _matmul_attention(query, key, value, mask)
    if causal and mask is None and queries == keys:
        return F.scaled_dot_product_attention(query, key, value, is_causal=True)
    if causal and queries > 1:  # one query after the cache sees every key: no mask needed
        mask = merge_masks(mask, causal_mask(queries, keys, device=query.device))
    if mask is None:
        return F.scaled_dot_product_attention(query, key, value)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    blind = ~mask.any(dim=-1, keepdim=True)  # (..., queries, 1): no key allowed
    return out.masked_fill(blind, 0.0) if blind.any() else out


# Up to this many keys, training in bf16 on a CPU attends through matmuls (see below).
MATMUL_ATTENTION_MAX_KEYS = 600


def _matmuls_are_faster(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    # PyTorch's fused CPU attention is slow to differentiate in bf16. Forward and backward of
    # (batch, 12, L, 64), one thread, AMX Xeon: 8.0 / 27.0 / 49.8 / 63.3 ms at L = 24 / 77 /
    # 197 (batch 8) / 577 (batch 2) against 2.3 / 7.0 / 30.3 / 34.9 ms for the matmuls; at
    # 1024 keys the fused kernel wins (55 against 65 ms), and it never holds the scores. So
    # bf16 training on a CPU (autograd recording, as under autocast) takes the matmuls up to
    # 600 keys; inference and float32 keep the fused kernel.
    return (
        query.dtype == torch.bfloat16
        and query.device.type == "cpu"
        and key.shape[2] <= MATMUL_ATTENTION_MAX_KEYS
        and torch.is_grad_enabled()
        and (query.requires_grad or key.requires_grad or value.requires_grad)
    )


def _matmul_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """`attend` as CPU autocast runs the textbook formula: bf16 scores, softmax and product
    with the values (each op accumulating in float32 inside). A query with no key allowed gets
    zeros (masked keys get the lowest finite score, not -inf, so that its softmax, and its
    gradient, stay free of NaN)."""
    scores = (query * query.shape[-1] ** -0.5) @ key.transpose(-1, -2)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    out = torch.softmax(scores, dim=-1) @ value
    if mask is None:
        return out
    blind = ~mask.any(dim=-1, keepdim=True)
    return out.masked_fill(blind, 0.0) if blind.any() else out


class MultiheadAttention(nn.Module):
    """Multi-head attention, batch first, in `torch.nn.MultiheadAttention`'s layout.

    Self-attention when called without `context`; cross-attention over `context`
    ``(batch, keys, context_width)`` otherwise. With `context_width` other than `width` the
    projections are `q_proj_weight`, `k_proj_weight` and `v_proj_weight` (torch's layout for
    ``kdim != embed_dim``), else one fused `in_proj_weight`.

    With a `cache`, self-attention appends the new tokens' keys and values to the cached ones
    and attends over all of them; cross-attention projects `context` once and reuses it.
    The keys and values of a context may have fewer rows than `x`, a divisor of them (the
    cache's constants during beam search: one image's, for its beams): row ``r`` of `x` then
    attends to row ``r // group`` of them, the group's queries side by side as one row's.

    >>> import torch
    >>> attention = MultiheadAttention(8, 2, context_width=6)
    >>> attention(torch.randn(3, 4, 8), context=torch.randn(3, 5, 6)).shape
    torch.Size([3, 4, 8])
    """

    def __init__(self, width: int, heads: int, context_width: int | None = None):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.width = width
        if context_width is None or context_width == width:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(width, width))
            self.k_proj_weight = nn.Parameter(torch.empty(width, context_width))
            self.v_proj_weight = nn.Parameter(torch.empty(width, context_width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            if hasattr(self, name):
                nn.init.xavier_uniform_(getattr(self, name))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """``(batch, queries, width)`` -> the same. `mask` and `causal`: see `attend`."""
        batch, queries, width = x.shape
        if context is None:
            if not hasattr(self, "in_proj_weight"):
                raise ValueError(
                    "this attention was built for a context of another width: call it with "
                    "context=..."
                )
            query, key, value = self._heads(self._projection(x, 0, 3), 3)
            if cache is not None:
                key, value = cache.extend(self, key, value)
        else:
            (query,) = self._heads(self._projection(x, 0, 1), 1)
            if cache is None:
                key, value = self._context_keys_values(context)
            else:
                key, value = cache.constant(self, lambda: self._context_keys_values(context))
        group = _group(batch, key.shape[0])
        if group == 1:
            out = self._attention(query, key, value, mask, causal)
        elif causal:
            raise ValueError("causal attention needs keys for every row of its queries")
        else:
            query, mask = _fold(query, mask, group)
            out = _unfold(self._attention(query, key, value, mask, False), group)
        return self.out_proj(out.transpose(1, 2).reshape(batch, queries, width))

    def _attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        causal: bool,
    ) -> torch.Tensor:
        """`attend` (`accelerate` swaps in a version for a decoding step's few queries)."""
        return attend(query, key, value, mask, causal)

    def _context_keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The keys and values of `context`, ``(batch, heads, keys, head_dim)`` each."""
        return self._heads(self._projection(context, 1, 3), 2)

    def _projection(self, x: torch.Tensor, first: int, stop: int) -> torch.Tensor:
        """`x` through the projections `first` to `stop` (0: query, 1: key, 2: value), side
        by side (`accelerate` swaps in a packed version)."""
        bias = self.in_proj_bias[first * self.width : stop * self.width]
        return F.linear(x, self._weight(first, stop), bias)

    def _weight(self, first: int, stop: int) -> torch.Tensor:
        """Rows of the projections `first` to `stop` (0: query, 1: key, 2: value), stacked."""
        if hasattr(self, "in_proj_weight"):
            return self.in_proj_weight[first * self.width : stop * self.width]
        parts = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)[first:stop]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _heads(self, projected: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        # (batch, tokens, parts * width) -> parts x (batch, heads, tokens, head_dim)
        batch, tokens, _ = projected.shape
        shaped = projected.view(batch, tokens, parts, self.heads, self.width // self.heads)
        return tuple(shaped.permute(2, 0, 3, 1, 4).unbind(0))


def _group(rows: int, key_rows: int) -> int:
    """How many consecutive query rows share one row of keys."""
    if key_rows == rows:
        return 1
    if key_rows == 0 or rows % key_rows:
        raise ValueError(
            f"{rows} rows of queries cannot share {key_rows} rows of keys and values: their "
            f"number must divide the queries'"
        )
    return rows // key_rows


def _fold(
    query: torch.Tensor, mask: torch.Tensor | None, group: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Queries ``(rows, heads, queries, dim)`` whose `group` consecutive rows share keys as
    ``(rows / group, heads, group * queries, dim)``: one attention call over each row of keys,
    read once, and no copy of the keys per row. A view for one query a row (a decoding step).
    `mask` (broadcast to the queries' rows, or given per row of keys) is folded alike."""
    rows, heads, queries, dim = query.shape
    inputs = rows // group
    folded = query.view(inputs, group, heads, queries, dim).transpose(1, 2)
    folded = folded.reshape(inputs, heads, group * queries, dim)
    if mask is None:
        return folded, None
    mask = mask.view((1,) * (4 - mask.dim()) + tuple(mask.shape))
    keys = mask.shape[-1]
    if mask.shape[0] == rows:  # one per query row: fold it as the queries
        mask = mask.expand(rows, heads, queries, keys).view(inputs, group, heads, queries, keys)
        mask = mask.transpose(1, 2)
    elif queries == 1 and mask.shape[2] == 1:  # one per row of keys: it broadcasts as it is
        return folded, mask
    else:
        mask = mask.expand(inputs, heads, queries, keys)[:, :, None]
        mask = mask.expand(inputs, heads, group, queries, keys)
    return folded, mask.reshape(inputs, heads, group * queries, keys)


def _unfold(out: torch.Tensor, group: int) -> torch.Tensor:
    """`_fold`'s inverse: ``(rows / group, heads, group * queries, dim)`` -> ``(rows, heads,
    queries, dim)``."""
    inputs, heads, folded, dim = out.shape
    queries = folded // group
    out = out.view(inputs, heads, group, queries, dim).transpose(1, 2)
    return out.reshape(inputs * group, heads, queries, dim)


class MultiheadSelfAttention(MultiheadAttention):
    """Self-attention of the CLIP towers: `MultiheadAttention` without a context, plus the
    shortcut of computing only one asking token per row (`query_positions`)."""

    def __init__(self, width: int, heads: int):
        super().__init__(width, heads)

    def forward(
        self,
        x: torch.Tensor,
        causal: bool = False,
        query_positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Self-attention over ``x`` ``(batch, tokens, width)``.

        With ``query_positions`` ``(batch,)`` only one token per row asks (row ``b``'s token
        ``query_positions[b]``), still attending over every token (the ones before it when
        `causal`), and the output is ``(batch, 1, width)``. `mask` and `cache`: see
        `MultiheadAttention` (not with `query_positions`).
        """
        if query_positions is None:
            return super().forward(x, mask=mask, causal=causal, cache=cache)
        if mask is not None or cache is not None:
            raise ValueError("query_positions does not combine with a mask or a cache")
        batch, tokens, width = x.shape
        head_dim = width // self.heads
        weight, bias = self.in_proj_weight, self.in_proj_bias
        # Only the asking tokens need a query: project them alone (the query rows of the
        # fused projection), and every token to keys and values.
        asking = x[torch.arange(batch, device=x.device), query_positions].unsqueeze(1)
        query = F.linear(asking, weight[:width], bias[:width])
        query = query.view(batch, 1, self.heads, head_dim).transpose(1, 2)
        key_value = F.linear(x, weight[width:], bias[width:])
        key, value = key_value.view(batch, tokens, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        mask = None
        if causal:  # (batch, 1, 1, tokens): keys up to each row's query position
            keys = torch.arange(tokens, device=x.device)
            mask = (keys <= query_positions.unsqueeze(1)).view(batch, 1, 1, tokens)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(batch, 1, width))


class AttentionPool2d(nn.Module):
    """CLIP's ModifiedResNet head: the mean feature attends over the spatial grid (QKV pooling)."""

    def __init__(self, spatial_size: int, embed_dim: int, heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(
            torch.randn(spatial_size**2 + 1, embed_dim) / embed_dim**0.5
        )
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, channels, height, width) -> tokens (batch, 1 + height*width, channels)
        tokens = x.flatten(2).transpose(1, 2)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.positional_embedding.to(tokens.dtype)
        batch, length, channels = tokens.shape
        head_dim = channels // self.heads

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, self.heads, head_dim).transpose(1, 2)

        # Only the mean token asks: the pooled feature is its output.
        query = split_heads(self.q_proj(tokens[:, :1]))
        key = split_heads(self.k_proj(tokens))
        value = split_heads(self.v_proj(tokens))
        pooled = F.scaled_dot_product_attention(query, key, value)  # (batch, heads, 1, head_dim)
        return self.c_proj(pooled.transpose(1, 2).reshape(batch, channels))
