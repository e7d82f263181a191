"""Attention layers with the parameter names of `torch.nn.MultiheadAttention`.

Keeping those names (`in_proj_weight`, `in_proj_bias`, `out_proj`) lets OpenAI and open_clip
checkpoints load without renaming, while the computation goes through
`scaled_dot_product_attention`, which picks fused kernels where the hardware has them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MultiheadSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(
        self, x: torch.Tensor, causal: bool = False, query_positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Self-attention over ``x`` ``(batch, tokens, width)``.

        With ``query_positions`` ``(batch,)`` only one token per row asks (row ``b``'s token
        ``query_positions[b]``), still attending over every token (the ones before it when
        `causal`), and the output is ``(batch, 1, width)``.
        """
        batch, tokens, width = x.shape
        head_dim = width // self.heads
        weight, bias = self.in_proj_weight, self.in_proj_bias
        mask = None
        if query_positions is None:
            qkv = F.linear(x, weight, bias).view(batch, tokens, 3, self.heads, head_dim)
            query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (batch, heads, tokens, dim)
        else:
            # Only the asking tokens need a query: project them alone (the query rows of the
            # fused projection), and every token to keys and values.
            asking = x[torch.arange(batch, device=x.device), query_positions].unsqueeze(1)
            query = F.linear(asking, weight[:width], bias[:width])
            query = query.view(batch, 1, self.heads, head_dim).transpose(1, 2)
            key_value = F.linear(x, weight[width:], bias[width:])
            key, value = key_value.view(batch, tokens, 2, self.heads, head_dim).permute(
                2, 0, 3, 1, 4
            )
            if causal:  # (batch, 1, 1, tokens): keys up to each row's query position
                keys = torch.arange(tokens, device=x.device)
                mask = (keys <= query_positions.unsqueeze(1)).view(batch, 1, 1, tokens)
            causal = False
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=causal)
        out = out.transpose(1, 2).reshape(batch, query.shape[2], width)
        return self.out_proj(out)


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
