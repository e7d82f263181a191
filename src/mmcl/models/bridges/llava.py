"""LLaVA (Liu et al. 2023) and LLaVA-1.5: image patch tokens, projected, spliced into a causal LM.

The image tower is mmcl's CLIP ViT, read through `forward_intermediates`: the patch tokens of
the second-to-last block (`feature_layer=-2`, as LLaVA counts Hugging Face's `hidden_states`,
whose entry 0 is the embeddings), the class token dropped. The projector is one linear layer
(LLaVA v1, `linear`) or Linear-GELU-Linear (v1.5, `mlp2x_gelu`). The language model is any
`transformers.AutoModelForCausalLM`, held as it is.

Image tokens go where the prompt holds the image placeholder (`image_token_id`), one
placeholder per image token, as Hugging Face's processor expands ``<image>``: the sequence
keeps its length, so labels and masks stay aligned with the ids.

>>> import torch
>>> from mmcl.models.bridges.llava import Llava, LlavaConfig
>>> lm = {"model_type": "llama", "vocab_size": 50, "hidden_size": 32, "intermediate_size": 64,
...       "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}
>>> vision = {"image_size": 32, "patch_size": 16, "width": 32, "layers": 2, "head_width": 16}
>>> model = Llava(LlavaConfig.from_dict({"llava_vision": vision, "language_model": lm,
...                                      "image_token_id": 49})).eval()
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

from mmcl.models.bridges.causal_lm import splice_image_tokens
from mmcl.models.config import VisionConfig, parse_fields
from mmcl.models.vision_transformer import VisionTransformer

PROJECTORS = ("linear", "mlp2x_gelu")


@dataclass
class LlavaConfig:
    """`llava_vision`: the ViT; `language_model`: a transformers config dict (with its
    `model_type`), held as it is; `feature_layer`: which `hidden_states` entry the patch
    tokens come from (-2: the second-to-last block's output); `keep_class_token`: Hugging
    Face's "full" strategy (False: "default", the class token dropped)."""

    llava_vision: VisionConfig = field(default_factory=VisionConfig)
    language_model: dict[str, Any] = field(default_factory=dict)
    projector: str = "mlp2x_gelu"
    projector_bias: bool = True
    feature_layer: int = -2
    keep_class_token: bool = False
    quick_gelu: bool = True  # CLIP ViT-L/14's activation, which LLaVA uses
    image_token_id: int = 32000

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> LlavaConfig:
        data = dict(data)
        vision = parse_fields(VisionConfig, data.pop("llava_vision", {}), f"{source}: llava_vision")
        config = parse_fields(cls, data, source)
        config.llava_vision = vision
        if vision.is_resnet or vision.patch_size is None:
            raise ValueError(f"{source}: llava_vision must be a ViT (give patch_size)")
        if config.projector not in PROJECTORS:
            raise ValueError(
                f"{source}: projector {config.projector!r} is unknown; choose one of {PROJECTORS}"
            )
        if "model_type" not in config.language_model:
            raise ValueError(
                f"{source}: language_model must be a transformers config dict with its "
                f"model_type (e.g. 'llama')"
            )
        position = config.feature_layer % (vision.layers + 1)
        if position == 0:
            raise ValueError(
                f"{source}: feature_layer {config.feature_layer} names the embeddings, not a "
                f"block's output; LLaVA reads a block's (-2: the second-to-last)"
            )
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def feature_block(self) -> int:
        """The 0-based index of the block whose output holds the image tokens."""
        return self.feature_layer % (self.llava_vision.layers + 1) - 1


class LlavaProjector(nn.Module):
    """Image-tower width -> LM width: `linear_1`, then (mlp2x_gelu) GELU and `linear_2`
    (Hugging Face's `LlavaMultiModalProjector` names)."""

    def __init__(self, kind: str, in_width: int, out_width: int, bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(in_width, out_width, bias=bias)
        if kind == "mlp2x_gelu":
            self.act = nn.GELU()
            self.linear_2 = nn.Linear(out_width, out_width, bias=bias)

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        x = self.linear_1(image_tokens)
        return self.linear_2(self.act(x)) if hasattr(self, "linear_2") else x


class Llava(nn.Module):
    def __init__(self, config: LlavaConfig, output_dict: bool = False):
        super().__init__()
        try:  # a slow import: only here
            from transformers import AutoConfig, AutoModelForCausalLM
        except ImportError:
            raise ImportError(
                "LLaVA models hold a transformers language model: pip install 'mmcl[llm]'"
            ) from None

        self.config = config
        vision = config.llava_vision
        self.visual = VisionTransformer(vision, output_dim=1, quick_gelu=config.quick_gelu)
        self.visual.proj = None  # LLaVA reads patch tokens; Hugging Face's tower has no proj
        lm_fields = dict(config.language_model)
        lm_config = AutoConfig.for_model(lm_fields.pop("model_type"), **lm_fields)
        self.language_model = AutoModelForCausalLM.from_config(lm_config)
        self.projector = LlavaProjector(
            config.projector, vision.width, lm_config.hidden_size, config.projector_bias
        )

    @property
    def image_size(self) -> int:
        return self.config.llava_vision.image_size

    @property
    def image_token_id(self) -> int:
        return self.config.image_token_id

    @property
    def tokens_per_image(self) -> int:
        grid = self.image_size // self.config.llava_vision.patch_size
        return grid * grid + int(self.config.keep_class_token)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass: the tower's blocks and the LM's layers
        (through transformers' own switch)."""
        self.visual.transformer.grad_checkpointing = enable
        lm = self.language_model
        if hasattr(lm, "activation_checkpointing_enable"):  # transformers 5's name for it
            enable_lm, disable_lm = (
                lm.activation_checkpointing_enable,
                lm.activation_checkpointing_disable,
            )
            options = {"activation_checkpointing_kwargs": {"use_reentrant": False}}
        else:
            enable_lm, disable_lm = (
                lm.gradient_checkpointing_enable,
                lm.gradient_checkpointing_disable,
            )
            options = {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
        if enable:
            enable_lm(**options)
        else:
            disable_lm()

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images ``(batch, 3, H, W)`` -> projected image tokens ``(batch, tokens, lm width)``."""
        block = self.config.feature_block
        out = self.visual.forward_intermediates(
            pixel_values,
            indices=[block],
            stop_early=True,  # the blocks after it are never run
            intermediates_only=True,
            output_fmt="NLC",
            output_extra_tokens=self.config.keep_class_token,
        )
        tokens = out["image_intermediates"][0]
        if self.config.keep_class_token:
            tokens = torch.cat([out["image_intermediates_prefix"][0], tokens], dim=1)
        return self.projector(tokens)

    def embed(
        self, input_ids: torch.Tensor, image_tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The LM's input embeddings, with `image_tokens` ``(images, tokens, width)`` written
        over the placeholders, in order (row by row)."""
        return splice_image_tokens(
            self.language_model, input_ids, self.image_token_id, image_tokens, self.tokens_per_image
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **lm_options,
    ):
        """The LM's output (``.logits`` ``(batch, length, vocab)``) for `input_ids` with the
        images' tokens at their placeholders. `lm_options` go to the LM (e.g. ``labels``,
        ``position_ids``)."""
        image_tokens = None if pixel_values is None else self.encode_image(pixel_values)
        return self.language_model(
            inputs_embeds=self.embed(input_ids, image_tokens),
            attention_mask=attention_mask,
            **lm_options,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        end_token: int | None = None,
        pad_token: int = 0,
        **options,
    ) -> torch.Tensor:
        """Answer ids ``(batch, new)`` after the (left-padded) prompts, through mmcl's loop
        (`mmcl.models.bridges.causal_lm.lm_generate`; `options` such as ``beams``,
        ``length_penalty`` or ``top_p`` go there: beam search gives transformers' tokens).
        The images are encoded once. `end_token`: the LM's eos by default."""
        from mmcl.models.bridges.causal_lm import lm_generate

        if end_token is None:
            end_token = self.language_model.config.eos_token_id
        if end_token is None:
            raise ValueError("Llava.generate: the LM config has no eos_token_id; give end_token")
        image_tokens = None if pixel_values is None else self.encode_image(pixel_values)
        result = lm_generate(
            self.language_model,
            lambda ids: self.embed(ids, image_tokens),
            input_ids,
            attention_mask,
            max_new_tokens,
            end_token,
            pad_token=pad_token,
            **options,
        )
        return result.tokens[:, input_ids.shape[1] :]
