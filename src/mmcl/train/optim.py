"""AdamW with CLIP's weight-decay exclusions, and a cosine schedule with linear warm-up."""

from __future__ import annotations

import math

import torch
from torch import nn

# Parameters that weight decay would only pull towards zero for no benefit: gains and biases of
# norms, biases, embeddings and the temperature (Radford et al. 2021; open_clip does the same).
_NO_DECAY_NAME_PARTS = ("logit_scale", "logit_bias", "embedding", "class_embedding")


def exclude_from_weight_decay(name: str, parameter: nn.Parameter) -> bool:
    return parameter.ndim < 2 or any(part in name for part in _NO_DECAY_NAME_PARTS)


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.2,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; decay only on weight matrices.

    >>> import mmcl
    >>> optimizer = build_optimizer(mmcl.create_model("tiny-vit"), lr=1e-3)
    >>> [group["weight_decay"] for group in optimizer.param_groups]
    [0.2, 0.0]
    """
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if exclude_from_weight_decay(name, parameter) else decay).append(parameter)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (is every tower frozen?)")
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to the base rate, then cosine decay to `min_ratio` x base."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, {total_steps}], got {warmup_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
