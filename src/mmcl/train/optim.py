"""AdamW (or SGD) with CLIP's weight-decay exclusions; cosine or step learning-rate schedules."""

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
    kind: str = "adamw",
    momentum: float = 0.0,
) -> torch.optim.Optimizer:
    """AdamW (or SGD, `kind="sgd"`) over the trainable parameters; decay only on weight matrices.

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
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if kind != "adamw":
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {kind!r}")
    fused = {"fused": True} if _fusable([*decay, *no_decay]) else {}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **fused)


def _fusable(parameters: list[nn.Parameter]) -> bool:
    """Whether torch's fused AdamW takes these parameters: floating point, on the CPU or a GPU,
    with torch >= 2.4 on the CPU. It is the same update in one kernel a step, where torch's
    default on the CPU loops over the tensors in Python, op by op (several times slower for a
    tiny model, whose 6.3M-entry token embedding is most of its parameters)."""
    devices = {p.device.type for p in parameters}
    if not parameters or not all(p.is_floating_point() for p in parameters) or len(devices) > 1:
        return False
    device = devices.pop()
    if device == "cpu":
        return tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)
    return device == "cuda"


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


def step_decay(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    decay_at: tuple[float, ...] = (),
    decay: float = 0.1,
    warmup_steps: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Optional linear warm-up, then the base rate multiplied by `decay` at each fraction
    `decay_at` of the run (Mammoth's sequential CIFAR-10 decays at epochs 35 and 45 of 50:
    ``decay_at=(0.7, 0.9)``).

    >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> schedule = step_decay(opt, 10, (0.5,), 0.1)
    >>> [round(schedule.lr_lambdas[0](s), 3) for s in (0, 4, 5, 9)]
    [1.0, 1.0, 0.1, 0.1]
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    milestones = [round(fraction * total_steps) for fraction in decay_at]

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return decay ** sum(step >= milestone for milestone in milestones)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_schedule(optimizer: torch.optim.Optimizer, config, total_steps: int, warmup_steps: int):
    """The run's learning-rate schedule (`config.schedule`: "cosine" or "step") over its steps."""
    if config.schedule == "step":
        return step_decay(optimizer, total_steps, config.lr_decay_at, config.lr_decay, warmup_steps)
    return cosine_with_warmup(optimizer, warmup_steps, total_steps, config.min_lr_ratio)
