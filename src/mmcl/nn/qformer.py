"""BLIP-2's Querying Transformer (Li et al. 2023, section 3.1): a BERT-style (post-LN) stack over
one sequence ``[learned queries | text]``.

- The queries cross-attend to the image features every `cross_attention_freq` layers (layers
  0, freq, 2 freq, ...), after the features go through a LayerNorm (`ln_vision`: the frozen
  tower's outputs are not normalised for this use; Hugging Face folds it into its vision
  model's `post_layernorm`).
- The queries have their own FFN (`query_mlp`), initialised as a copy of the text FFN
  (`mlp`), as BLIP-2 initialises both from BERT's one; the text tokens never cross-attend.
- Who sees whom is a mask over the whole sequence, one per stage-1 objective: `itc_mask`,
  `itm_mask`, `generation_mask` (boolean, True where a row may attend to a column).

Stage 2 uses the query outputs alone (`forward` without text). The parameter names map onto
Hugging Face's `Blip2QFormerModel` (`mmcl.io.checkpoints.blip2` converts).

>>> import torch
>>> qformer = QFormer(width=16, layers=2, heads=2, mlp_width=32, vision_width=24, queries=4,
...                   vocab_size=30, max_positions=10)
>>> image_features = torch.randn(2, 5, 24)
>>> qformer(image_features)[0].shape
torch.Size([2, 4, 16])
>>> tokens = torch.tensor([[2, 7, 8], [2, 9, 0]])
>>> mask = itm_mask(4, tokens == 0)
>>> queries, text = qformer(image_features, tokens, mask)
>>> queries.shape, text.shape
(torch.Size([2, 4, 16]), torch.Size([2, 3, 16]))
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mmcl.nn.attention import MultiheadAttention
from mmcl.nn.bert import BERT_LAYER_NORM_EPS
from mmcl.nn.layers import LayerNorm
from mmcl.nn.masks import causal_mask
from mmcl.nn.pooling import LearnedQueries
from mmcl.nn.transformer import Mlp

__all__ = ["QFormer", "QFormerBlock", "generation_mask", "itc_mask", "itm_mask"]


def itm_mask(queries: int, text_padding: torch.Tensor) -> torch.Tensor:
    """Image-text matching: everything sees everything but the text's padding.

    `text_padding` ``(batch, text)``: True at padding. Returns ``(batch, 1, Q + T, Q + T)``."""
    batch, text = text_padding.shape
    query_keys = torch.ones(batch, queries, dtype=torch.bool, device=text_padding.device)
    real = torch.cat([query_keys, ~text_padding], dim=1)
    return real[:, None, None, :].expand(batch, 1, queries + text, queries + text)


def itc_mask(queries: int, text_padding: torch.Tensor) -> torch.Tensor:
    """Image-text contrast: the queries see only queries, the text only text (not its
    padding); the two halves are as if encoded separately (the unimodal features ITC
    compares). ``(batch, 1, Q + T, Q + T)``."""
    mask = itm_mask(queries, text_padding).clone()
    mask[:, :, :queries, queries:] = False
    mask[:, :, queries:, :queries] = False
    return mask


def generation_mask(queries: int, text_padding: torch.Tensor) -> torch.Tensor:
    """Image-grounded text generation (UniLM's prefix LM): the queries see the queries only;
    each text token sees every query, itself and the text before it (not padding).
    ``(batch, 1, Q + T, Q + T)``."""
    mask = itm_mask(queries, text_padding).clone()
    text = text_padding.shape[1]
    mask[:, :, :queries, queries:] = False
    mask[:, :, queries:, queries:] &= causal_mask(text, device=mask.device)
    return mask


class QFormerBlock(nn.Module):
    """Post-LN block over ``[queries | text]``: joint self-attention, cross-attention to the
    image for the queries only (when built with `vision_width`), then each part's own FFN."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_width: int,
        vision_width: int | None = None,
        text: bool = True,
        eps: float = BERT_LAYER_NORM_EPS,
    ):
        super().__init__()
        self.attn = MultiheadAttention(width, heads)
        self.attn_norm = LayerNorm(width, eps=eps)
        self.cross_attn = self.cross_norm = None
        if vision_width is not None:
            self.cross_attn = MultiheadAttention(width, heads, context_width=vision_width)
            self.cross_norm = LayerNorm(width, eps=eps)
        self.mlp = self.mlp_norm = None
        if text:  # the text FFN; a stage-2-only Q-Former (Hugging Face's BLIP-2) has none
            self.mlp = Mlp(width, mlp_width)
            self.mlp_norm = LayerNorm(width, eps=eps)
        self.query_mlp = Mlp(width, mlp_width)
        self.query_mlp_norm = LayerNorm(width, eps=eps)
        if text:
            self.query_mlp.load_state_dict(self.mlp.state_dict())
            self.query_mlp_norm.load_state_dict(self.mlp_norm.state_dict())

    def forward(
        self,
        x: torch.Tensor,
        queries: int,
        image: torch.Tensor,
        mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`x` ``(batch, queries + text, width)``, the first `queries` being the queries."""
        x = self.attn_norm(x + self.attn(x, mask=mask))
        query, text = x[:, :queries], x[:, queries:]
        if self.cross_attn is not None:
            cross = self.cross_attn(query, context=image, mask=image_mask)
            query = self.cross_norm(query + cross)
        query = self.query_mlp_norm(query + self.query_mlp(query))
        if text.shape[1] == 0:
            return query
        if self.mlp is None:
            raise ValueError("this Q-Former has no text FFN (stage 2 only): give no text")
        text = self.mlp_norm(text + self.mlp(text))
        return torch.cat([query, text], dim=1)


class QFormer(nn.Module):
    """Learned queries and (optionally) text through `QFormerBlock`s; see the module docstring.

    `vocab_size`/`max_positions` None: no text embeddings and no text FFN (the stage-2 model
    Hugging Face's `Blip2ForConditionalGeneration` holds). `vision_eps`: the LayerNorm over
    the image features (1e-6 in BLIP-2's EVA ViT)."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_width: int,
        vision_width: int,
        queries: int = 32,
        cross_attention_freq: int = 2,
        vocab_size: int | None = None,
        max_positions: int | None = None,
        vision_eps: float = 1e-6,
        eps: float = BERT_LAYER_NORM_EPS,
    ):
        super().__init__()
        if cross_attention_freq < 1:
            raise ValueError(f"cross_attention_freq must be at least 1, got {cross_attention_freq}")
        text = vocab_size is not None
        self.width = width
        self.ln_vision = LayerNorm(vision_width, eps=vision_eps)
        self.queries = LearnedQueries(queries, width)
        self.word_embeddings = self.position_embeddings = None
        if text:
            self.word_embeddings = nn.Embedding(vocab_size, width)
            self.position_embeddings = nn.Embedding(max_positions or 512, width)
        self.embed_norm = LayerNorm(width, eps=eps)  # over queries and text embeddings alike
        self.blocks = nn.ModuleList(
            QFormerBlock(
                width,
                heads,
                mlp_width,
                vision_width if index % cross_attention_freq == 0 else None,
                text,
                eps,
            )
            for index in range(layers)
        )

    @property
    def num_queries(self) -> int:
        return self.queries.query.shape[0]

    def embed(self, batch: int, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """``[queries | text embeddings]`` ``(batch, Q + T, width)``, normalised; the text's
        positions start at 0 (the queries have none)."""
        parts = [self.queries(batch)]
        if tokens is not None:
            if self.word_embeddings is None:
                raise ValueError("this Q-Former has no text embeddings (stage 2 only)")
            length = tokens.shape[1]
            if length > self.position_embeddings.num_embeddings:
                raise ValueError(
                    f"{length} text tokens exceed the Q-Former's "
                    f"{self.position_embeddings.num_embeddings} positions"
                )
            positions = torch.arange(length, device=tokens.device)
            text = self.word_embeddings(tokens) + self.position_embeddings(positions)
            parts.append(text.to(parts[0].dtype))
        return self.embed_norm(torch.cat(parts, dim=1))

    def forward(
        self,
        image_features: torch.Tensor,
        tokens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`image_features` ``(batch, patches, vision_width)`` from the (frozen) tower;
        `tokens` ``(batch, text)`` optional; `mask` over ``[queries | text]`` (`itc_mask`,
        `itm_mask`, `generation_mask`; None: all see all). Returns the query outputs
        ``(batch, Q, width)`` and the text outputs ``(batch, T, width)`` (None without text).
        """
        queries = self.num_queries
        image = self.ln_vision(image_features)
        x = self.embed(image_features.shape[0], tokens)
        for block in self.blocks:
            x = block(x, queries, image, mask, image_mask)
        return x[:, :queries], (x[:, queries:] if tokens is not None else None)

    def copy_text_ffn_to_queries(self) -> None:
        """Re-initialise every query FFN as a copy of its layer's text FFN (after loading
        pre-trained BERT weights into the text part, as BLIP-2 starts)."""
        for block in self.blocks:
            if block.mlp is None:
                raise ValueError("this Q-Former has no text FFN to copy from")
            block.query_mlp.load_state_dict(copy.deepcopy(block.mlp.state_dict()))
            block.query_mlp_norm.load_state_dict(copy.deepcopy(block.mlp_norm.state_dict()))
