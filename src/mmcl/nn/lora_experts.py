"""A mixture of LoRA experts with a learned router per adapted layer (MoE-LoRA, as in CoIN:
Chen et al. 2024, "CoIN: A Benchmark of Continual Instruction tuNing for Multimodel Large
Language Models", NeurIPS).

peft has no router, so this is a small module applied to named `nn.Linear` layers, as a
transformation (`add_lora_experts`): each targeted layer becomes a `LoraExpertsLinear` that
keeps the original layer as ``base_layer`` and adds

    y = base(x) + alpha / r * sum_e g_e(x) B_e A_e x,      g(x) = softmax(W_g x)

per token. As in CoIN, the rank `r` is split among the experts (each has rank r / experts,
so the adapter costs what one rank-r LoRA does) and the router is a bias-free linear layer
with a dense softmax over all experts. With `top_k`, only the k largest router logits of a
token are kept and the softmax runs over them (the others weigh exactly 0, so their experts
get no gradient from that token). With one expert the layer is plain LoRA of rank r.

B starts at zero (as in LoRA and CoIN), so a fresh mixture leaves the model's outputs as they
were; A starts as peft initialises it (Kaiming-uniform; CoIN draws N(0, 0.01^2)).

>>> import torch
>>> from torch import nn
>>> from mmcl.nn.lora import LoraSpec
>>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
>>> layers = add_lora_experts(model, LoraSpec(target="", modules=["0"], r=4), experts=2)
>>> sorted(n for n, p in model.named_parameters() if p.requires_grad)
['0.lora_A', '0.lora_B', '0.lora_router.weight']
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmcl.nn.lora import LORA_KEY, LoraSpec, _part


class LoraExpertsLinear(nn.Module):
    """`base` plus `experts` LoRA experts of rank ``r // experts`` mixed per token by a router.

    Parameters: ``lora_A`` ``(experts, rank, in)``, ``lora_B`` ``(experts, out, rank)``,
    ``lora_router`` (a bias-free ``Linear(in, experts)``)."""

    def __init__(
        self,
        base: nn.Linear,
        experts: int,
        r: int,
        alpha: float,
        top_k: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        if experts < 1 or r < experts or r % experts:
            raise ValueError(
                f"LoRA experts: the rank r={r} is split among {experts} experts, so it must be "
                f"a multiple of the number of experts (as in CoIN)"
            )
        if top_k is not None and not 1 <= top_k <= experts:
            raise ValueError(f"LoRA experts: top_k must be in 1..{experts}, got {top_k}")
        self.base_layer = base
        self.experts, self.r, self.scaling = experts, r, alpha / r
        self.top_k = None if top_k is None or top_k == experts else top_k
        rank = r // experts
        weight = base.weight
        a = torch.empty(experts, rank, base.in_features, device=weight.device, dtype=weight.dtype)
        for expert in a:  # each expert as peft initialises one LoRA A
            nn.init.kaiming_uniform_(expert, a=math.sqrt(5))
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(weight.new_zeros(experts, base.out_features, rank))
        self.lora_router = nn.Linear(
            base.in_features, experts, bias=False, device=weight.device, dtype=weight.dtype
        )
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """The router's weights ``(..., experts)`` for tokens `x` ``(..., in)``; each row sums
        to 1, with at most `top_k` non-zero entries."""
        logits = self.lora_router(x).float()
        if self.top_k is not None:
            kept = logits.topk(self.top_k, dim=-1).indices
            mask = torch.full_like(logits, float("-inf")).scatter(-1, kept, 0.0)
            logits = logits + mask
        return logits.softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        gates = self.gates(x).to(x.dtype)
        # (..., in) -> per expert (..., experts, rank), weighted, -> (..., out)
        low = torch.einsum("...i,eri->...er", self.lora_dropout(x), self.lora_A)
        delta = torch.einsum("...er,eor->...o", low * gates.unsqueeze(-1), self.lora_B)
        return result + delta * self.scaling

    def extra_repr(self) -> str:
        return f"experts={self.experts}, r={self.r}, top_k={self.top_k}"


def add_lora_experts(
    model: nn.Module,
    spec: LoraSpec,
    experts: int,
    top_k: int | None = None,
    source: str = "moe_lora",
) -> dict[str, LoraExpertsLinear]:
    """Replace the linear layers of `model`'s `spec.target` named by `spec.modules` (a name
    or a name's last dotted parts, as peft matches them) with `LoraExpertsLinear`s, in place.
    That part's own weights are frozen; only the ``lora_`` tensors train. Returns the new
    layers by their names within the model."""
    part = _part(model, spec.target, source)
    if any(isinstance(m, LoraExpertsLinear) for m in part.modules()):
        raise ValueError(f"{source}: {spec.target or 'the model'} already has LoRA experts")
    chosen = [
        (name, module)
        for name, module in part.named_modules()
        if isinstance(module, nn.Linear) and _matches(name, spec.modules)
    ]
    if not chosen:
        linears = sorted(
            {n.rsplit(".", 1)[-1] for n, m in part.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ValueError(
            f"{source}: LoRA modules {spec.modules} match nothing in "
            f"{spec.target or 'the model'}; its linear layers are named {linears}"
        )
    part.requires_grad_(False)
    prefix = f"{spec.target}." if spec.target else ""
    layers = {}
    for name, linear in chosen:
        layer = LoraExpertsLinear(linear, experts, int(spec.r), spec.alpha, top_k, spec.dropout)
        parent_name, _, child = name.rpartition(".")
        setattr(part.get_submodule(parent_name) if parent_name else part, child, layer)
        layers[prefix + name] = layer
    for name, parameter in part.named_parameters():
        parameter.requires_grad_(LORA_KEY in name)
    return layers


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == target or name.endswith("." + target) for target in targets)


__all__ = ["LoraExpertsLinear", "add_lora_experts"]
