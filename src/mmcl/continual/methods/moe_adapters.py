"""MoE-Adapters (Yu et al. 2024, "Boosting Continual Learning of Vision-Language Models via
Mixture-of-Experts Adapters", CVPR): a frozen CLIP, a mixture of adapters beside its MLPs, one
router per task, and an auto-selector that sends each test image to the router of the task it
looks like, or to the untouched zero-shot model.

Training. The whole CLIP is frozen. Beside the MLP of each chosen transformer block (the last
`layers` blocks of each tower in `towers`, all by default) sits a `MixtureOfAdapters`:
`num_experts` bottleneck adapters shared by all tasks, mixed per sample by a noisy top-k router
(Shazeer et al. 2017) of which there is one per task, created up front. The block computes

    x + mlp(ln_2(x)) + sum_{e in top-k} g_e(x) * adapter_e(ln_2(x))

(the adapters read the MLP's normalised input; routing looks at its first token). Task t trains
only router t and the experts not frozen yet, with the classification loss plus
`balance_weight` x the load-balancing loss (CV^2 of importance and load, averaged over layers;
see `mmcl.nn.adapters`). While it trains, every layer counts how many samples each expert got;
afterwards each layer freezes its `frozen_per_task` (default `top_k`) most used experts, so
what task t relied on most is kept for good and later tasks reuse it through their own routers
without changing it (the paper's activate-freeze strategy). So that every task still finds
experts to train, `num_experts` defaults to `frozen_per_task` x the number of tasks (the
authors' code: 22 experts, top-2, for the 11 tasks of MTIL); fewer are allowed, with a warning
that the last tasks will train only their routers.

Text side: both towers carry adapters (as in the paper), and task t's router is used in both,
so the class prompts are embedded under the same router as the image. (In a causal text tower
the first token sees only itself, so the text routers learn one fixed mixture per task.)

Inference: the Distribution-Discriminative Auto-Selector (DDAS). After task t a small
autoencoder (features -> ReLU code of dim/4 -> features) is fitted for `selector_steps` Adam
steps to the features of (up to `selector_samples` of) the task's training images under the
*frozen* model (adapters off), and its threshold set to the `selector_quantile` quantile of its
reconstruction errors on a held-out fifth of them (on the images it was fitted to, the errors
are too small to judge new images of the same task by). A test image is scored by every task's
autoencoder as error / threshold; the lowest score picks the task whose router embeds the image
and the class prompts, and when even the lowest exceeds 1 (no task recognises the image) the
image is classified by the zero-shot model, which keeps CLIP's zero-shot ability on data unlike
any task. (The authors' code fits its autoencoders to AlexNet features and compares errors with
one global threshold; frozen-CLIP features and per-task quantiles need no second network and no
hand-tuned constant.)

Weights of adapters and routers are extra keys of the model's state dict (the original keys are
unchanged, see `mmcl.nn.adapters.attach_parallel`); the method's own state holds the routing
counts, the frozen experts and the selector. Gradient checkpointing re-runs the blocks during
the backward pass, which counts every sample twice: that leaves which experts are used most, and
so what is frozen, unchanged.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from mmcl.continual import classes
from mmcl.continual.methods.auto_selector import AutoSelector
from mmcl.continual.methods.base import Method
from mmcl.nn.adapters import MixtureOfAdapters, attach_parallel, load_balancing_loss, routings
from mmcl.train import distributed

TOWERS = ("visual", "text")
ADAPTER_NAME = "moe_adapter"  # each adapted block's new submodule: <block>.moe_adapter.*
FEATURE_BATCH = 256


class MoEAdapters(Method):
    name = "moe_adapters"
    needs_text_tower = True

    def __init__(
        self,
        num_experts: int | None = None,
        top_k: int = 2,
        bottleneck: int = 64,
        layers: int | None = None,
        towers: str | Sequence[str] = TOWERS,
        adapter_scale: float = 0.1,
        balance_weight: float = 0.01,
        frozen_per_task: int | None = None,
        selector_steps: int = 300,
        selector_quantile: float = 0.95,
        selector_samples: int = 1024,
    ):
        for what, value in (
            ("adapter_scale", adapter_scale),
            ("balance_weight", balance_weight),
            ("selector_quantile", selector_quantile),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"moe_adapters: {what} must be a number, got {value!r}")
        for what, value in (
            ("top_k", top_k),
            ("bottleneck", bottleneck),
            ("selector_samples", selector_samples),
        ):
            _check_int(value, what, minimum=1)
        if num_experts is not None:
            _check_int(num_experts, "num_experts", minimum=1)
            if top_k > num_experts:
                raise ValueError(
                    f"moe_adapters: top_k ({top_k}) exceeds num_experts ({num_experts})"
                )
        if layers is not None:
            _check_int(layers, "layers", minimum=1)
        towers = (towers,) if isinstance(towers, str) else tuple(towers)
        if not towers or any(t not in TOWERS for t in towers) or len(set(towers)) < len(towers):
            raise ValueError(
                f"moe_adapters: towers must be one or both of {TOWERS} (each once), got {towers}"
            )
        if not (math.isfinite(adapter_scale) and adapter_scale > 0):
            raise ValueError(f"moe_adapters: adapter_scale must be positive, got {adapter_scale}")
        if not (math.isfinite(balance_weight) and balance_weight >= 0):
            raise ValueError(f"moe_adapters: balance_weight must be >= 0, got {balance_weight}")
        frozen_per_task = top_k if frozen_per_task is None else frozen_per_task
        _check_int(frozen_per_task, "frozen_per_task", minimum=0)
        if num_experts is not None and frozen_per_task > num_experts:
            raise ValueError(
                f"moe_adapters: frozen_per_task ({frozen_per_task}) exceeds num_experts "
                f"({num_experts})"
            )
        _check_int(selector_steps, "selector_steps", minimum=0)
        if not 0.0 < selector_quantile <= 1.0:
            raise ValueError(
                f"moe_adapters: selector_quantile must be in (0, 1], got {selector_quantile}"
            )
        self.requested_experts = num_experts  # None: sized to the stream in `setup`
        self.num_experts, self.top_k, self.bottleneck = num_experts, top_k, bottleneck
        self.layers, self.towers = layers, towers
        self.adapter_scale, self.balance_weight = adapter_scale, balance_weight
        self.frozen_per_task = frozen_per_task
        self.selector = AutoSelector(selector_steps, selector_quantile)
        self.selector_samples = selector_samples
        self.mixtures: dict[str, MixtureOfAdapters] = {}  # block name -> its mixture
        self._pending: dict | None = None  # state loaded before setup
        self._classifiers: dict[tuple, torch.Tensor] = {}

    # --- hooks ---------------------------------------------------------------------------------

    def setup(self, model, run) -> None:
        if any(isinstance(m, MixtureOfAdapters) for m in model.modules()):
            raise ValueError("moe_adapters: the model already carries mixture-of-adapters layers")
        self.num_experts = self._experts_for(len(run.scenario))
        model.requires_grad_(False)  # the whole CLIP stays as it is; only adapters train
        reference = next(model.parameters())
        self.mixtures = {}
        for tower_name in self.towers:
            blocks = _blocks(model, tower_name)
            count = len(blocks) if self.layers is None else self.layers
            if count > len(blocks):
                raise ValueError(
                    f"moe_adapters: layers={count} but the {tower_name} tower has "
                    f"{len(blocks)} blocks"
                )
            # The routers read token 0 of every block, the last one too: run all its tokens.
            getattr(model, tower_name).transformer.pooled_last_block = False
            for index in range(len(blocks) - count, len(blocks)):
                block = blocks[index]
                mixture = MixtureOfAdapters(
                    block.mlp.c_fc.in_features,
                    self.num_experts,
                    self.top_k,
                    self.bottleneck,
                    num_routers=len(run.scenario),  # one router per task, known up front
                    scale=self.adapter_scale,
                ).to(device=reference.device, dtype=reference.dtype)
                mixture.requires_grad_(False)
                mixture.use(None)  # the zero-shot model until a task starts
                attach_parallel(block, "mlp", mixture, ADAPTER_NAME)
                self.mixtures[f"{tower_name}.transformer.resblocks.{index}"] = mixture
        self._forget_classifiers(keep_zero_shot=False)
        if self._pending is not None:
            state, self._pending = self._pending, None
            self.load_state_dict(state)

    def before_task(self, task, model, run) -> None:
        for mixture in self.mixtures.values():
            mixture.train_only(task.index)
            # Counted afresh; a task resumed mid-way gets its counts back from the engine's
            # checkpoint, which holds the method's state.
            mixture.counts[task.index].zero_()
        self._forget_classifiers(keep_zero_shot=True)

    # The balance loss is computed from what the routers return during these two calls (the
    # objective's image and class features), never kept on a module between calls.
    def image_features(self, model, images):
        mixtures = self._tower_mixtures("visual")
        if not mixtures:
            return None
        with routings(mixtures) as seen:
            features = model.encode_image(images, normalize=True)
        return features, self._balance("moe_balance", mixtures, seen)

    def class_features(self, model, space):
        mixtures = self._tower_mixtures("text")
        if not mixtures:
            return None
        with routings(mixtures) as seen:
            features = classes.prompt_features(model, space)
        return features, self._balance("moe_balance_text", mixtures, seen)

    def after_task(self, task, model, run) -> None:
        for mixture in self.mixtures.values():
            counts = mixture.counts[task.index]
            if distributed.is_distributed():  # every rank routed its own share of the data
                torch.distributed.all_reduce(counts)
            used = counts.nonzero().flatten()
            most = used[counts[used].argsort(descending=True, stable=True)]
            mixture.freeze_experts(most[: self.frozen_per_task].tolist())
            mixture.requires_grad_(False)
            mixture.use(None)
        seed = 1_000_003 * run.config.seed + task.index
        features = self._task_features(model, run.stream_data(task.index), seed)
        self.selector.fit(task.index, features, seed)
        self._forget_classifiers(keep_zero_shot=True)

    @torch.no_grad()
    def predict(self, model, images, space, run):
        if not self.mixtures:
            return None
        was_training = model.training
        model.eval()
        try:
            zero_shot = self._features(model, images, None)
            choice = self.selector.choose(zero_shot)
            logits = zero_shot.new_empty(len(images), len(space))
            for task in choice.unique().tolist():
                rows = (choice == task).nonzero().flatten()
                task = None if task < 0 else task
                features = (
                    zero_shot[rows] if task is None else self._features(model, images[rows], task)
                )
                logits[rows] = features @ self._classifier(model, space, task)
        finally:
            model.train(was_training)
        return logits

    def state_dict(self) -> dict:
        if not self.mixtures and self._pending is not None:
            return self._pending  # loaded but not yet applied (no setup yet)
        return {
            "counts": {n: m.counts.detach().cpu().clone() for n, m in self.mixtures.items()},
            "frozen": {n: sorted(m.frozen) for n, m in self.mixtures.items()},
            "selector": self.selector.state_dict(),
        }

    def load_state_dict(self, state) -> None:
        if not state:
            return
        if not self.mixtures:  # before setup: applied once the adapters exist
            self._pending = state
            return
        if set(state["counts"]) != set(self.mixtures):
            raise ValueError(
                f"moe_adapters: the saved state adapts blocks {sorted(state['counts'])}, this "
                f"model {sorted(self.mixtures)}"
            )
        for name, mixture in self.mixtures.items():
            mixture.counts.copy_(state["counts"][name])
            mixture.set_frozen(state["frozen"][name])
        self.selector.load_state_dict(state["selector"])
        self._forget_classifiers(keep_zero_shot=False)

    def __repr__(self) -> str:
        return (
            f"MoEAdapters(num_experts={self.num_experts}, top_k={self.top_k}, "
            f"bottleneck={self.bottleneck}, layers={self.layers}, towers={self.towers})"
        )

    # --- helpers -------------------------------------------------------------------------------

    def _experts_for(self, tasks: int) -> int:
        """The experts per layer: as requested, or enough for every task to train its own."""
        if self.requested_experts is None:
            return max(self.top_k, self.frozen_per_task * tasks)
        experts = self.requested_experts
        left = experts - self.frozen_per_task * (tasks - 1)  # free when the last task starts
        if left < self.top_k:
            first = next(t for t in range(tasks) if experts - self.frozen_per_task * t < self.top_k)
            warnings.warn(
                f"moe_adapters: {experts} experts with {self.frozen_per_task} frozen per task "
                f"leave fewer than top_k={self.top_k} trainable experts from task {first + 1} "
                f"of {tasks} on (those tasks train mostly their routers); leave num_experts "
                f"unset for {self.frozen_per_task * tasks}",
                stacklevel=3,
            )
        return experts

    def _tower_mixtures(self, tower: str) -> list[MixtureOfAdapters]:
        return [m for name, m in self.mixtures.items() if name.startswith(f"{tower}.")]

    def _balance(self, key: str, mixtures, seen) -> dict[str, torch.Tensor]:
        """One tower's share of the balance loss: weight x the sum of its layers' losses over
        the number of adapted layers in both towers, so that the towers' shares add up to
        weight x the mean over every layer. Nothing outside training or at weight 0."""
        if not seen or self.balance_weight == 0 or not any(m.training for m in mixtures):
            return {}
        losses = torch.stack([load_balancing_loss(r.gates, r.load) for r in seen])
        return {key: self.balance_weight * losses.sum() / len(self.mixtures)}

    @contextlib.contextmanager
    def _routing(self, task: int | None):
        """Every mixture routes with task `task`'s router (`None`: adapters off) inside."""
        previous = {name: m.active for name, m in self.mixtures.items()}
        for mixture in self.mixtures.values():
            mixture.use(task)
        try:
            yield
        finally:
            for name, mixture in self.mixtures.items():
                mixture.use(previous[name])

    def _features(self, model, images, task: int | None) -> torch.Tensor:
        with self._routing(task):
            return model.encode_image(images, normalize=True).float()

    def _classifier(self, model, space, task: int | None) -> torch.Tensor:
        # Embedding every class prompt is costly and the model does not change while a task's
        # test set is evaluated batch by batch: keep the weights until the next task trains
        # (and the zero-shot ones for good: the frozen model never changes).
        key = (task, tuple(space.names), tuple(space.labels), tuple(map(tuple, space.templates)))
        if key not in self._classifiers:
            with self._routing(task):
                self._classifiers[key] = space.classifier(model).float()
        return self._classifiers[key]

    def _forget_classifiers(self, keep_zero_shot: bool) -> None:
        for key in list(self._classifiers):
            if not (keep_zero_shot and key[0] is None):
                del self._classifiers[key]

    @torch.no_grad()
    def _task_features(self, model, data, seed: int) -> torch.Tensor:
        """Frozen-model features of up to `selector_samples` of the task's training images."""
        generator = torch.Generator().manual_seed(seed)
        picks = torch.randperm(len(data), generator=generator)[: self.selector_samples]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            chunks = [
                self._features(model, images.to(device), None)
                for images, _ in DataLoader(Subset(data, picks.tolist()), batch_size=FEATURE_BATCH)
            ]
        finally:
            model.train(was_training)
        return torch.cat(chunks)


def _blocks(model, tower_name: str) -> list[nn.Module]:
    tower = getattr(model, tower_name, None)
    transformer = getattr(tower, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    if blocks is None or not all(hasattr(b, "mlp") for b in blocks):
        raise ValueError(
            f"moe_adapters: the {tower_name} tower has no transformer blocks with an MLP "
            f"(a ResNet image tower?); choose towers={tuple(t for t in TOWERS if t != tower_name)}"
        )
    return list(blocks)


def _check_int(value, what: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"moe_adapters: {what} must be an integer >= {minimum}, got {value!r}")
