"""BERT-style (post-LayerNorm) text transformer with optional cross-attention, as the text models
of ALBEF and BLIP use it: bidirectional as an encoder, causal as a decoder, the same weights.

Each block: ``x = norm(x + attention(x))``; with a context, ``x = norm(x + cross(x, context))``;
then ``x = norm(x + mlp(x))`` (Devlin et al. 2019). The pieces map one to one onto Hugging
Face's `BlipTextModel` (`mmcl.io.checkpoints.bert` converts): query/key/value projections
concatenated into `MultiheadAttention`'s `in_proj_*` (`q/k/v_proj_weight` for a context of
another width), the rest renamed.

>>> import torch
>>> from mmcl.nn.bert import BertEmbeddings, BertEncoder
>>> from mmcl.nn.masks import key_padding_mask
>>> embed = BertEmbeddings(vocab_size=30, width=16, max_positions=12)
>>> encoder = BertEncoder(16, layers=2, heads=4, mlp_width=32, context_width=8)
>>> tokens = torch.tensor([[2, 5, 7, 0], [2, 9, 0, 0]])
>>> states = encoder(embed(tokens), mask=key_padding_mask(tokens, pad_id=0),
...                  context=torch.randn(2, 3, 8))
>>> states.shape
torch.Size([2, 4, 16])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmcl.nn.attention import MultiheadAttention
from mmcl.nn.kv_cache import KVCache
from mmcl.nn.layers import LayerNorm
from mmcl.nn.transformer import Mlp

BERT_LAYER_NORM_EPS = 1e-12  # BERT's and BLIP's; PyTorch's default is 1e-5

__all__ = ["BertBlock", "BertEmbeddings", "BertEncoder", "BertLMHead"]


class BertEmbeddings(nn.Module):
    """Token plus learned absolute position embeddings, then LayerNorm.

    `offset`: the position of the first token (the number already in a `KVCache`)."""

    def __init__(
        self, vocab_size: int, width: int, max_positions: int, eps: float = BERT_LAYER_NORM_EPS
    ):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, width)
        self.position_embeddings = nn.Embedding(max_positions, width)
        self.norm = LayerNorm(width, eps=eps)

    def forward(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        length = tokens.shape[1]
        if offset + length > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"{offset + length} positions exceed the {self.position_embeddings.num_embeddings} "
                f"this text model has"
            )
        positions = torch.arange(offset, offset + length, device=tokens.device)
        return self.norm(self.word_embeddings(tokens) + self.position_embeddings(positions))


class BertBlock(nn.Module):
    """Post-LN block: self-attention, optional cross-attention (`context_width` set), MLP."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_width: int,
        context_width: int | None = None,
        eps: float = BERT_LAYER_NORM_EPS,
    ):
        super().__init__()
        self.attn = MultiheadAttention(width, heads)
        self.attn_norm = LayerNorm(width, eps=eps)
        self.cross_attn = self.cross_norm = None
        if context_width is not None:
            self.cross_attn = MultiheadAttention(width, heads, context_width=context_width)
            self.cross_norm = LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, mlp_width)
        self.mlp_norm = LayerNorm(width, eps=eps)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """`mask`/`context_mask`: boolean, True where a query may attend (`mmcl.nn.masks`).
        Without `context` the cross-attention is skipped (BLIP's unimodal text encoder)."""
        x = self.attn_norm(x + self.attn(x, mask=mask, causal=causal, cache=cache))
        if context is not None:
            if self.cross_attn is None:
                raise ValueError("this block has no cross-attention: build it with context_width")
            cross = self.cross_attn(x, context=context, mask=context_mask, cache=cache)
            x = self.cross_norm(x + cross)
        return self.mlp_norm(x + self.mlp(x))


class BertEncoder(nn.Module):
    """A stack of `BertBlock`s: bidirectional by default, causal with ``causal=True``."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_width: int,
        context_width: int | None = None,
        eps: float = BERT_LAYER_NORM_EPS,
    ):
        super().__init__()
        self.width = width
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList(
            BertBlock(width, heads, mlp_width, context_width, eps) for _ in range(layers)
        )

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        checkpointing = self.grad_checkpointing and torch.is_grad_enabled() and cache is None
        for block in self.blocks:
            if checkpointing:
                x = checkpoint(block, x, mask, causal, context, context_mask, use_reentrant=False)
            else:
                x = block(x, mask, causal, context, context_mask, cache)
        return x


class BertLMHead(nn.Module):
    """``decoder(norm(gelu(transform(x))))``: BERT's masked/causal language-model head."""

    def __init__(self, width: int, vocab_size: int, eps: float = BERT_LAYER_NORM_EPS):
        super().__init__()
        self.transform = nn.Linear(width, width)
        self.activation = nn.GELU()
        self.norm = LayerNorm(width, eps=eps)
        self.decoder = nn.Linear(width, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.activation(self.transform(x))))
