"""Causal text transformer; the feature is the projected state at the end-of-text token."""

from __future__ import annotations

from collections.abc import Sequence

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

    def forward(
        self, tokens: torch.Tensor, prefix_embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Text features ``(batch, output_dim)`` of ``tokens`` ``(batch, context)``.

        ``prefix_embeddings`` ``(length, width)`` or ``(batch, length, width)``: learned vectors
        (soft prompts, as in CoOp) placed right after the start-of-text token, before the
        tokens' own embeddings; the sequence must still fit in the context length.
        """
        # tokens: (batch, context) int64. The end-of-text token has the largest id, so argmax
        # finds it (the convention of OpenAI's and open_clip's CLIP).
        eot = tokens.argmax(dim=-1)
        # Causal attention: positions after the last end-of-text cannot change earlier ones,
        # so computing only up to it is exact and saves the padding's work.
        length = int(eot.max()) + 1 if tokens.numel() else tokens.shape[1]
        tokens = tokens[:, :length]
        x = self.token_embedding(tokens)
        if prefix_embeddings is not None:
            x = self._insert_prefix(x, prefix_embeddings)
            eot = eot + prefix_embeddings.shape[-2]  # the end token moved right by the prefix
        x = x + self.positional_embedding[: x.shape[1]].to(self.token_embedding.weight.dtype)
        # LayerNorm acts per token, so normalising only the pooled one is the same.
        pooled = self.transformer(x, causal=True, output_positions=eot)
        return self.ln_final(pooled) @ self.text_projection

    def forward_intermediates(
        self,
        tokens: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        stop_early: bool = False,
        normalize_intermediates: bool = False,
        intermediates_only: bool = False,
        output_fmt: str = "NLC",
        output_extra_tokens: bool = False,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """The outputs of the blocks `indices` chooses, every position of the context as
        open_clip computes them: ``text_intermediates`` ``(batch, context, width)`` (through
        `ln_final` if `normalize_intermediates`) and, unless `intermediates_only`,
        ``text_features``. `output_extra_tokens` does not apply (no class token)."""
        if output_fmt != "NLC":
            raise ValueError(f"output_fmt must be 'NLC' for text, got {output_fmt!r}")
        x = self.token_embedding(tokens)
        x = x + self.positional_embedding[: x.shape[1]].to(self.token_embedding.weight.dtype)
        x, intermediates = self.transformer.forward_intermediates(x, True, indices, stop_early)
        if normalize_intermediates:
            intermediates = [self.ln_final(y) for y in intermediates]
        output = {"text_intermediates": intermediates}
        if not intermediates_only:
            eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
            output["text_features"] = self.ln_final(eot) @ self.text_projection
        return output

    def _insert_prefix(self, x: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        batch, _, width = x.shape
        if prefix.dim() == 2:
            prefix = prefix.unsqueeze(0).expand(batch, -1, -1)
        if prefix.dim() != 3 or prefix.shape[0] != batch or prefix.shape[2] != width:
            raise ValueError(
                f"prefix_embeddings must be (length, {width}) or ({batch}, length, {width}), "
                f"got {tuple(prefix.shape)}"
            )
        if x.shape[1] + prefix.shape[1] > self.context_length:
            raise ValueError(
                f"{prefix.shape[1]} prefix vectors and {x.shape[1]} tokens exceed the context "
                f"length {self.context_length}"
            )
        return torch.cat([x[:, :1], prefix.to(x.dtype), x[:, 1:]], dim=1)
