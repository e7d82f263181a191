"""A module with random biases (plain, float32) and an accelerated copy of it, for tests that
compare `mmcl.nn.accelerate`'s fast modules with the plain computation."""

from __future__ import annotations

import copy

import torch
from torch import nn

from mmcl.nn import accelerate


def plain_and_fast(module: nn.Module, dtype: torch.dtype, pack_fp32: bool):
    """`module` with every parameter moved off its initialisation (float32, plain, eval), and
    an accelerated copy in `dtype`."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    plain = module.eval().requires_grad_(False)
    holder = nn.Sequential(copy.deepcopy(plain)).to(dtype).eval()
    return plain, accelerate(holder, pack_fp32=pack_fp32)[0]
