"""ALBEF (Li et al. 2021, "Align before Fuse"): an image tower, a BERT text encoder, and a
fusion encoder (BERT layers that also cross-attend to the image tokens) on top of it.

- ITC: the projected, normalised class tokens of the image and of the text-only layers.
- ITM: a two-way head on the fused [CLS] state of an (image, text) pair.
- MLM: BERT's LM head on the fused states of a masked text.

The text encoder and the fusion encoder are one BERT split in two (`text_layers` +
`fusion_layers`), as ALBEF splits bert-base's 12 layers 6 + 6. The model only computes;
`mmcl.train.albef_objective` holds the momentum copy, the feature queues and the losses.

>>> import torch
>>> from mmcl.models.albef import Albef
>>> from mmcl.models.albef_config import AlbefConfig
>>> config = AlbefConfig.from_dict({"vision_cfg": {"image_size": 32, "patch_size": 8,
...     "width": 16, "layers": 1, "heads": 2, "mlp_width": 32}, "albef_text": {
...     "vocab_size": 40, "width": 16, "text_layers": 1, "fusion_layers": 1, "heads": 2,
...     "mlp_width": 32, "max_positions": 20, "cls_id": 2, "sep_id": 3, "mask_id": 4},
...     "embed_dim": 8})
>>> model = Albef(config).eval()
>>> images, tokens = torch.randn(2, 3, 32, 32), torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]])
>>> model.encode_text(tokens, normalize=True).shape
torch.Size([2, 8])
>>> model.itm_logits(model.encode_image_tokens(images), tokens).shape
torch.Size([2, 2])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from mmcl.models.albef_config import AlbefConfig
from mmcl.models.blip import BlipVisionTower
from mmcl.nn import BertEmbeddings, BertEncoder, BertLMHead
from mmcl.nn.masks import key_padding_mask

INITIAL_TEMPERATURE = 0.07  # ALBEF's `temp`, learned and clamped to [0.001, 0.5] in training

# Given the detached, normalised ITC features of a batch, the image and the text index of
# every ITM pair (see `mmcl.train.albef_objective`).
PairPicker = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Albef(nn.Module):
    """ALBEF's parts over one image tower; see the module docstring. Token ids are BERT's
    ([CLS] ... [SEP], padded with `pad_id`; `mmcl.io.wordpiece`)."""

    def __init__(self, config: AlbefConfig, output_dict: bool = True):
        super().__init__()
        self.config = config
        vision, text = config.vision_cfg, config.albef_text
        self.visual = BlipVisionTower(vision)
        self.embeddings = BertEmbeddings(text.vocab_size, text.width, text.max_positions)
        self.text_encoder = BertEncoder(text.width, text.text_layers, text.heads, text.mlp_width)
        self.fusion_encoder = BertEncoder(
            text.width, text.fusion_layers, text.heads, text.mlp_width, context_width=vision.width
        )
        self.vision_proj = nn.Linear(vision.width, config.embed_dim)
        self.text_proj = nn.Linear(text.width, config.embed_dim)
        self.itm_head = nn.Linear(text.width, 2)
        self.mlm_head = BertLMHead(text.width, text.vocab_size)
        self.temp = nn.Parameter(torch.tensor(INITIAL_TEMPERATURE))
        self.apply(_init_bert_weights)

    @property
    def image_size(self) -> int:
        return self.visual.image_size

    @property
    def context_length(self) -> int:
        return self.config.albef_text.max_positions

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.text_encoder.grad_checkpointing = enable
        self.fusion_encoder.grad_checkpointing = enable

    # --- unimodal ------------------------------------------------------------------------------

    def encode_image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The image tower's tokens ``(batch, 1 + grid*grid, width)``."""
        return self.visual(images)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """ITC image features ``(batch, embed_dim)`` from the class token."""
        features = self.vision_proj(self.visual(images)[:, 0])
        return F.normalize(features, dim=-1) if normalize else features

    def text_states(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The text-only layers' states ``(batch, length, width)`` and the padding mask."""
        mask = self._padding(tokens)
        return self.text_encoder(self.embeddings(tokens), mask), mask

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """ITC text features ``(batch, embed_dim)`` from the text-only layers' [CLS]."""
        features = self.text_proj(self.text_states(tokens)[0][:, 0])
        return F.normalize(features, dim=-1) if normalize else features

    # --- fused ---------------------------------------------------------------------------------

    def fuse(
        self, text_states: torch.Tensor, text_mask: torch.Tensor | None, image_tokens: torch.Tensor
    ) -> torch.Tensor:
        """The fusion layers over text states, cross-attending to every image token."""
        return self.fusion_encoder(text_states, text_mask, context=image_tokens)

    def itm_logits(self, image_tokens: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Match / no-match logits ``(batch, 2)`` (column 1: match) of row i's text with row
        i's image tokens."""
        states, mask = self.text_states(tokens)
        return self.itm_head(self.fuse(states, mask, image_tokens)[:, 0])

    def mlm_logits(self, image_tokens: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Token logits ``(batch, length, vocab)`` of (masked) `tokens` fused with the image."""
        states, mask = self.text_states(tokens)
        return self.mlm_head(self.fuse(states, mask, image_tokens))

    def forward(
        self,
        images: torch.Tensor,
        texts: torch.Tensor,
        masked_texts: torch.Tensor | None = None,
        pick_pairs: PairPicker | None = None,
        output_dict: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Every output of a training step in one call (so DistributedDataParallel sees one
        forward): normalised ITC features; with `pick_pairs`, the ITM logits of the pairs it
        picks (`itm_image_index`, `itm_text_index` say which); with `masked_texts`, their MLM
        logits over the image. `output_dict` is accepted for the CLIP objectives' calling
        convention; the result is always a dict."""
        image_tokens = self.visual(images)
        image_features = F.normalize(self.vision_proj(image_tokens[:, 0]), dim=-1)
        text_states, text_mask = self.text_states(texts)
        text_features = F.normalize(self.text_proj(text_states[:, 0]), dim=-1)
        outputs = {"image_features": image_features, "text_features": text_features}
        if pick_pairs is not None:
            image_index, text_index = pick_pairs(image_features.detach(), text_features.detach())
            pair_mask = None if text_mask is None else text_mask[text_index]
            fused = self.fuse(text_states[text_index], pair_mask, image_tokens[image_index])
            outputs["itm_logits"] = self.itm_head(fused[:, 0])
            outputs["itm_image_index"], outputs["itm_text_index"] = image_index, text_index
        if masked_texts is not None:
            outputs["mlm_logits"] = self.mlm_logits(image_tokens, masked_texts)
        return outputs

    def _padding(self, tokens: torch.Tensor) -> torch.Tensor | None:
        pad_id = self.config.albef_text.pad_id
        return key_padding_mask(tokens, pad_id) if (tokens == pad_id).any() else None


def _init_bert_weights(module: nn.Module) -> None:
    """BERT's initialisation (normal, std 0.02; zero biases) for the linear and embedding
    layers; the attention projections keep `MultiheadAttention`'s own."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
