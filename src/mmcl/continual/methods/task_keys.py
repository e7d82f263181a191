"""A task selector for bridge models: one key per task (the mean of its training items'
features), and, at test time, the task whose key is nearest (by cosine similarity) to an
input's feature: the simplest form of the task identification that HiDe-LLaVA (feature
similarity to task prototypes) and MoE adapters (an autoencoder per task) do before choosing
a task's parameters (see `task_lora` and `modal_prompt`).

The feature of an image (`image_keys`) is the mean of its image tokens as the bridge hands
them to the LM (`model.encode_image(images) -> (images, tokens, width)`), under the frozen
tower and projector, normalised. The feature of an instruction (`input_keys`) puts beside it
the mean input embedding of the instruction's text tokens (the LM's frozen embedding table),
as HiDe-LLaVA and ModalPrompt match image *and* text: tasks that share their images and
differ in what they ask (scene captions, scene questions) are told apart only by the text.
Keys are accumulated from the training batches themselves (`add`), so the selector needs no
second pass over the data and works for any stream whose batches carry images; the sums are
part of the state, so a run resumed mid-task ends with the same keys.

With `hold`, the first `hold` features of each task are kept until the task ends, and
`calibrate` sets the task's threshold to a quantile of their similarity to the finished key;
`choose(..., fallback=True)` then answers -1 ("none of the tasks") for an input less similar
to its nearest key than that task's threshold, as MoE adapters' selector sends an input that
no task recognises to the frozen model.

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

from mmcl.data.chat_template import IGNORE_INDEX
from mmcl.train import distributed


@torch.no_grad()
def image_keys(model, images: torch.Tensor) -> torch.Tensor:
    """``(images, width)``: each image's mean image token, normalised, in float32."""
    tokens = model.encode_image(images)  # (images, tokens, width)
    return F.normalize(tokens.float().mean(dim=1), dim=-1)


def instruction_tokens(model, ids: torch.Tensor, mask: torch.Tensor, labels=None) -> torch.Tensor:
    """Which of `ids` are instruction text: attended, not an image placeholder and, with
    `labels` (a training batch), not an answer token (those carry a label)."""
    keep = mask.bool() & (ids != model.image_token_id)
    return keep if labels is None else keep & (labels == IGNORE_INDEX)


@torch.no_grad()
def input_keys(model, images: torch.Tensor, ids: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``(rows, 2 * width)``: `image_keys` beside the normalised mean input embedding of each
    row's instruction tokens (`text`, a mask over `ids`: `instruction_tokens`), the two
    halves weighted alike and the whole normalised, in float32."""
    embeddings = model.language_model.get_input_embeddings()(ids).float()
    weights = text.to(embeddings.dtype).unsqueeze(-1)
    mean = (embeddings * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
    both = torch.cat([image_keys(model, images), F.normalize(mean, dim=-1)], dim=-1)
    return F.normalize(both, dim=-1)


class TaskKeys:
    """Sums and counts of features per task; `choose` picks the nearest task mean. With
    `hold`, the first `hold` features of a task are kept for `calibrate`."""

    def __init__(self, hold: int = 0):
        self.hold = hold
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}
        self.held: dict[int, torch.Tensor] = {}  # until `calibrate` (part of the state)
        self.thresholds: dict[int, float] = {}

    def add(self, task: int, features: torch.Tensor) -> None:
        features = features.detach().float().cpu()
        self.sums[task] = self.sums.get(task, 0) + features.sum(dim=0)
        self.counts[task] = self.counts.get(task, 0) + len(features)
        held = self.held.get(task, features[:0])
        if len(held) < self.hold:
            self.held[task] = torch.cat([held, features[: self.hold - len(held)]])

    def calibrate(self, task: int, quantile: float) -> None:
        """Task `task`'s threshold: the `quantile` of its held features' similarity to its
        key (so about that share of its own training inputs would fall below it). The held
        features are dropped. Under DDP each rank calibrates on its own batches; the runner
        then gives every rank rank 0's state."""
        held = self.held.pop(task, None)
        if held is None or not len(held):
            raise ValueError(f"the task selector holds no features of task {task} to calibrate")
        key = F.normalize(self.sums[task] / self.counts[task], dim=-1)
        similarity = F.normalize(held, dim=-1) @ key
        self.thresholds[task] = torch.quantile(similarity, quantile).item()

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

    def choose(self, features: torch.Tensor, fallback: bool = False) -> torch.Tensor:
        """The task (an index of the stream) whose key is most similar to each row; with
        `fallback`, -1 where that similarity is below the task's `calibrate`d threshold."""
        if not self.sums:
            raise ValueError("the task selector has no keys yet: train a task first")
        similarity = F.normalize(features.float(), dim=-1) @ self.keys().to(features.device).T
        best, nearest = similarity.max(dim=1)
        tasks = torch.tensor(self.tasks, device=features.device)[nearest]
        if not fallback:
            return tasks
        missing = [t for t in self.tasks if t not in self.thresholds]
        if missing:
            raise ValueError(f"the task selector has no threshold for tasks {missing}: calibrate")
        thresholds = torch.tensor([self.thresholds[t] for t in self.tasks], device=best.device)
        return torch.where(best >= thresholds[nearest], tasks, torch.full_like(tasks, -1))

    def state_dict(self) -> dict:
        return {
            "sums": dict(self.sums),
            "counts": dict(self.counts),
            "held": dict(self.held),
            "thresholds": dict(self.thresholds),
        }

    def load_state_dict(self, state: dict) -> None:
        self.sums = {int(k): v.clone() for k, v in state.get("sums", {}).items()}
        self.counts = {int(k): int(v) for k, v in state.get("counts", {}).items()}
        self.held = {int(k): v.clone() for k, v in state.get("held", {}).items()}
        self.thresholds = {int(k): float(v) for k, v in state.get("thresholds", {}).items()}


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


__all__ = [
    "TaskKeys",
    "image_keys",
    "input_keys",
    "instruction_tokens",
    "routes_by_task",
    "run_routes",
]
