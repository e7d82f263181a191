"""BLIP's architecture as data: the vision tower, the BERT-style text stacks, and which of
BLIP's parts a model holds (Hugging Face's BLIP classes each hold a subset)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mmcl.models.config import parse_fields

# The parts a `Blip` may hold: the unimodal/image-grounded text encoder, the causal decoder,
# the contrastive projections (needs the encoder) and the matching head (needs the encoder).
BLIP_PARTS = ("text_encoder", "text_decoder", "itc", "itm")


@dataclass
class BlipVisionConfig:
    image_size: int = 384
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_width: int = 3072
    # Channels of stride-2 3x3 convolutions before the patch embedding (Xiao et al. 2021,
    # "Early convolutions help transformers see better"), e.g. (16, 32): a tiny ViT then
    # learns shapes from few samples. Empty (BLIP's and Hugging Face's): plain patches.
    conv_stem: tuple[int, ...] = ()


@dataclass
class BlipTextConfig:
    vocab_size: int = 30524
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_width: int = 3072
    max_positions: int = 512
    pad_id: int = 0
    sep_id: int = 102  # the end of a caption
    dec_id: int = 30522  # [DEC]: starts the decoder's input (Hugging Face's bos_token_id)
    enc_id: int = 30523  # [ENC]: replaces [CLS] for image-text matching
    # A WordPiece vocabulary shipped with mmcl (`mmcl/models/vocabularies/NAME`) that the ids
    # come from, or None: then the tokenizer is the model folder's own (`mmcl.models.blip_vocab`).
    vocabulary: str | None = None


@dataclass
class BlipConfig:
    """`blip_vision`, `blip_text`, `embed_dim` (the ITC space), `parts` (`BLIP_PARTS`) and
    `share_text_weights`."""

    blip_vision: BlipVisionConfig = field(default_factory=BlipVisionConfig)
    blip_text: BlipTextConfig = field(default_factory=BlipTextConfig)
    embed_dim: int = 256
    parts: tuple[str, ...] = BLIP_PARTS
    # BLIP's pre-training: the image-grounded encoder and the decoder share every weight but
    # the self-attention layers (Li et al. 2022, section 3.1), when a model holds both.
    # Hugging Face's checkpoints keep them separate (their loader sets False).
    share_text_weights: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> BlipConfig:
        data = dict(data)
        vision = parse_fields(
            BlipVisionConfig, data.pop("blip_vision", {}), f"{source}: blip_vision"
        )
        text = parse_fields(BlipTextConfig, data.pop("blip_text", {}), f"{source}: blip_text")
        config = parse_fields(cls, data, source)
        vision.conv_stem = tuple(vision.conv_stem)
        if vision.patch_size % 2 ** len(vision.conv_stem):
            raise ValueError(
                f"{source}: blip_vision.patch_size {vision.patch_size} is not a multiple of the "
                f"{2 ** len(vision.conv_stem)} by which its {len(vision.conv_stem)} stride-2 "
                f"stem convolutions reduce the image"
            )
        config.blip_vision, config.blip_text = vision, text
        config.parts = tuple(config.parts)
        unknown = sorted(set(config.parts) - set(BLIP_PARTS))
        if unknown:
            raise ValueError(f"{source}: unknown BLIP parts {unknown}; known: {list(BLIP_PARTS)}")
        if {"itc", "itm"} & set(config.parts) and "text_encoder" not in config.parts:
            raise ValueError(f"{source}: the parts 'itc' and 'itm' need 'text_encoder'")
        return config

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["parts"] = list(self.parts)
        out["blip_vision"]["conv_stem"] = list(self.blip_vision.conv_stem)
        return out
