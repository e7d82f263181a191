"""CogVLM (Wang et al. 2023): LLaVA-style image tokens, and a visual expert in every LM layer.

The image tower's patch tokens (read as LLaVA reads them: `forward_intermediates` at
`feature_layer`, the class token dropped) go through CogVLM's adapter, a GLU (`GLUAdapter`),
and are written over the image placeholders of the prompt, as in LLaVA. The language model is
a transformers LLaMA-family `AutoModelForCausalLM`, held as transformers builds it, whose
decoder layers get the visual expert (`mmcl.nn.visual_expert`): image tokens use their own
QKV, output-projection and FFN weights, initialised as copies of the language weights, while
attention stays joint over all tokens under the causal mask.

`embed` arms the expert's token route for the LM's next forward (the placeholders are the
image tokens), so the shared generation step (`CausalLMStep`) and `mmcl ask`'s chat run it
unchanged; cached decoding steps feed only text tokens. Not taken from CogVLM: its
begin/end-of-image tokens and its one position id shared by all image tokens (positions here
count every token, as in LLaVA).

>>> import torch
>>> from mmcl.models.bridges.cogvlm import CogVLM, CogVLMConfig
>>> lm = {"model_type": "llama", "vocab_size": 50, "hidden_size": 32, "intermediate_size": 64,
...       "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}
>>> vision = {"image_size": 32, "patch_size": 16, "width": 32, "layers": 2, "head_width": 16}
>>> model = CogVLM(CogVLMConfig.from_dict({"cogvlm_vision": vision, "language_model": lm,
...                                        "image_token_id": 49})).eval()
>>> ids = torch.tensor([[1, 49, 49, 49, 49, 7, 8]])  # 4 image tokens: a 2 x 2 grid
>>> model(ids, torch.randn(1, 3, 32, 32)).logits.shape
torch.Size([1, 7, 50])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mmcl.models.bridges.llava import Llava
from mmcl.models.config import VisionConfig, parse_fields
from mmcl.models.vision_transformer import VisionTransformer
from mmcl.nn.visual_expert import TokenRoute, add_visual_expert, expert_parameters


@dataclass
class CogVLMConfig:
    """`cogvlm_vision`: the ViT; `language_model`: a transformers LLaMA-family config dict
    (with its `model_type`); `adapter_width`: the GLU adapter's inner width (None: the LM's
    `intermediate_size`, as CogVLM's); `feature_layer` / `keep_class_token`: as LLaVA's."""

    cogvlm_vision: VisionConfig = field(default_factory=VisionConfig)
    language_model: dict[str, Any] = field(default_factory=dict)
    adapter_width: int | None = None
    feature_layer: int = -2
    keep_class_token: bool = False
    quick_gelu: bool = True
    image_token_id: int = 32000

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> CogVLMConfig:
        data = dict(data)
        vision = parse_fields(
            VisionConfig, data.pop("cogvlm_vision", {}), f"{source}: cogvlm_vision"
        )
        config = parse_fields(cls, data, source)
        config.cogvlm_vision = vision
        if vision.is_resnet or vision.patch_size is None:
            raise ValueError(f"{source}: cogvlm_vision must be a ViT (give patch_size)")
        if "model_type" not in config.language_model:
            raise ValueError(
                f"{source}: language_model must be a transformers config dict with its "
                f"model_type (a LLaMA-family one, e.g. 'llama')"
            )
        if config.feature_layer % (vision.layers + 1) == 0:
            raise ValueError(
                f"{source}: feature_layer {config.feature_layer} names the embeddings, not a "
                f"block's output (-2: the second-to-last block's)"
            )
        if config.adapter_width is not None and config.adapter_width < 1:
            raise ValueError(
                f"{source}: adapter_width must be positive, got {config.adapter_width}"
            )
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def feature_block(self) -> int:
        return self.feature_layer % (self.cogvlm_vision.layers + 1) - 1


class GLUAdapter(nn.Module):
    """CogVLM's adapter: a projection to the LM's width, LayerNorm and GELU, then a SwiGLU
    MLP (`gate_proj`, `dense_h_to_4h`, `dense_4h_to_h`; CogVLM's names, no biases)."""

    def __init__(self, in_width: int, out_width: int, inner_width: int):
        super().__init__()
        self.linear_proj = nn.Linear(in_width, out_width, bias=False)
        self.norm1 = nn.LayerNorm(out_width)
        self.act1 = nn.GELU()
        self.gate_proj = nn.Linear(out_width, inner_width, bias=False)
        self.dense_h_to_4h = nn.Linear(out_width, inner_width, bias=False)
        self.dense_4h_to_h = nn.Linear(inner_width, out_width, bias=False)

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.linear_proj(image_tokens)))
        return self.dense_4h_to_h(nn.functional.silu(self.gate_proj(x)) * self.dense_h_to_4h(x))


class CogVLM(Llava):
    """LLaVA's image side and generation, with CogVLM's adapter (`projector`) and the visual
    expert in `language_model`."""

    def __init__(self, config: CogVLMConfig, output_dict: bool = False):
        nn.Module.__init__(self)  # Llava's parts, built from this config
        try:
            from transformers import AutoConfig, AutoModelForCausalLM
        except ImportError:
            raise ImportError(
                "CogVLM models hold a transformers language model: pip install 'mmcl[llm]'"
            ) from None
        self.config = config
        vision = config.cogvlm_vision
        self.visual = VisionTransformer(vision, output_dim=1, quick_gelu=config.quick_gelu)
        self.visual.proj = None  # the adapter reads patch tokens
        lm_fields = dict(config.language_model)
        lm_config = AutoConfig.for_model(lm_fields.pop("model_type"), **lm_fields)
        self.language_model = AutoModelForCausalLM.from_config(lm_config)
        self.route = TokenRoute()
        add_visual_expert(self.language_model, self.route)  # first: it checks the LM's family
        inner = config.adapter_width or lm_config.intermediate_size
        self.projector = GLUAdapter(vision.width, lm_config.hidden_size, inner)

    @property
    def image_size(self) -> int:
        return self.config.cogvlm_vision.image_size

    @property
    def tokens_per_image(self) -> int:
        grid = self.image_size // self.config.cogvlm_vision.patch_size
        return grid * grid + int(self.config.keep_class_token)

    def expert_parameters(self) -> list[nn.Parameter]:
        """The visual expert's weights (every layer's image-token QKV, dense and FFN)."""
        return expert_parameters(self.language_model)

    def embed(
        self, input_ids: torch.Tensor, image_tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """LLaVA's embeddings (image tokens over the placeholders); the placeholders' positions
        are armed as the image tokens of the LM's next forward."""
        embeddings = super().embed(input_ids, image_tokens)
        self.route.set_next(input_ids == self.image_token_id)
        return embeddings
