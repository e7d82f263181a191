"""Model architectures as data: open_clip-style JSON configs parsed into dataclasses."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmcl.models.blip_config import BlipConfig


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
        vision = parse_fields(VisionConfig, data.pop("vision_cfg", {}), f"{source}: vision_cfg")
        if vision.is_resnet:
            vision.layers = tuple(vision.layers)
            if len(vision.layers) != 4:
                raise ValueError(f"{source}: vision_cfg.layers must list 4 stage depths")
        text = parse_fields(TextConfig, data.pop("text_cfg", {}), f"{source}: text_cfg")
        top = parse_fields(_TopLevel, data, source)
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


def parse_fields(kind: type, values: dict[str, Any], where: str):
    """`kind(**values)`, refusing unknown fields with one line naming `where`."""
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unsupported field(s) {unknown}; supported: {sorted(known)}")
    return kind(**values)


# --- CoCa (open_clip's coca_* configs) -------------------------------------------------------


@dataclass
class CoCaVisionConfig(VisionConfig):
    """A ViT whose tokens go through an attentional pooler (open_clip's `attentional_pool`):
    the first pooled query is the contrastive feature, the others the captioning tokens.
    Without it (coca_base) the class token is the feature and the patch tokens caption."""

    attentional_pool: bool = False
    attn_pooler_heads: int = 8
    attn_pooler_queries: int = 256
    output_tokens: bool = True  # open_clip's flag for returning tokens; CoCa always does


@dataclass
class CoCaTextConfig(TextConfig):
    """CoCa's unimodal text tower: a class token appended after the text (`embed_cls`) and a
    key mask for `pad_id` tokens."""

    context_length: int = 76
    embed_cls: bool = True
    output_tokens: bool = True
    pad_id: int = 0


@dataclass
class MultimodalConfig:
    """CoCa's multimodal text decoder. `dim_head`, `n_queries` and `attn_pooler_heads` are
    accepted as open_clip's configs carry them; open_clip's decoder does not use them either."""

    context_length: int = 76
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    dim_head: int = field(default=64, compare=False)
    n_queries: int = field(default=256, compare=False)
    attn_pooler_heads: int = field(default=8, compare=False)

    @property
    def mlp_width(self) -> int:
        return _mlp_width(self.width, self.mlp_ratio)


@dataclass
class CoCaConfig:
    embed_dim: int = 512
    vision_cfg: CoCaVisionConfig = field(default_factory=CoCaVisionConfig)
    text_cfg: CoCaTextConfig = field(default_factory=CoCaTextConfig)
    multimodal_cfg: MultimodalConfig = field(default_factory=MultimodalConfig)
    quick_gelu: bool = False
    init_logit_scale: float | None = None
    init_logit_bias: float | None = None
    custom_text: bool = True  # open_clip's flag for a text tower at `text.`; always so here

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> CoCaConfig:
        """Build from an open_clip CoCa config dict, rejecting fields we would ignore and
        combinations open_clip's CoCa could not run."""
        data = dict(data)
        vision = parse_fields(CoCaVisionConfig, data.pop("vision_cfg", {}), f"{source}: vision_cfg")
        text = parse_fields(CoCaTextConfig, data.pop("text_cfg", {}), f"{source}: text_cfg")
        multimodal = parse_fields(
            MultimodalConfig, data.pop("multimodal_cfg", {}), f"{source}: multimodal_cfg"
        )
        config = parse_fields(cls, data, source)
        config.vision_cfg, config.text_cfg, config.multimodal_cfg = vision, text, multimodal
        if vision.is_resnet or vision.patch_size is None:
            raise ValueError(f"{source}: CoCa needs a ViT image tower (vision_cfg.patch_size)")
        if not (vision.output_tokens and text.output_tokens and text.embed_cls):
            raise ValueError(
                f"{source}: CoCa needs vision_cfg.output_tokens, text_cfg.output_tokens and "
                f"text_cfg.embed_cls true"
            )
        image_token_width = config.embed_dim if vision.attentional_pool else vision.width
        for what, width in (("image tokens", image_token_width), ("text tokens", text.width)):
            if width != multimodal.width:
                raise ValueError(
                    f"{source}: the {what} are {width} wide but multimodal_cfg.width is "
                    f"{multimodal.width}; the multimodal decoder needs them equal"
                )
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_from_dict(
    data: dict[str, Any], source: str = "config"
) -> CLIPConfig | CoCaConfig | BlipConfig:
    """The config an open_clip-style dict describes: CoCa's when it has a `multimodal_cfg`,
    BLIP's when it has a `blip_text`, ALBEF's when it has an `albef_text`."""
    if "cogvlm_vision" in data:
        from mmcl.models.bridges.cogvlm import CogVLMConfig  # which builds on this module

        return CogVLMConfig.from_dict(data, source=source)
    if "llava_vision" in data:
        from mmcl.models.bridges.llava import LlavaConfig  # which builds on this module

        return LlavaConfig.from_dict(data, source=source)
    if data.get("architecture") == "minigpt4":  # a BLIP-2 assembly of its own
        from mmcl.models.bridges.minigpt4 import MiniGPT4Config

        return MiniGPT4Config.from_dict(data, source=source)
    if "qformer" in data:  # BLIP-2
        from mmcl.models.bridges.blip2 import Blip2Config

        return Blip2Config.from_dict(data, source=source)
    if "blip_text" in data:
        from mmcl.models.blip_config import BlipConfig  # which builds on this module

        return BlipConfig.from_dict(data, source=source)
    if "albef_text" in data:
        from mmcl.models.albef_config import AlbefConfig  # which builds on this module

        return AlbefConfig.from_dict(data, source=source)
    kind = CoCaConfig if "multimodal_cfg" in data else CLIPConfig
    return kind.from_dict(data, source=source)
