"""Norms and activations with the numerics CLIP checkpoints expect."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LayerNorm(nn.LayerNorm):
    """LayerNorm that always normalises in float32 and casts back.

    Half-precision inputs lose too much in the variance; OpenAI's CLIP does the same. When
    input and weights share a 16-bit dtype, PyTorch's own kernels (CPU and CUDA) already
    accumulate the mean and variance in float32 and round only the output, which gives the
    same result without materialising float32 copies of the activations.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low_precision = x.dtype in (torch.bfloat16, torch.float16)
        if low_precision and (self.weight is None or self.weight.dtype == x.dtype):
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP models were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation_layer(quick_gelu: bool) -> nn.Module:
    return QuickGELU() if quick_gelu else nn.GELU()
