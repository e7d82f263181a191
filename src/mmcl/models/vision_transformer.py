"""ViT image tower in OpenAI CLIP's layout: class token, pre-LN, transformer, post-LN, projection."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mmcl.models.config import VisionConfig
from mmcl.nn import LayerNorm, Transformer


class VisionTransformer(nn.Module):
    def __init__(self, config: VisionConfig, output_dim: int, quick_gelu: bool = False):
        super().__init__()
        width, patch = config.width, config.patch_size
        if config.image_size % patch:
            raise ValueError(f"image_size {config.image_size} is not a multiple of patch {patch}")
        self.image_size = config.image_size
        self.patch_size = patch
        grid = config.image_size // patch
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(
            width, config.layers, config.heads, config.mlp_width, quick_gelu
        )
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(
        self, images: torch.Tensor, prompt_embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Image features ``(batch, output_dim)`` from the class token.

        ``prompt_embeddings`` ``(length, width)`` or ``(batch, length, width)``: extra tokens
        (visual prompts, as in L2P) inserted after the class token once the positional
        embedding is added; they take part in attention, and the feature is still the class
        token's.
        """
        x = self.embed_tokens(images)
        if prompt_embeddings is not None:
            x = torch.cat([x[:, :1], self._check_prompts(x, prompt_embeddings), x[:, 1:]], dim=1)
        class_token = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        x = self.transformer(self.ln_pre(x), output_positions=class_token)
        return self.ln_post(x) @ self.proj

    def forward_intermediates(
        self,
        images: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        stop_early: bool = False,
        normalize_intermediates: bool = False,
        intermediates_only: bool = False,
        output_fmt: str = "NCHW",
        output_extra_tokens: bool = False,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """The outputs of the blocks `indices` chooses (None: all; n: the last n; a list),
        with open_clip's arguments and keys: ``image_intermediates`` (the patch tokens, as
        ``(batch, width, grid, grid)`` for "NCHW" or ``(batch, grid*grid, width)`` for "NLC",
        through `ln_post` if `normalize_intermediates`), ``image_intermediates_prefix`` (the
        class token, ``(batch, 1, width)``, if `output_extra_tokens`) and ``image_features``
        (unless `intermediates_only`; with `stop_early`, from the last block chosen)."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        batch, _, height, width = images.shape
        x = self.ln_pre(self.embed_tokens(images))
        x, intermediates = self.transformer.forward_intermediates(x, False, indices, stop_early)
        if normalize_intermediates:
            intermediates = [self.ln_post(y) for y in intermediates]
        output = {}
        if output_extra_tokens:
            output["image_intermediates_prefix"] = [y[:, :1] for y in intermediates]
        patches = [y[:, 1:] for y in intermediates]
        if output_fmt == "NCHW":
            rows, cols = height // self.patch_size, width // self.patch_size
            patches = [y.reshape(batch, rows, cols, -1).permute(0, 3, 1, 2) for y in patches]
        output["image_intermediates"] = patches
        if not intermediates_only:
            output["image_features"] = self.pool(x)
        return output

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Final states of every token ``(batch, tokens, width)`` -> the image features."""
        return self.ln_post(x[:, 0]) @ self.proj

    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The class token and the patch embeddings, with their positions:
        ``(batch, 1 + grid*grid, width)``."""
        x = self.embed_patches(images)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) -> patch embeddings (batch, grid*grid, width), by `conv1`."""
        x = self.conv1(images.to(self.class_embedding.dtype))  # (batch, width, grid, grid)
        return x.flatten(2).transpose(1, 2)

    @staticmethod
    def _check_prompts(x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        batch, _, width = x.shape
        if prompts.dim() == 2:
            prompts = prompts.unsqueeze(0).expand(batch, -1, -1)
        if prompts.dim() != 3 or prompts.shape[0] != batch or prompts.shape[2] != width:
            raise ValueError(
                f"prompt_embeddings must be (length, {width}) or ({batch}, length, {width}), "
                f"got {tuple(prompts.shape)}"
            )
        return prompts.to(x.dtype)
