"""BLIP-2 stage 1 (Li et al. 2023, section 3.2): the Q-Former learns, over a frozen image
tower's features, three objectives at once, each with its own mask over ``[queries | text]``:

- ITC: the query outputs (projected, normalised, one per query) against the text's first
  token; the similarity of an image and a text is the maximum over the queries.
- ITM: queries and text see each other; the match logits are the head's mean over the
  query outputs.
- Image-grounded generation: queries see only queries, the text sees them and its own past;
  an LM head over the text outputs.

The image tower is given already built (any module mapping images to ``(batch, tokens,
width)``) and is frozen: `trainable_parameters` leaves it out. The losses over these outputs
are in `mmcl.train.blip2_losses`.

>>> import torch
>>> from mmcl.models.qformer import QFormerConfig, QFormerPretrainer
>>> config = QFormerConfig(width=16, layers=2, heads=2, mlp_width=32, vision_width=8,
...     queries=4, vocab_size=30, max_positions=12, embed_dim=8)
>>> model = QFormerPretrainer(config).eval()
>>> image_features, tokens = torch.randn(2, 5, 8), torch.tensor([[2, 7, 3], [2, 9, 0]])
>>> query_features, text_features = model.itc_features(image_features, tokens)
>>> query_features.shape, text_features.shape
(torch.Size([2, 4, 8]), torch.Size([2, 8]))
>>> model.itm_logits(image_features, tokens).shape, model.lm_logits(image_features, tokens).shape
(torch.Size([2, 2]), torch.Size([2, 3, 30]))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mmcl.nn.bert import BertLMHead
from mmcl.nn.qformer import QFormer, generation_mask, itc_mask, itm_mask


@dataclass
class QFormerConfig:
    """The Q-Former's shape (BERT-base and 32 queries in BLIP-2). `vocab_size` None: no
    text part (stage 2 only). `embed_dim`: the ITC space."""

    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_width: int = 3072
    vision_width: int = 1408
    queries: int = 32
    cross_attention_freq: int = 2
    vocab_size: int | None = 30523
    max_positions: int = 512
    vision_eps: float = 1e-6
    embed_dim: int = 256
    pad_id: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_qformer(config: QFormerConfig) -> QFormer:
    return QFormer(
        config.width,
        config.layers,
        config.heads,
        config.mlp_width,
        config.vision_width,
        config.queries,
        config.cross_attention_freq,
        config.vocab_size,
        config.max_positions if config.vocab_size is not None else None,
        config.vision_eps,
    )


class QFormerPretrainer(nn.Module):
    """The Q-Former with stage 1's heads; `visual` (optional) is the frozen image tower."""

    def __init__(self, config: QFormerConfig, visual: nn.Module | None = None):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("QFormerConfig.vocab_size: stage 1 needs the Q-Former's text part")
        self.config = config
        self.visual = visual
        if visual is not None:
            visual.requires_grad_(False)
        self.qformer = build_qformer(config)
        self.vision_proj = nn.Linear(config.width, config.embed_dim)
        self.text_proj = nn.Linear(config.width, config.embed_dim)
        self.itm_head = nn.Linear(config.width, 2)
        self.lm_head = BertLMHead(config.width, config.vocab_size)
        self.temperature = nn.Parameter(torch.tensor(0.07))  # BLIP-2 learns it, from 0.07

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the frozen image tower's: what the optimizer gets."""
        frozen = {id(p) for p in self.visual.parameters()} if self.visual is not None else set()
        return [p for p in self.parameters() if id(p) not in frozen and p.requires_grad]

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen tower's tokens ``(batch, tokens, vision_width)``, without gradients."""
        if self.visual is None:
            raise ValueError("this Q-Former was built without an image tower: pass features")
        with torch.no_grad():
            return self.visual(images)

    def itc_features(
        self, image_features: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ITC features: per query ``(batch, Q, embed_dim)`` and per text (its first
        token) ``(batch, embed_dim)``, from one pass under `itc_mask`."""
        mask = itc_mask(self.qformer.num_queries, tokens == self.config.pad_id)
        queries, text = self.qformer(image_features, tokens, mask)
        query_features = F.normalize(self.vision_proj(queries), dim=-1)
        return query_features, F.normalize(self.text_proj(text[:, 0]), dim=-1)

    def itm_logits(self, image_features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Match / no-match logits ``(batch, 2)`` (column 1: match): the head's mean over the
        query outputs of a pass under `itm_mask`."""
        mask = itm_mask(self.qformer.num_queries, tokens == self.config.pad_id)
        queries, _ = self.qformer(image_features, tokens, mask)
        return self.itm_head(queries).mean(dim=1)

    def lm_logits(self, image_features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(batch, T, vocab)`` under `generation_mask`; position i predicts
        token i + 1. BLIP-2 starts the text with [DEC] in place of [CLS]: give it so."""
        mask = generation_mask(self.qformer.num_queries, tokens == self.config.pad_id)
        _, text = self.qformer(image_features, tokens, mask)
        return self.lm_head(text)
