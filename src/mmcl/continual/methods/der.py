"""Dark Experience Replay: DER and DER++ (Buzzega et al. 2020, "Dark Experience for General
Continual Learning: a Strong, Simple Baseline").

A reservoir buffer of past training items keeps, with each item, the logits the model gave it.
Every training step draws a minibatch of stored items and pulls the model's logits on them
towards the stored ones; DER++ also draws a second minibatch and trains on its labels:

    der   = alpha * mean squared difference of logits   (over the stored classes)
    der++ = der + beta * cross-entropy on the second minibatch's labels

`alpha` and `beta` default to the published sequential CIFAR-10 setting for a 500-item buffer
(alpha 0.2, beta 0.5 for DER++; `beta=0` is DER, published with alpha 0.3).

Differences from the paper, both forced by references instead of stored images:
* The buffer is `ReservoirBuffer` (the one ER uses): references ``(task, index, label)``, filled
  at the end of each task with that task's items, not step by step. Reservoir sampling gives
  each item the same chance of being kept either way.
* So the logits are those of the model at the end of the task that brought the item in
  (eval mode, the item's seeded augmentation), not those of the step that saw it; the paper
  samples them along the optimisation path.
Logits cover the classes the task was trained over (`run.training_space`); a later task's
logits cover more classes, and the difference is taken over the stored ones only. A plain
classifier's logits are its head's columns, a CLIP model's are logit_scale x cosine to its
prompts (the objective of the task).

Minibatches are drawn without replacement from a generator seeded by the run's seed, the rank,
the task and the step, so a resumed run draws the same items; their augmentation is seeded per
item and step in the same way.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn import functional as F

from mmcl.continual.heads import classification_objective
from mmcl.continual.methods.base import Method
from mmcl.continual.methods.replay import ReplayItems, ReservoirBuffer
from mmcl.train import distributed
from mmcl.train.sampler import SeededItems


class DarkExperienceReplay(Method):
    name = "der"
    mixes_past_data = True

    def __init__(
        self,
        buffer_size: int = 500,
        alpha: float = 0.3,
        beta: float = 0.0,
        minibatch_size: int | None = None,
    ):
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(
                f"{self.name}: buffer_size must be an integer >= 1, got {buffer_size!r}"
            )
        for key, value in (("alpha", alpha), ("beta", beta)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{self.name}: {key} must be a finite number >= 0, got {value!r}")
        if minibatch_size is not None and (
            isinstance(minibatch_size, bool) or not isinstance(minibatch_size, int)
        ):
            raise ValueError(
                f"{self.name}: minibatch_size must be an integer, got {minibatch_size!r}"
            )
        if minibatch_size is not None and minibatch_size < 1:
            raise ValueError(
                f"{self.name}: minibatch_size must be at least 1, got {minibatch_size}"
            )
        self.buffer_size = buffer_size
        self.alpha, self.beta = float(alpha), float(beta)
        self.minibatch_size = minibatch_size
        self.buffer = ReservoirBuffer(buffer_size)
        self.logits: dict[tuple[int, int], torch.Tensor] = {}  # (task, index) -> stored logits
        self.calls = 0  # replay draws made in the current task
        self._objective = None
        self._run = None

    def setup(self, model, run) -> None:
        self.buffer = ReservoirBuffer(self.buffer_size, seed=run.config.seed)
        self.logits = {}
        self._classes = 1 + max(run.training_space(len(run.scenario) - 1).labels)

    def before_task(self, task, model, run) -> None:
        self.calls = 0
        self._run = run
        self._objective = classification_objective(model, run.training_space(task.index))
        self._space_labels = torch.tensor(run.training_space(task.index).labels)

    def extra_losses(self, model, batch, outputs) -> dict[str, torch.Tensor]:
        if not len(self.buffer):
            return {}
        device = batch[0].device
        size = self.minibatch_size or len(batch[0])
        images, labels, stored = self._draw(size, device)
        _, replayed = self._objective(model, images, labels)
        current = replayed["logits"].float().new_zeros(len(images), self._classes)
        current = current.index_copy(1, self._space_labels.to(device), replayed["logits"].float())
        known = ~torch.isnan(stored)
        terms = {"der": self.alpha * F.mse_loss(current[known], stored[known])}
        if self.beta > 0:
            images, labels, _ = self._draw(size, device)
            classification, _ = self._objective(model, images, labels)
            terms["der++"] = self.beta * classification["classification"]
        return terms

    def _draw(self, size: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        run = self._run
        seed = (
            run.config.seed * 1_000_003 + distributed.rank() * 7_919 + run.task_index
        ) * 1_000_003
        generator = torch.Generator().manual_seed((seed + self.calls) % 2**63)
        picks = torch.randperm(len(self.buffer), generator=generator)[:size].tolist()
        items = [self.buffer.items[k] for k in picks]
        data = SeededItems(
            ReplayItems(run, [(t, i) for t, i, _ in items], [y for _, _, y in items]),
            run.config.seed,
        )
        images = torch.stack([data[(self.calls, k)][0] for k in range(len(items))])
        self.calls += 1
        labels = torch.tensor([y for _, _, y in items], device=device)
        stored = torch.stack([self.logits[(t, i)] for t, i, _ in items]).to(device)
        return images.to(device), labels, stored

    @torch.no_grad()
    def after_task(self, task, model, run) -> None:
        labels = run.stream_data(task.index).targets
        self.buffer.add((task.index, index, label) for index, label in enumerate(labels))
        kept = {(t, i): y for t, i, y in self.buffer.items}
        self.logits = {key: value for key, value in self.logits.items() if key in kept}
        new = [key for key in kept if key not in self.logits]
        if not new:
            return
        space = run.training_space(task.index)
        objective = classification_objective(model, space)
        data = SeededItems(ReplayItems(run, new, [kept[key] for key in new]), run.config.seed)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(new), run.config.batch_size):
                chunk = range(start, min(start + run.config.batch_size, len(new)))
                items = [data[(task.index, k)] for k in chunk]
                images = torch.stack([image for image, _ in items]).to(device)
                targets = torch.tensor([label for _, label in items], device=device)
                _, outputs = objective(model, images, targets)
                for k, row in zip(chunk, outputs["logits"].float().cpu(), strict=True):
                    stored = torch.full((self._classes,), math.nan)
                    stored[torch.tensor(space.labels)] = row
                    self.logits[new[k]] = stored
        finally:
            model.train(was_training)

    def state_dict(self) -> dict[str, Any]:
        keys = list(self.logits)
        return {
            "buffer": self.buffer.state_dict(),
            "keys": torch.tensor(keys, dtype=torch.long).reshape(-1, 2),
            "logits": torch.stack([self.logits[k] for k in keys]) if keys else torch.zeros(0),
            "calls": self.calls,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "buffer" not in state:
            return
        self.buffer.load_state_dict(state["buffer"])
        keys = [tuple(k) for k in state["keys"].tolist()]
        self.logits = {key: row.float() for key, row in zip(keys, state["logits"], strict=False)}
        self.calls = int(state.get("calls", 0))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(buffer_size={self.buffer_size}, alpha={self.alpha}, "
            f"beta={self.beta}, minibatch_size={self.minibatch_size})"
        )


class DarkExperienceReplayPlusPlus(DarkExperienceReplay):
    """DER++: DER plus cross-entropy on a second minibatch of stored items' labels."""

    name = "derpp"

    def __init__(
        self,
        buffer_size: int = 500,
        alpha: float = 0.2,
        beta: float = 0.5,
        minibatch_size: int | None = None,
    ):
        super().__init__(buffer_size, alpha, beta, minibatch_size)
