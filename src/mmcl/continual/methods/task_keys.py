"""A task selector for bridge models: one key per task (the mean of its training images'
features), and, at test time, the task whose key is nearest (by cosine similarity) to an
image's feature: the simplest form of the task identification that HiDe-LLaVA (feature
similarity to task prototypes) and MoE adapters (an autoencoder per task) do before choosing
a task's parameters (see `task_lora` and `modal_prompt`).

The feature of an image is the mean of its image tokens as the bridge hands them to the LM
(`model.encode_image(images) -> (images, tokens, width)`), under the frozen tower and
projector, normalised. Keys are
accumulated from the training batches themselves (`add`), so the selector needs no second
pass over the data and works for any stream whose batches carry images; the sums are part of
the state, so a run resumed mid-task ends with the same keys.

Inference through a selector is a list of *routes*: ``[(rows, context), ...]``, the rows of
a batch that run under each context (e.g. the LoRA of the task they were sent to). Run them
with `run_routes`.

>>> import torch
>>> keys = TaskKeys()
>>> keys.add(0, torch.tensor([[1.0, 0.0]]))
>>> keys.add(1, torch.tensor([[0.0, 1.0]]))
>>> keys.choose(torch.tensor([[0.9, 0.1], [0.2, 0.8]])).tolist()
[0, 1]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch.nn import functional as F

from mmcl.train import distributed


@torch.no_grad()
def image_keys(model, images: torch.Tensor) -> torch.Tensor:
    """``(images, width)``: each image's mean image token, normalised, in float32."""
    tokens = model.encode_image(images)  # (images, tokens, width)
    return F.normalize(tokens.float().mean(dim=1), dim=-1)


class TaskKeys:
    """Sums and counts of features per task; `choose` picks the nearest task mean."""

    def __init__(self):
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}

    def add(self, task: int, features: torch.Tensor) -> None:
        total = features.detach().float().sum(dim=0).cpu()
        self.sums[task] = self.sums.get(task, 0) + total
        self.counts[task] = self.counts.get(task, 0) + len(features)

    def gather(self, task: int) -> None:
        """Sum task `task`'s share from every rank (each rank saw its own batches)."""
        if not distributed.is_distributed() or task not in self.sums:
            return
        device = distributed.init_from_env().device
        packed = torch.cat([self.sums[task], torch.tensor([float(self.counts[task])])]).to(device)
        torch.distributed.all_reduce(packed)
        self.sums[task], self.counts[task] = packed[:-1].cpu(), int(packed[-1].item())

    @property
    def tasks(self) -> list[int]:
        return sorted(self.sums)

    def keys(self) -> torch.Tensor:
        """``(tasks, width)``: the normalised mean feature of each task, in `tasks` order."""
        return F.normalize(torch.stack([self.sums[t] / self.counts[t] for t in self.tasks]), dim=-1)

    def choose(self, features: torch.Tensor) -> torch.Tensor:
        """The task (an index of the stream) whose key is most similar to each row."""
        if not self.sums:
            raise ValueError("the task selector has no keys yet: train a task first")
        similarity = F.normalize(features.float(), dim=-1) @ self.keys().to(features.device).T
        return torch.tensor(self.tasks, device=features.device)[similarity.argmax(dim=1)]

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.sums = {int(k): v.clone() for k, v in state.get("sums", {}).items()}
        self.counts = {int(k): int(v) for k, v in state.get("counts", {}).items()}


def routes_by_task(
    choice: torch.Tensor, context: Callable[[int], contextlib.AbstractContextManager]
) -> list[tuple[torch.Tensor, contextlib.AbstractContextManager]]:
    """One route per chosen task: its rows, and `context(task)`."""
    return [
        ((choice == task).nonzero().flatten(), context(task)) for task in choice.unique().tolist()
    ]


def run_routes(
    routes,
    rows: int,
    compute: Callable[[torch.Tensor], torch.Tensor],
    pad: int | float | None = None,
) -> torch.Tensor:
    """`compute(row_indices)` for each route under its context, the results put back in row
    order (`routes` None: one call on every row). Each result has one row per input row;
    results of different lengths (generated tokens) are right-padded with `pad` to the
    longest."""
    if routes is None:
        return compute(torch.arange(rows))
    parts = []
    for indices, context in routes:
        with context:
            parts.append((indices, compute(indices)))
    first = parts[0][1]
    if first.ndim > 1 and len({values.shape[1] for _, values in parts}) > 1:
        if pad is None:
            raise ValueError("run_routes: the routes' results differ in length; give pad")
        length = max(values.shape[1] for _, values in parts)
        parts = [(i, _pad_to(values, length, pad)) for i, values in parts]
        first = parts[0][1]
    result = first.new_empty(rows, *first.shape[1:])
    for indices, values in parts:
        result[indices.to(result.device)] = values
    return result


def _pad_to(values: torch.Tensor, length: int, pad) -> torch.Tensor:
    extra = values.new_full((values.shape[0], length - values.shape[1], *values.shape[2:]), pad)
    return torch.cat([values, extra], dim=1)


__all__ = ["TaskKeys", "image_keys", "routes_by_task", "run_routes"]
