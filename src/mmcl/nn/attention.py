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

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        # x: (batch, tokens, width)
        batch, tokens, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)  # each (batch, heads, tokens, head_dim)
        out = F.scaled_dot_product_attention(query, key, value, is_causal=causal)
        out = out.transpose(1, 2).reshape(batch, tokens, width)
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

        query = split_heads(self.q_proj(tokens[:, :1]))
        key = split_heads(self.k_proj(tokens))
        value = split_heads(self.v_proj(tokens))
        pooled = F.scaled_dot_product_attention(query, key, value)  # (batch, heads, 1, head_dim)
        return self.c_proj(pooled.transpose(1, 2).reshape(batch, channels))
