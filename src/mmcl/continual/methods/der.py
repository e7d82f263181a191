"""Dark Experience Replay: DER and DER++ (Buzzega et al. 2020, "Dark Experience for General
Continual Learning: a Strong, Simple Baseline").

A reservoir buffer of past training items keeps, with each item, the logits the model gave it.
Every training step draws a minibatch of stored items and pulls the model's logits on them
towards the stored ones; DER++ also draws a second minibatch and trains on its labels:

    der   = alpha * mean squared difference of logits   (over the stored classes)
    der++ = der + beta * cross-entropy on the second minibatch's labels

`alpha` and `beta` default to the published sequential CIFAR-10 setting for a 500-item buffer
(alpha 0.2, beta 0.5 for DER++; `beta=0` is DER, published with alpha 0.3).

As in the paper, the buffer is filled along training: after each step's losses, every item of
the batch is offered to a reservoir (`ReservoirBuffer`, the one ER uses) together with the
logits the model gave it in that step (train mode, that step's augmentation). An item is offered
again in every epoch, so, as in the authors' code, it can be stored twice with the logits of
two moments. What is stored is a reference ``(task, index, label)`` to the stream data, never the
image; a replayed item is loaded again with a fresh (seeded) augmentation, as the paper does
with its stored un-augmented inputs. Under `torchrun` the ranks gather each step's references
and logits and offer them in rank order, so every rank's buffer stays the same.

Logits: a plain classifier's are all its head's columns (the paper's), a CLIP model's are
logit_scale x cosine to the prompts of the classes the task trains over (`run.training_space`)
and NaN for other classes; the mean squared difference is taken over the stored (non-NaN)
columns. Where mmcl differs from the authors' Mammoth code: its Class-IL cross-entropy covers
every output of the head, mmcl's covers the classes seen so far.

Minibatches are drawn without replacement from a generator seeded by the run's seed, the rank,
the task and the step, so a resumed run draws the same items; their augmentation is seeded per
item and step in the same way.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn import functional as F

from mmcl.continual.heads import classification_objective, is_classifier
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
        self.logits = torch.zeros(0, 0)  # row k: the logits stored with buffer slot k
        self.calls = 0  # replay draws made in the current task
        self._objective = None
        self._run = None

    def setup(self, model, run) -> None:
        self.buffer = ReservoirBuffer(self.buffer_size, seed=run.config.seed)
        stream_classes = 1 + max(run.training_space(len(run.scenario) - 1).labels)
        head = getattr(getattr(model, "module", model), "head", None)
        self._classes = max(stream_classes, head.out_features if is_classifier(model) else 0)
        self.logits = torch.full((self.buffer_size, self._classes), math.nan)

    def before_task(self, task, model, run) -> None:
        self.calls = 0
        self._run = run
        self._task = task.index
        space = run.training_space(task.index)
        self._objective = classification_objective(model, space, run.method)
        self._space_labels = torch.tensor(run.training_space(task.index).labels)

    def extra_losses(self, model, batch, outputs) -> dict[str, torch.Tensor]:
        terms = {}
        if len(self.buffer):  # replay first: the paper draws before storing the new batch
            size = self.minibatch_size or len(batch[0])
            images, labels, stored = self._draw(size, batch[0].device)
            _, replayed = self._objective(model, images, labels)
            current = self._full_logits(replayed)
            known = ~torch.isnan(stored)
            terms["der"] = self.alpha * F.mse_loss(current[known], stored[known])
            if self.beta > 0:
                images, labels, _ = self._draw(size, batch[0].device)
                classification, _ = self._objective(model, images, labels)
                terms["der++"] = self.beta * classification["classification"]
        self._store(batch, outputs)
        return terms

    def _full_logits(self, outputs) -> torch.Tensor:
        """One row per item over every class, NaN where the objective gave no logit."""
        if "all_logits" in outputs:  # a plain classifier: the whole head
            return outputs["all_logits"].float()
        logits = outputs["logits"].float()
        full = logits.new_full((len(logits), self._classes), math.nan)
        return full.index_copy(1, self._space_labels.to(logits.device), logits)

    @torch.no_grad()
    def _store(self, batch, outputs) -> None:
        if len(batch) < 3 or batch[2] is None:
            raise ValueError(
                f"{self.name} stores each trained item with its logits, so it needs the items' "
                "indices in the batch: train from a map-style data set, not a stream"
            )
        indices = batch[2].to(torch.long).cpu()
        labels = torch.as_tensor(batch[1]).to(torch.long).cpu()
        logits = self._full_logits(outputs).detach().cpu()
        indices, labels, logits = _gather_in_rank_order(indices, labels, logits)
        references = zip(indices.tolist(), labels.tolist(), strict=True)
        slots = self.buffer.add((self._task, index, label) for index, label in references)
        for row, slot in enumerate(slots):
            if slot >= 0:  # a later item of this batch may overwrite the same slot: in order
                self.logits[slot] = logits[row]

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
        stored = self.logits[torch.tensor(picks)].to(device)
        return images.to(device), labels, stored

    def state_dict(self) -> dict[str, Any]:
        return {
            "buffer": self.buffer.state_dict(),
            "logits": self.logits[: len(self.buffer)].clone(),
            "calls": self.calls,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "buffer" not in state:
            return
        if "keys" in state:
            raise ValueError(
                f"{self.name}: this checkpoint stores logits per item at the end of each task "
                "(mmcl before step-wise recording); it cannot resume a step-wise run"
            )
        self.buffer.load_state_dict(state["buffer"])
        stored = state["logits"].float()
        if stored.shape[0] != len(self.buffer) or stored.shape[1] != self.logits.shape[1]:
            raise ValueError(
                f"{self.name}: the checkpoint holds logits of shape {tuple(stored.shape)} for "
                f"{len(self.buffer)} buffer items over {self.logits.shape[1]} classes"
            )
        self.logits[: len(stored)] = stored
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


def _gather_in_rank_order(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every rank's rows of each tensor, concatenated in rank order (as is, in one process).

    Ranks may hold different numbers of rows (unreadable items dropped), so rows are padded to
    the largest count for the all-gather and trimmed after."""
    if not distributed.is_distributed():
        return tensors
    count = torch.tensor([len(tensors[0])])
    counts = [torch.zeros_like(count) for _ in range(distributed.world_size())]
    torch.distributed.all_gather(counts, count)
    longest = int(max(counts))
    gathered = []
    for tensor in tensors:
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: len(tensor)] = tensor
        parts = [torch.zeros_like(padded) for _ in counts]
        torch.distributed.all_gather(parts, padded)
        gathered.append(torch.cat([part[: int(n)] for part, n in zip(parts, counts, strict=True)]))
    return tuple(gathered)
