"""Model architectures as data: open_clip-style JSON configs parsed into dataclasses."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class VisionConfig:
    image_size: int = 224
    layers: int | tuple[int, int, int, int] = 12  # an int for ViT, four stage depths for ResNet
    width: int = 768
    patch_size: int | None = 32  # None selects the ModifiedResNet tower
    head_width: int = 64
    mlp_ratio: float = 4.0

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.layers, (tuple, list))

    @property
    def mlp_width(self) -> int:
        return _mlp_width(self.width, self.mlp_ratio)

    @property
    def heads(self) -> int:
        width = self.width * 32 if self.is_resnet else self.width
        return width // self.head_width


@dataclass
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0

    @property
    def mlp_width(self) -> int:
        return _mlp_width(self.width, self.mlp_ratio)


@dataclass
class CLIPConfig:
    embed_dim: int = 512
    vision_cfg: VisionConfig = field(default_factory=VisionConfig)
    text_cfg: TextConfig = field(default_factory=TextConfig)
    quick_gelu: bool = False
    init_logit_scale: float | None = None  # log of the initial scale; None: log(1 / 0.07)
    init_logit_bias: float | None = None  # set for SigLIP-style training (e.g. -10)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> CLIPConfig:
        """Build from an open_clip-style dict, rejecting fields we would silently ignore."""
        data = dict(data)
        vision = _parse(VisionConfig, data.pop("vision_cfg", {}), f"{source}: vision_cfg")
        if vision.is_resnet:
            vision.layers = tuple(vision.layers)
            if len(vision.layers) != 4:
                raise ValueError(f"{source}: vision_cfg.layers must list 4 stage depths")
        text = _parse(TextConfig, data.pop("text_cfg", {}), f"{source}: text_cfg")
        top = _parse(_TopLevel, data, source)
        return cls(
            top.embed_dim, vision, text, top.quick_gelu, top.init_logit_scale, top.init_logit_bias
        )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.vision_cfg.is_resnet:
            out["vision_cfg"]["layers"] = list(self.vision_cfg.layers)
            out["vision_cfg"]["patch_size"] = None
        return out


@dataclass
class _TopLevel:
    embed_dim: int = 512
    quick_gelu: bool = False
    init_logit_scale: float | None = None
    init_logit_bias: float | None = None


def _mlp_width(width: int, ratio: float) -> int:
    # open_clip truncates width * ratio; the epsilon keeps ratios derived from integer widths
    # (e.g. 6144 / 1408) from landing one below.
    return int(width * ratio + 1e-6)


def _parse(kind: type, values: dict[str, Any], where: str):
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unsupported field(s) {unknown}; supported: {sorted(known)}")
    return kind(**values)
