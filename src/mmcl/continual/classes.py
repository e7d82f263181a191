"""Which classes a prediction chooses from, in one label coordinate system for the whole stream.

Tasks keep their data's own labels (global class ids in class-incremental streams, local ids in
task-incremental and multi-dataset ones). Methods that mix tasks (joint training, replay) need
labels that never collide, so everything the continual runner trains on or evaluates uses
*stream labels*: the data label plus the task's offset, where the offset is 0 when tasks share
a label space (class- and domain-incremental) and the number of classes of all earlier tasks
otherwise.

A :class:`ClassSpace` lists the classes of one prediction: their names, stream labels and the
prompt templates of the task each class comes from (multi-dataset tasks have their own).

>>> import torch
>>> from torch.utils.data import TensorDataset
>>> from mmcl.continual.scenarios import multi_dataset
>>> a = TensorDataset(torch.zeros(2, 1), torch.tensor([0, 1]))
>>> b = TensorDataset(torch.zeros(3, 1), torch.tensor([0, 1, 2]))
>>> stream = multi_dataset([("a", a, a, ["x", "y"], ["{}"]), ("b", b, b, ["p", "q", "r"], ["{}"])])
>>> stream_offsets(stream)
[0, 2]
>>> space = training_space(stream, 1, mixes_past_data=True)
>>> space.names, space.labels
(['x', 'y', 'p', 'q', 'r'], [0, 1, 2, 3, 4])
>>> evaluation_space(stream, 1, evaluated_after=0).labels
[2, 3, 4]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from mmcl.continual.tasks import dataset_targets
from mmcl.data.zeroshot import format_prompts
from mmcl.eval.zero_shot import build_zero_shot_classifier
from mmcl.io.tokenizer import tokenize

SHARED_LABELS = ("class-incremental", "domain-incremental")


@dataclass(frozen=True)
class ClassSpace:
    """Classes to choose from: ``names[k]`` has stream label ``labels[k]`` and is prompted with
    ``templates[k]``. Logits over a space have one column per class, in this order."""

    names: list[str]
    labels: list[int]
    templates: list[list[str]]

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.labels) == len(self.templates)) or not self.names:
            raise ValueError("a class space needs one label and template list per class name")

    def __len__(self) -> int:
        return len(self.names)

    def positions(self, labels: torch.Tensor) -> torch.Tensor:
        """Column of each stream label in this space (-1 where a label is not in it)."""
        top = int(labels.max()) if labels.numel() else 0
        table = torch.full((max(max(self.labels), top) + 1,), -1)
        table[torch.tensor(self.labels)] = torch.arange(len(self.labels))
        return table[labels.cpu()].to(labels.device)

    @torch.no_grad()
    def classifier(self, model) -> torch.Tensor:
        """Zero-shot weights ``(embed_dim, len(self))``: per class, the normalised mean of its
        normalised prompt embeddings (classes sharing templates are embedded together)."""
        columns: dict[int, torch.Tensor] = {}
        groups: dict[tuple[str, ...], list[int]] = {}
        for k, templates in enumerate(self.templates):
            groups.setdefault(tuple(templates), []).append(k)
        for templates, members in groups.items():
            weights = build_zero_shot_classifier(
                model, tokenize, [self.names[k] for k in members], list(templates)
            )
            for column, k in enumerate(members):
                columns[k] = weights[:, column]
        return torch.stack([columns[k] for k in range(len(self))], dim=1)


def prompt_features(model, space: ClassSpace) -> torch.Tensor:
    """Float32 ``(len(space), embed_dim)``: per class, the normalised mean of its normalised
    prompt embeddings, as `ClassSpace.classifier` computes them, but in the model's own mode
    and with gradients where they are recorded (a method's training-time class features)."""
    prompts = [
        format_prompts(n, list(t)) for n, t in zip(space.names, space.templates, strict=True)
    ]
    device = next(model.parameters()).device
    tokens = tokenize([prompt for group in prompts for prompt in group]).to(device)
    embeddings = F.normalize(model.encode_text(tokens, normalize=True).float(), dim=-1)
    means = torch.stack([part.mean(dim=0) for part in embeddings.split(list(map(len, prompts)))])
    return F.normalize(means, dim=-1)


def stream_offsets(scenario) -> list[int]:
    """Per task, the number added to its data labels to make stream labels."""
    if scenario.kind in SHARED_LABELS:
        return [0] * len(scenario)
    offsets, total = [], 0
    for task in scenario:
        offsets.append(total)
        total += task.num_classes
    return offsets


def task_classes(scenario, index: int) -> ClassSpace:
    """The classes of task ``index`` alone, with stream labels."""
    task, offset = scenario.tasks[index], stream_offsets(scenario)[index]
    return ClassSpace(
        list(task.classnames),
        [offset + label for label in task.label_ids],
        [list(task.templates)] * task.num_classes,
    )


def union(spaces: Sequence[ClassSpace]) -> ClassSpace:
    """Classes of several spaces, each stream label once, in order of first appearance."""
    names, labels, templates, seen = [], [], [], set()
    for space in spaces:
        for name, label, template in zip(space.names, space.labels, space.templates, strict=True):
            if label not in seen:
                seen.add(label)
                names.append(name)
                labels.append(label)
                templates.append(template)
    return ClassSpace(names, labels, templates)


def training_space(scenario, index: int, mixes_past_data: bool = False) -> ClassSpace:
    """What the classification objective of task ``index`` chooses from.

    Class-incremental: every class seen so far (one head that grows with the stream, so old
    classes compete with new ones as in the usual single-head protocol). Domain-incremental:
    the shared classes. Task-incremental and multi-dataset: the task's own classes, or those of
    every task so far when the method trains on past data too (joint training, replay).
    """
    if scenario.kind == "class-incremental" or mixes_past_data:
        return union([task_classes(scenario, i) for i in range(index + 1)])
    return task_classes(scenario, index)


def evaluation_space(scenario, index: int, evaluated_after: int) -> ClassSpace:
    """What predictions for task ``index`` choose from, after training task ``evaluated_after``
    (-1: before any training).

    Class-incremental: every class of the tasks up to the later of the two (one head over all
    classes seen so far; future tasks are evaluated zero-shot with their classes added).
    Otherwise the task's own classes (known task identity, or a data set with its own labels).
    """
    if scenario.kind == "class-incremental":
        return union([task_classes(scenario, i) for i in range(max(index, evaluated_after) + 1)])
    return task_classes(scenario, index)


class StreamLabels(Dataset):
    """A task's dataset with its labels shifted to stream labels (``targets`` included)."""

    def __init__(self, dataset: Dataset, offset: int, targets: Sequence[int] | None = None):
        self.dataset, self.offset = dataset, offset
        self.targets = [offset + y for y in dataset_targets(dataset, targets)]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return image, int(label) + self.offset


def stream_data(scenario, index: int, split: str = "train") -> Dataset:
    """Task ``index``'s train (or test) data with stream labels."""
    task = scenario.tasks[index]
    data = task.train if split == "train" else task.test
    offset = stream_offsets(scenario)[index]
    return StreamLabels(data, offset, getattr(data, "targets", None))
