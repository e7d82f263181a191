"""Causal text transformer; the feature is the projected state at the end-of-text token."""

from __future__ import annotations

import torch
from torch import nn

from mmcl.models.config import TextConfig
from mmcl.nn import LayerNorm, Transformer


class TextTransformer(nn.Module):
    def __init__(self, config: TextConfig, output_dim: int, quick_gelu: bool = False):
        super().__init__()
        self.context_length = config.context_length
        self.vocab_size = config.vocab_size
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.transformer = Transformer(
            config.width,
            config.layers,
            config.heads,
            config.mlp_width,
            quick_gelu,
        )
        self.ln_final = LayerNorm(config.width)
        self.text_projection = nn.Parameter(torch.empty(config.width, output_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens: (batch, context) int64. The end-of-text token has the largest id, so argmax
        # finds it (the convention of OpenAI's and open_clip's CLIP).
        eot = tokens.argmax(dim=-1)
        # Causal attention: positions after the last end-of-text cannot change earlier ones,
        # so computing only up to it is exact and saves the padding's work.
        length = int(eot.max()) + 1 if tokens.numel() else tokens.shape[1]
        tokens = tokens[:, :length]
        x = self.token_embedding(tokens) + self.positional_embedding[:length].to(
            self.token_embedding.weight.dtype
        )
        x = self.ln_final(self.transformer(x, causal=True))
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
        return pooled @ self.text_projection
