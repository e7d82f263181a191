"""ALBEF's architecture as data: BLIP's vision tower (a pre-LN ViT, as ALBEF's DeiT is), a
BERT text encoder whose upper `fusion_layers` cross-attend to the image, and the ITC space.

The JSON form names the vision section `vision_cfg` (as CLIP's configs do, so `mmcl models`
lists it) and the text section `albef_text` (which `config_from_dict` recognises)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mmcl.models.blip_config import BlipVisionConfig
from mmcl.models.config import parse_fields


@dataclass
class AlbefTextConfig:
    """bert-base-uncased's sizes and ids by default: 6 text-only layers, then 6 fusion layers
    (Li et al. 2021, section 3.1)."""

    vocab_size: int = 30522
    width: int = 768
    text_layers: int = 6
    fusion_layers: int = 6
    heads: int = 12
    mlp_width: int = 3072
    max_positions: int = 512
    pad_id: int = 0
    cls_id: int = 101
    sep_id: int = 102
    mask_id: int = 103


@dataclass
class AlbefConfig:
    vision_cfg: BlipVisionConfig = field(default_factory=lambda: BlipVisionConfig(image_size=256))
    albef_text: AlbefTextConfig = field(default_factory=AlbefTextConfig)
    embed_dim: int = 256

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> AlbefConfig:
        data = dict(data)
        vision = parse_fields(BlipVisionConfig, data.pop("vision_cfg", {}), f"{source}: vision_cfg")
        text = parse_fields(AlbefTextConfig, data.pop("albef_text", {}), f"{source}: albef_text")
        config = parse_fields(cls, data, source)
        config.vision_cfg, config.albef_text = vision, text
        ids = {name: getattr(text, name) for name in ("pad_id", "cls_id", "sep_id", "mask_id")}
        outside = {name: i for name, i in ids.items() if not 0 <= i < text.vocab_size}
        if outside:
            raise ValueError(
                f"{source}: albef_text ids {outside} are outside the vocabulary of "
                f"{text.vocab_size}; raise vocab_size or fix the ids"
            )
        if text.text_layers < 1 or text.fusion_layers < 1:
            raise ValueError(
                f"{source}: ALBEF needs at least one text layer and one fusion layer, got "
                f"text_layers={text.text_layers}, fusion_layers={text.fusion_layers}"
            )
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
