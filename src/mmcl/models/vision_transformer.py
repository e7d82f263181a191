"""ViT image tower in OpenAI CLIP's layout: class token, pre-LN, transformer, post-LN, projection."""

from __future__ import annotations

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
        x = self.embed_patches(images)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        if prompt_embeddings is not None:
            x = torch.cat([x[:, :1], self._check_prompts(x, prompt_embeddings), x[:, 1:]], dim=1)
        class_token = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        x = self.transformer(self.ln_pre(x), output_positions=class_token)
        return self.ln_post(x) @ self.proj

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
