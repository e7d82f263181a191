"""Adapters: small trainable modules run beside a frozen layer, and a mixture of them.

`Adapter` is the bottleneck adapter (Houlsby et al. 2019) in its parallel form (AdaptFormer,
Chen et al. 2022): ``scale * up(act(down(x)))``, added to the output of the layer it sits beside.
The up-projection starts at zero, so a freshly attached adapter leaves the model unchanged.

`MixtureOfAdapters` holds `num_experts` adapters and one or more routers. A router scores the
experts per sample and mixes the `top_k` best, with the noisy top-k gating of Shazeer et al.
2017 ("Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts Layer"):

    H(x) = x W_g + eps * softplus(x W_noise),  eps ~ N(0, 1), noise in training only
    G(x) = softmax(KeepTopK(H(x), k))       (the k kept weights sum to 1, the rest are 0)

Several routers over the same experts let a continual learner keep one router per task
(Yu et al. 2024, "Boosting Continual Learning of Vision-Language Models via Mixture-of-Experts
Adapters", CVPR); `active` picks the router in use, `None` switches the mixture off. Experts can
be frozen one by one, so what one task learned is kept while later tasks train the others.

The load-balancing auxiliary loss is Shazeer et al.'s, *not* Switch Transformer's f * P:

    balance = CV^2(importance) + CV^2(load),  CV^2(v) = Var(v) / Mean(v)^2

where ``importance_e`` is the sum of expert e's gate weights over the batch and ``load_e`` the
number of samples routed to it (in training with noise, its smooth estimate: the probability
under the noise that e lands in the top k, which carries a gradient). It is 0 exactly when
routing is balanced and grows as it collapses onto a few experts.

`attach_parallel` runs a module beside a child of another module through a forward hook, without
touching the child: the child's own state-dict keys stay as they were, so checkpoints of the
unadapted model still load (the adapter's weights are extra keys beside them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


class Adapter(nn.Module):
    """Bottleneck adapter ``scale * up(act(down(x)))``; starts as the zero function."""

    def __init__(
        self, width: int, bottleneck: int = 64, activation: str = "relu", scale: float = 1.0
    ):
        super().__init__()
        _positive_int(width, "adapter width")
        _positive_int(bottleneck, "adapter bottleneck")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown adapter activation {activation!r}; valid: {', '.join(ACTIVATIONS)}"
            )
        self.scale = float(scale)
        self.down = nn.Linear(width, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, width)
        # Zero up-projection (as LoRA's B): the adapted layer starts exactly as the original one,
        # and the down-projection still gets a gradient through it from the first step.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.act(self.down(x)))


class Routing(NamedTuple):
    gates: torch.Tensor  # (batch, experts): k non-zero weights per row, summing to 1
    chosen: torch.Tensor  # (batch, k): the experts each sample goes to
    load: torch.Tensor  # (experts,): samples per expert (a smooth estimate under noise)


class NoisyTopKRouter(nn.Module):
    """Shazeer et al.'s noisy top-k gating of ``x`` (batch, width) over `num_experts` experts.

    Both weight matrices start at zero (as Shazeer et al. and Yu et al. do): every expert scores
    the same, and the noise (std softplus(0) + noise_epsilon) breaks the ties at random while
    training. In evaluation mode there is no noise and the routing is deterministic.
    """

    def __init__(self, width: int, num_experts: int, top_k: int, noise_epsilon: float = 1e-2):
        super().__init__()
        _positive_int(num_experts, "num_experts")
        if not 1 <= _positive_int(top_k, "top_k") <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        if not noise_epsilon > 0:
            raise ValueError(f"noise_epsilon must be positive, got {noise_epsilon}")
        self.num_experts, self.top_k, self.noise_epsilon = num_experts, top_k, noise_epsilon
        self.gate = nn.Parameter(torch.zeros(width, num_experts))
        self.noise = nn.Parameter(torch.zeros(width, num_experts))

    def forward(self, x: torch.Tensor) -> Routing:
        clean = x @ self.gate.to(x.dtype)
        if self.training:
            std = F.softplus(x @ self.noise.to(x.dtype)) + self.noise_epsilon
            logits = clean + torch.randn_like(clean) * std
        else:
            logits = clean
        # One more than k: the (k+1)-th score is the bar an expert already in the top k must
        # stay above, for the smooth load estimate below.
        top, chosen = logits.topk(min(self.top_k + 1, self.num_experts), dim=1)
        top_k, chosen = top[:, : self.top_k], chosen[:, : self.top_k]
        weights = torch.softmax(top_k.float(), dim=1).to(x.dtype)
        gates = torch.zeros_like(logits).scatter(1, chosen, weights)
        if self.training and self.top_k < self.num_experts:
            load = self._probability_in_top_k(clean, logits, std, top).sum(0)
        else:
            load = torch.zeros_like(logits).scatter(1, chosen, 1.0).sum(0)
        return Routing(gates, chosen, load)

    def _probability_in_top_k(self, clean, noisy, std, top) -> torch.Tensor:
        """P(expert e is in the top k | the other experts' noisy scores), per sample: e's
        clean score must beat the k-th best of the others, which is the (k+1)-th best overall
        when e is in the top k now and the k-th best when it is not."""
        bar_if_in = top[:, self.top_k : self.top_k + 1]
        bar_if_out = top[:, self.top_k - 1 : self.top_k]
        bar = torch.where(noisy > bar_if_in, bar_if_in, bar_if_out)
        return torch.special.ndtr(((clean - bar) / std).float())


def cv_squared(values: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation Var(v) / Mean(v)^2 (unbiased variance); 0 for one value."""
    values = values.float()
    if values.numel() < 2:
        return values.new_zeros(())
    return values.var() / (values.mean() ** 2 + 1e-10)


def load_balancing_loss(gates: torch.Tensor, load: torch.Tensor) -> torch.Tensor:
    """Shazeer et al.'s auxiliary loss: CV^2 of the experts' importance plus CV^2 of their load."""
    return cv_squared(gates.sum(0)) + cv_squared(load)


class MixtureOfAdapters(nn.Module):
    """`num_experts` adapters mixed per sample by one of `num_routers` noisy top-k routers.

    Input and output are ``(batch, tokens, width)``. Each sample is routed once, on its first
    token (the class token of a ViT; the start token of a causal text tower, which sees no other
    token and so routes every prompt alike), and the chosen experts process all its tokens, as in
    Yu et al. 2024. Only the chosen experts run, on the samples that chose them.

    While training, each forward adds the number of samples each expert got to
    ``counts[active]``: a plain tensor, not a buffer, so it is not saved with the weights and
    DDP does not overwrite every rank's counts with rank 0's at each forward. The routing of a
    forward (what the balance loss is computed from) is what its router returns; `routings`
    collects it for a caller, so no loss is kept on the module between calls.
    """

    def __init__(
        self,
        width: int,
        num_experts: int = 4,
        top_k: int = 2,
        bottleneck: int = 64,
        num_routers: int = 1,
        activation: str = "relu",
        scale: float = 1.0,
        noise_epsilon: float = 1e-2,
    ):
        super().__init__()
        _positive_int(num_routers, "num_routers")
        self.experts = nn.ModuleList(
            Adapter(width, bottleneck, activation, scale) for _ in range(num_experts)
        )
        self.routers = nn.ModuleList(
            NoisyTopKRouter(width, num_experts, top_k, noise_epsilon) for _ in range(num_routers)
        )
        self.counts = torch.zeros(num_routers, num_experts, dtype=torch.long)
        self.active: int | None = 0
        self.frozen: set[int] = set()

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def use(self, router: int | None) -> None:
        """Route with router `router` from now on; `None` switches the mixture off (output 0)."""
        if router is not None and not 0 <= router < len(self.routers):
            raise ValueError(f"router {router} out of range for {len(self.routers)} routers")
        self.active = router

    def train_only(self, router: int) -> None:
        """Gradients into router `router` and the experts not frozen; nothing else here."""
        self.use(router)
        for index, candidate in enumerate(self.routers):
            candidate.requires_grad_(index == router)
        for index, expert in enumerate(self.experts):
            expert.requires_grad_(index not in self.frozen)

    def freeze_experts(self, experts) -> None:
        """Freeze these experts (for good, until `set_frozen` says otherwise)."""
        self.set_frozen(self.frozen | {int(e) for e in experts})

    def set_frozen(self, experts) -> None:
        """Exactly these experts are frozen (`train_only` decides whether the others train)."""
        experts = {int(e) for e in experts}
        if any(not 0 <= e < self.num_experts for e in experts):
            raise ValueError(
                f"expert indices {sorted(experts)} out of range [0, {self.num_experts})"
            )
        for index in experts:
            self.experts[index].requires_grad_(False)
        self.frozen = experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active is None:
            return torch.zeros_like(x)
        routing = self.routers[self.active](x[:, 0])
        if self.training:
            self.counts = self.counts.to(x.device)  # a plain tensor: `.to` does not move it
            self.counts[self.active] += torch.bincount(
                routing.chosen.flatten(), minlength=self.num_experts
            )
        rows, parts, unused = [], [], []
        for index, expert in enumerate(self.experts):
            chosen_by = (routing.chosen == index).any(dim=1).nonzero().flatten()
            if len(chosen_by):
                weight = routing.gates[chosen_by, index].to(x.dtype)[:, None, None]
                rows.append(chosen_by)
                parts.append((weight * expert(x[chosen_by])).to(x.dtype))
            elif torch.is_grad_enabled() and any(p.requires_grad for p in expert.parameters()):
                unused.extend(expert.parameters())
        # Every sample has exactly k shares: gather them sample by sample and add them up
        # (a gather, unlike a scatter-add, is deterministic on GPUs and cheap everywhere).
        order = torch.cat(rows).argsort(stable=True)
        output = torch.cat(parts)[order].view(len(x), routing.chosen.shape[1], *x.shape[1:])
        output = output.sum(dim=1)
        if unused:
            # Trainable experts no sample chose still join the graph (with a zero), so every
            # trainable weight gets a gradient each step, as DDP requires.
            output = output + sum(p.sum() for p in unused) * 0.0
        return output


@contextlib.contextmanager
def routings(mixtures: Iterable[MixtureOfAdapters]) -> Iterator[list[Routing]]:
    """Inside the block, the `Routing` each forward of these mixtures' routers returns, in
    call order (e.g. ``load_balancing_loss(r.gates, r.load)`` for each)."""
    seen: list[Routing] = []
    handles = [
        router.register_forward_hook(lambda module, args, output: seen.append(output))
        for mixture in mixtures
        for router in mixture.routers
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def attach_parallel(
    parent: nn.Module, child: str, adapter: nn.Module, name: str
) -> RemovableHandle:
    """Run `adapter` beside ``parent.<child>``: on the child's input, added to its output.

    The adapter becomes ``parent.<name>`` (so it is in the parent's state dict and moves with
    it), beside the child rather than inside it: wrapping the child would rename its weights
    (``mlp.c_fc.weight`` -> ``mlp.inner.c_fc.weight``) and break loading existing checkpoints,
    and a `nn.Sequential` child would run an adapter placed inside it in sequence. The returned
    handle detaches the hook (`handle.remove()`); the adapter stays registered.
    """
    if not hasattr(parent, child) or not isinstance(getattr(parent, child), nn.Module):
        raise ValueError(f"{type(parent).__name__} has no submodule {child!r}")
    if hasattr(parent, name):
        raise ValueError(f"{type(parent).__name__} already has an attribute {name!r}")
    parent.add_module(name, adapter)
    return getattr(parent, child).register_forward_hook(_ParallelHook(adapter))


class _ParallelHook:
    """``output + adapter(input)``; a small object rather than a closure, so that
    `copy.deepcopy` of the model gives the copy's hook the copy's adapter."""

    def __init__(self, adapter: nn.Module):
        self.adapter = adapter

    def __call__(self, module, args, output):
        return output + self.adapter(args[0])
