"""Learned queries, and CoCa's attentional pooler: a fixed number of learned queries attend over
a variable number of tokens (Yu et al. 2022, section 3.2; the Q-Former's queries, BLIP-2)."""

from __future__ import annotations

import torch
from torch import nn

from mmcl.nn.attention import MultiheadAttention
from mmcl.nn.layers import LayerNorm


class LearnedQueries(nn.Module):
    """`count` learned vectors of `width`, the same for every input: ``forward(batch)`` gives
    ``(batch, count, width)`` (an expanded view, no copy).

    >>> LearnedQueries(32, 16)(batch=4).shape
    torch.Size([4, 32, 16])
    """

    def __init__(self, count: int, width: int, std: float = 0.02):
        super().__init__()
        self.query = nn.Parameter(torch.randn(count, width) * std)

    def forward(self, batch: int) -> torch.Tensor:
        return self.query.unsqueeze(0).expand(batch, -1, -1)


class AttentionalPooler(nn.Module):
    """``(batch, tokens, context_width)`` -> ``(batch, queries, width)``: LayerNorm'd learned
    queries cross-attend to the LayerNorm'd tokens (no residual, no MLP), as open_clip's
    `AttentionalPooler`, whose parameter names it keeps (`query`, `attn`, `ln_q`, `ln_k`).

    >>> pooler = AttentionalPooler(width=16, context_width=24, heads=4, queries=5)
    >>> pooler(torch.randn(2, 10, 24)).shape
    torch.Size([2, 5, 16])
    """

    def __init__(self, width: int, context_width: int, heads: int = 8, queries: int = 256):
        super().__init__()
        self.query = nn.Parameter(torch.randn(queries, width))
        self.attn = MultiheadAttention(width, heads, context_width=context_width)
        self.ln_q = LayerNorm(width)
        self.ln_k = LayerNorm(context_width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        query = self.ln_q(self.query).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.attn(query, context=self.ln_k(tokens))
