"""One LoRA per task on a part of a model, through peft's named adapters: add them all up
front, choose which ones compute (and which one trains), and O-LoRA's orthogonality loss.

Every adapted `nn.Linear` becomes one peft LoRA layer holding one adapter per task
(``lora_A.task_3.weight``...). With several adapters active, peft adds all their deltas:

    y = W x + sum_{t active} alpha / r * B_t A_t x

which is O-LoRA's model (all tasks so far) and, with one active adapter, the per-task LoRA
of a task selector. With none active the part computes as the base model.

>>> import torch
>>> from torch import nn
>>> from mmcl.nn.lora import LoraSpec
>>> model = nn.Sequential(nn.Linear(4, 4))
>>> names = add_task_loras(model, LoraSpec(target="", modules=["0"], r=2), tasks=2)
>>> names
['task_0', 'task_1']
>>> use_task_loras(model, ["task_0", "task_1"], train="task_1")
>>> sorted(n for n, p in model.named_parameters() if p.requires_grad)
['0.lora_A.task_1.weight', '0.lora_B.task_1.weight']
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from mmcl.nn.lora import LoraSpec, _part, add_lora, lora_layers


def task_adapter(index: int) -> str:
    return f"task_{index}"


def add_task_loras(model: nn.Module, spec: LoraSpec, tasks: int, source: str = "lora") -> list:
    """Add `tasks` LoRA adapters (``task_0``...) to `spec.target`'s layers named by
    `spec.modules`; none computes until `use_task_loras` says so. Returns their names."""
    if lora_layers(_part(model, spec.target, source)):
        raise ValueError(f"{source}: {spec.target or 'the model'} already carries LoRA layers")
    names = [task_adapter(index) for index in range(tasks)]
    with warnings.catch_warnings():  # peft's note that a second adapter joins the first
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        for name in names:
            add_lora(model, spec, source, adapter_name=name)
    use_task_loras(model, [])
    return names


def use_task_loras(model: nn.Module, active: Sequence[str], train: str | None = None) -> None:
    """Adapters `active` compute (their deltas add up; none: the base model); only `train`'s
    tensors take gradients (None: no adapter trains)."""
    for _, layer in lora_layers(model):
        if active:
            layer.enable_adapters(True)
            layer.set_adapter(list(active))
        else:
            layer.enable_adapters(False)
        # peft's set_adapter makes every active adapter trainable: say exactly which one is.
        for name, parameter in layer.named_parameters():
            if ".lora_" in f".{name}":
                parameter.requires_grad_(train is not None and f".{train}." in f".{name}")


def active_task_loras(model: nn.Module) -> tuple[list[str], str | None]:
    """What `use_task_loras` was last given: the active adapters and the trained one."""
    layers = lora_layers(model)
    if not layers:
        return [], None
    layer = layers[0][1]
    active = [] if layer.disable_adapters else list(layer.active_adapters)
    trained = {
        name.split(".")[1]
        for name, p in layer.named_parameters()
        if p.requires_grad and name.startswith("lora_")
    }
    return active, (trained.pop() if len(trained) == 1 else None)


@contextlib.contextmanager
def task_loras(model: nn.Module, active: Sequence[str]):
    """Inside: the adapters `active` compute, none trains; afterwards, as before."""
    before = active_task_loras(model)
    use_task_loras(model, active)
    try:
        yield
    finally:
        use_task_loras(model, *before)


def adapter_matrices(model: nn.Module, adapter: str) -> dict[str, tuple]:
    """Each LoRA layer's ``(A, B)`` of `adapter`, by layer name."""
    return {
        name: (layer.lora_A[adapter].weight, layer.lora_B[adapter].weight)
        for name, layer in lora_layers(model)
        if adapter in layer.lora_A
    }


def orthogonality(new_a: torch.Tensor, old_as: Sequence[torch.Tensor]) -> torch.Tensor:
    """O-LoRA's L_orth for one layer: the sum of the absolute entries of ``A_old A_new^T``
    over the earlier tasks' A's (each ``(r, in)``), as the authors' code computes it."""
    total = new_a.new_zeros(())
    for old_a in old_as:
        total = total + (old_a @ new_a.T).abs().sum()
    return total


def orthogonality_loss(model: nn.Module, new: str, old: Sequence[str]) -> torch.Tensor:
    """`orthogonality` summed over every LoRA layer of `model`, adapter `new` against `old`."""
    layers = lora_layers(model)
    terms = [
        orthogonality(layer.lora_A[new].weight, [layer.lora_A[o].weight for o in old])
        for _, layer in layers
    ]
    return torch.stack(terms).sum()


def l2_loss(model: nn.Module, adapter: str) -> torch.Tensor:
    """O-LoRA's L2 term: the (unsquared) Frobenius norms of `adapter`'s A's and B's, summed."""
    norms = [
        matrix.norm() for a, b in adapter_matrices(model, adapter).values() for matrix in (a, b)
    ]
    return torch.stack(norms).sum()


__all__ = [
    "active_task_loras",
    "add_task_loras",
    "l2_loss",
    "orthogonality",
    "orthogonality_loss",
    "task_adapter",
    "task_loras",
    "use_task_loras",
]
