"""CLIP: an image tower and a text tower projected into one normalised embedding space."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mmcl.models.config import CLIPConfig
from mmcl.models.modified_resnet import Bottleneck, ModifiedResNet
from mmcl.models.text_transformer import TextTransformer
from mmcl.models.vision_transformer import VisionTransformer

# Radford et al. 2021: the temperature starts at 0.07 and the scale is clipped at 100.
LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = 100.0  # on the scale itself; the parameter stores its log


class CLIP(nn.Module):
    """Dual encoder. State-dict keys: `visual.*`, `text.*`, `logit_scale`.

    >>> import mmcl, torch
    >>> model = mmcl.create_model("tiny-vit")
    >>> images = torch.randn(2, 3, 32, 32)
    >>> texts = mmcl.tokenize(["a red circle", "a blue square"])
    >>> image_features, text_features, logit_scale = model(images, texts)
    >>> image_features.shape
    torch.Size([2, 64])
    """

    def __init__(self, config: CLIPConfig, output_dict: bool = False):
        super().__init__()
        self.config = config
        self.output_dict = output_dict
        vision = config.vision_cfg
        if vision.is_resnet:
            self.visual = ModifiedResNet(vision, config.embed_dim)
        else:
            self.visual = VisionTransformer(vision, config.embed_dim, config.quick_gelu)
        self.text = TextTransformer(config.text_cfg, config.embed_dim, config.quick_gelu)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        # SigLIP's learnable bias on the pairwise logits (Zhai et al. 2023); absent for CLIP.
        self.logit_bias = None
        if config.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(config.init_logit_bias)))
        self.init_parameters()

    @property
    def image_size(self) -> int:
        return self.visual.image_size

    @property
    def context_length(self) -> int:
        return self.text.context_length

    def init_parameters(self) -> None:
        """CLIP's reference initialisation, for training from scratch."""
        text = self.text
        nn.init.normal_(text.token_embedding.weight, std=0.02)
        nn.init.normal_(text.positional_embedding, std=0.01)
        _init_transformer(text.transformer)
        nn.init.normal_(text.text_projection, std=text.transformer.width**-0.5)
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            std = pool.c_proj.in_features**-0.5
            for linear in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(linear.weight, std=std)
            for module in self.visual.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)  # each residual branch starts as identity
        else:
            _init_transformer(self.visual.transformer)
        with torch.no_grad():
            scale = self.config.init_logit_scale
            self.logit_scale.fill_(LOGIT_SCALE_INIT if scale is None else float(scale))
            if self.logit_bias is not None:
                self.logit_bias.fill_(float(self.config.init_logit_bias))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.text.transformer.grad_checkpointing = enable
        if isinstance(self.visual, VisionTransformer):
            self.visual.transformer.grad_checkpointing = enable

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(images)
        return F.normalize(features.float(), dim=-1).to(features.dtype) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.text(tokens)
        return F.normalize(features.float(), dim=-1).to(features.dtype) if normalize else features

    def forward_intermediates(
        self,
        image: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        image_indices: int | Sequence[int] | None = None,
        text_indices: int | Sequence[int] | None = None,
        stop_early: bool = False,
        normalize: bool = True,
        normalize_intermediates: bool = False,
        intermediates_only: bool = False,
        image_output_fmt: str = "NCHW",
        image_output_extra_tokens: bool = False,
        text_output_fmt: str = "NLC",
        text_output_extra_tokens: bool = False,
        output_logits: bool = False,
        output_logit_scale_bias: bool = False,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Intermediate features of both towers, with open_clip's arguments and keys
        (``image_intermediates``, ``image_features``, ``text_intermediates``,
        ``text_features``, and with `output_logits` ``image_logits``/``text_logits``, with
        `output_logit_scale_bias` ``logit_scale``/``logit_bias``); see each tower's
        `forward_intermediates`. `intermediates_only` turns `normalize` and `output_logits` off.

        >>> import mmcl, torch
        >>> model = mmcl.create_model("tiny-vit")
        >>> out = model.forward_intermediates(torch.randn(2, 3, 32, 32), image_indices=[-2])
        >>> out["image_intermediates"][0].shape, out["image_features"].shape
        (torch.Size([2, 128, 4, 4]), torch.Size([2, 64]))
        """
        if intermediates_only:
            normalize = output_logits = False
        if output_logits and (image is None or text is None):
            raise ValueError("forward_intermediates: output_logits needs both image and text")
        output = {}
        if image is not None:
            output.update(
                self.visual.forward_intermediates(
                    image,
                    image_indices,
                    stop_early,
                    normalize_intermediates,
                    intermediates_only,
                    image_output_fmt,
                    image_output_extra_tokens,
                )
            )
        if text is not None:
            output.update(
                self.text.forward_intermediates(
                    text,
                    text_indices,
                    stop_early,
                    normalize_intermediates,
                    intermediates_only,
                    text_output_fmt,
                    text_output_extra_tokens,
                )
            )
        for key in ("image_features", "text_features"):
            if normalize and key in output:
                output[key] = F.normalize(output[key], dim=-1)
        logit_scale = self.logit_scale.exp().clamp(max=LOGIT_SCALE_MAX)
        if output_logits:
            image_logits = logit_scale * output["image_features"] @ output["text_features"].T
            if self.logit_bias is not None:
                image_logits = image_logits + self.logit_bias
            output["image_logits"], output["text_logits"] = image_logits, image_logits.T
        if output_logit_scale_bias:
            output["logit_scale"] = logit_scale
            if self.logit_bias is not None:
                output["logit_bias"] = self.logit_bias
        return output

    def forward(
        self,
        images: torch.Tensor | None = None,
        texts: torch.Tensor | None = None,
        output_dict: bool | None = None,
    ):
        """Normalised image and text features and the (clamped) logit scale."""
        image_features = self.encode_image(images, normalize=True) if images is not None else None
        text_features = self.encode_text(texts, normalize=True) if texts is not None else None
        logit_scale = self.logit_scale.exp().clamp(max=LOGIT_SCALE_MAX)
        if output_dict if output_dict is not None else self.output_dict:
            outputs = {
                "image_features": image_features,
                "text_features": text_features,
                "logit_scale": logit_scale,
            }
            if self.logit_bias is not None:
                outputs["logit_bias"] = self.logit_bias
            return outputs
        if self.logit_bias is not None:
            return image_features, text_features, logit_scale, self.logit_bias
        return image_features, text_features, logit_scale


def _init_transformer(transformer: nn.Module) -> None:
    width, layers = transformer.width, transformer.layers
    proj_std = width**-0.5 * (2 * layers) ** -0.5
    attn_std = width**-0.5
    fc_std = (2 * width) ** -0.5
    for block in transformer.resblocks:
        nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
