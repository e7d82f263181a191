"""The task stream of continual learning: :class:`Task`, :class:`Scenario`, and the dataset
view a task trains on.

A :class:`Task` is one step of the stream: a train and a test dataset of ``(image, label)``
items plus the class names and prompt templates that zero-shot evaluation of the task uses. A
:class:`Scenario` is the ordered list of tasks, its kind and the seed it was built with.

What a task's labels mean depends on the kind of scenario:

==================== =================================== ====================================
kind                 dataset labels                      evaluation classifier
==================== =================================== ====================================
class-incremental    global class ids (``class_ids``)    every class seen so far
task-incremental     local, ``0..len(classnames)-1``     the task's own classes (task id known)
domain-incremental   shared label space (local = global) all classes, every task
multi-dataset        local to each task's data set       the task's own class names/templates
==================== =================================== ====================================

Tasks never copy images: their datasets are :class:`TaskSubset` views (indices into the source
dataset, labels remapped on the fly where the kind asks for it).

>>> import torch
>>> from torch.utils.data import TensorDataset
>>> data = TensorDataset(torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]))
>>> part = TaskSubset(data, [1, 3], dataset_targets(data), label_map={1: 0})
>>> len(part), part.targets, part[0][1]
(2, [0, 0], 0)
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from mmcl.data.zeroshot import normalize_template

__all__ = [
    "KINDS",
    "Scenario",
    "Task",
    "TaskSubset",
    "dataset_targets",
    "describe",
]

KINDS: tuple[str, ...] = (
    "class-incremental",
    "domain-incremental",
    "task-incremental",
    "multi-dataset",
)


def dataset_targets(dataset: Any, targets: Sequence[int] | torch.Tensor | None = None) -> list[int]:
    """The label of every item of ``dataset``, as ints, reading as few images as possible.

    In order: ``targets`` if given, then the dataset's ``targets`` or ``labels`` attribute, its
    ``label(i)`` method (the built-in scenes), the last tensor of a ``TensorDataset``, the
    source of a ``Subset``; only when none exists is every item loaded to read its label.

    >>> from torch.utils.data import TensorDataset
    >>> dataset_targets(TensorDataset(torch.zeros(3, 1), torch.tensor([2, 0, 1])))
    [2, 0, 1]
    """
    if targets is None:
        targets = _cheap_targets(dataset)
    if targets is None:
        targets = [dataset[i][1] for i in range(len(dataset))]
    if isinstance(targets, torch.Tensor):
        targets = targets.tolist()
    labels = [_class_label(label, position) for position, label in enumerate(targets)]
    if len(labels) != len(dataset):
        raise ValueError(f"{len(labels)} targets for a dataset of {len(dataset)} items")
    return labels


def _class_label(label: Any, position: int) -> int:
    # Integers of any kind (numpy, 0-d tensors) and integral floats (a float label tensor) are
    # class ids; bools, fractions and strings are not, rather than being truncated to one.
    if isinstance(label, torch.Tensor) and label.numel() == 1:
        label = label.item()
    if not isinstance(label, bool):  # numpy's bool is neither an index nor a Real
        try:
            return operator.index(label)
        except TypeError:
            if isinstance(label, numbers.Real) and float(label).is_integer():
                return int(label)
    raise ValueError(f"label at index {position} must be an integer class id, got {label!r}")


def _cheap_targets(dataset: Any) -> Sequence[int] | torch.Tensor | None:
    for attribute in ("targets", "labels"):
        value = getattr(dataset, attribute, None)
        if value is not None and not callable(value):
            return value
    if callable(getattr(dataset, "label", None)):
        return [dataset.label(i) for i in range(len(dataset))]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[-1]
    if isinstance(dataset, Subset):
        source = dataset_targets(dataset.dataset)
        return [source[i] for i in dataset.indices]
    return None


class TaskSubset(Dataset):
    """Items ``indices`` of ``dataset`` as ``(image, label)``, labels mapped by ``label_map``.

    Like ``torch.utils.data.Subset`` (``.dataset``, ``.indices``), plus ``.targets`` (labels
    after mapping, so methods can pick exemplars without loading images).
    """

    def __init__(
        self,
        dataset: Any,
        indices: Sequence[int],
        source_targets: Sequence[int],
        label_map: Mapping[int, int] | None = None,
    ) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.label_map = dict(label_map) if label_map is not None else None
        selected = [source_targets[i] for i in self.indices]
        if self.label_map is not None:
            unmapped = sorted({y for y in selected if y not in self.label_map})
            if unmapped:
                raise ValueError(f"labels {unmapped} of the selected items are not in label_map")
            selected = [self.label_map[y] for y in selected]
        self.targets = selected

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.dataset[self.indices[index]]
        label = int(label)
        return image, self.label_map[label] if self.label_map is not None else label

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} of {len(self.dataset)} items)"


@dataclass(frozen=True, eq=False)
class Task:
    """One step of a continual-learning stream.

    ``classnames[j]`` names the class whose global id is ``class_ids[j]`` (``class_ids`` is
    ``None`` when tasks share no label space, as in multi-dataset scenarios). When
    ``global_labels`` is true (class-incremental) the datasets' labels are those global ids;
    otherwise they index ``classnames``. ``templates`` hold ``{}`` for the class name.

    >>> from torch.utils.data import TensorDataset
    >>> data = TensorDataset(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]))
    >>> task = Task("digits", 0, data, data, ["zero", "one"], ["a photo of {}."])
    >>> task.num_classes, task.label_ids, task.prompts(0)
    (2, [0, 1], ['a photo of zero.'])
    """

    name: str
    index: int
    train: Dataset
    test: Dataset
    classnames: list[str]
    templates: list[str]
    class_ids: list[int] | None = None
    global_labels: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a task needs a name")
        if not self.classnames:
            raise ValueError(f"task {self.name!r} has no class names")
        if not self.templates:
            raise ValueError(f"task {self.name!r} has no prompt templates")
        object.__setattr__(self, "classnames", [str(c) for c in self.classnames])
        object.__setattr__(self, "templates", [normalize_template(t) for t in self.templates])
        if self.class_ids is not None:
            object.__setattr__(self, "class_ids", [int(c) for c in self.class_ids])
            if len(self.class_ids) != len(self.classnames):
                raise ValueError(
                    f"task {self.name!r}: {len(self.class_ids)} class ids for "
                    f"{len(self.classnames)} class names"
                )
            repeated = sorted({c for c in self.class_ids if self.class_ids.count(c) > 1})
            if repeated:
                raise ValueError(f"task {self.name!r}: class ids {repeated} appear more than once")
        elif self.global_labels:
            raise ValueError(f"task {self.name!r}: global labels need class_ids")
        for split, data in (("train", self.train), ("test", self.test)):
            if len(data) == 0:
                raise ValueError(f"task {self.name!r} has an empty {split} set")

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def label_ids(self) -> list[int]:
        """``label_ids[j]`` is the dataset label of ``classnames[j]``: the global class id in
        class-incremental tasks, ``j`` everywhere else (what a classifier head maps from)."""
        if self.global_labels:
            return list(self.class_ids or ())
        return list(range(self.num_classes))

    def prompts(self, local_label: int) -> list[str]:
        """Every template filled in with the name of class ``classnames[local_label]``."""
        return [t.replace("{}", self.classnames[local_label]) for t in self.templates]


@dataclass(frozen=True, eq=False)
class Scenario:
    """An ordered stream of tasks; ``classnames`` is the global label space (``None`` for
    multi-dataset scenarios, where every task has its own).

    >>> from torch.utils.data import TensorDataset
    >>> data = TensorDataset(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]))
    >>> tasks = [Task(f"t{i}", i, data, data, ["a", "b"], ["{}"], [0, 1]) for i in range(2)]
    >>> scenario = Scenario(tasks, "domain-incremental", seed=0, classnames=["a", "b"])
    >>> len(scenario), [task.name for task in scenario], scenario.classes_seen_up_to(0)
    (2, ['t0', 't1'], [0, 1])
    """

    tasks: list[Task]
    kind: str
    seed: int | None = None
    classnames: list[str] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown scenario kind {self.kind!r}; valid: {list(KINDS)}")
        tasks = list(self.tasks)
        if not tasks:
            raise ValueError("a scenario needs at least one task")
        object.__setattr__(self, "tasks", tasks)
        for position, task in enumerate(tasks):
            if task.index != position:
                raise ValueError(f"task {task.name!r} has index {task.index}, expected {position}")
        names = [task.name for task in tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique, repeated: {duplicates}")
        if self.classnames is None and self.kind != "multi-dataset":
            raise ValueError(f"a {self.kind} scenario needs the global class names")
        if self.classnames is not None:
            object.__setattr__(self, "classnames", [str(c) for c in self.classnames])
            for task in tasks:
                unknown = [c for c in task.class_ids or () if not 0 <= c < len(self.classnames)]
                if task.class_ids is None or unknown:
                    raise ValueError(
                        f"task {task.name!r} needs class ids in 0..{len(self.classnames) - 1}"
                    )
                expected = [self.classnames[c] for c in task.class_ids]
                if task.classnames != expected:
                    raise ValueError(
                        f"task {task.name!r}: class names {task.classnames} do not match the "
                        f"scenario's names of its class ids {task.class_ids}: {expected}"
                    )
        # Stream labels (mmcl.continual.classes) read a task's labels by the scenario's kind.
        for task in tasks:
            if self.kind == "class-incremental" and not task.global_labels:
                raise ValueError(
                    f"task {task.name!r}: class-incremental tasks need global_labels=True"
                )
            if self.kind in ("task-incremental", "multi-dataset") and task.global_labels:
                raise ValueError(f"task {task.name!r}: {self.kind} tasks have local labels")
            if self.kind == "domain-incremental" and task.label_ids != task.class_ids:
                raise ValueError(
                    f"task {task.name!r}: domain-incremental labels must be the shared class "
                    f"ids, got labels {task.label_ids} for class ids {task.class_ids}"
                )

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __getitem__(self, index: int) -> Task:
        return self.tasks[index]

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]

    def classes_seen_up_to(self, t: int) -> list[int]:
        """Global ids of the classes of tasks ``0..t`` (inclusive), in order of first
        appearance: the label space a class-incremental model is evaluated on after task t."""
        if self.classnames is None:
            raise ValueError(
                "a multi-dataset scenario has no shared label space; evaluate each task "
                "with its own task.classnames and task.templates"
            )
        if not 0 <= t < len(self.tasks):
            raise IndexError(f"task index {t} out of range for {len(self.tasks)} tasks")
        seen: dict[int, None] = {}
        for task in self.tasks[: t + 1]:
            seen.update(dict.fromkeys(task.class_ids or ()))
        return list(seen)

    def classnames_seen_up_to(self, t: int) -> list[str]:
        """Names of :meth:`classes_seen_up_to` ``(t)``, in the same order."""
        names = self.classnames or []
        return [names[c] for c in self.classes_seen_up_to(t)]


def describe(scenario: Scenario, max_names: int = 4) -> str:
    """A plain-text table of the tasks: classes, train/test sizes and template count.

    >>> from torch.utils.data import TensorDataset
    >>> data = TensorDataset(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]))
    >>> task = Task("toy", 0, data, data, ["a", "b"], ["{}"])
    >>> print(describe(Scenario([task], "multi-dataset", seed=0, name="demo")))
    demo: multi-dataset scenario, 1 task, seed 0
    #  task  classes  train  test  templates  class names
    0  toy         2      2     2          1  a, b
    """
    title = scenario.name or "scenario"
    plural = "" if len(scenario) == 1 else "s"
    header = (
        f"{title}: {scenario.kind} scenario, {len(scenario)} task{plural}, seed {scenario.seed}"
    )
    rows = [["#", "task", "classes", "train", "test", "templates", "class names"]]
    for task in scenario:
        names = ", ".join(task.classnames[:max_names])
        if task.num_classes > max_names:
            names += ", ..."
        rows.append(
            [
                str(task.index),
                task.name,
                str(task.num_classes),
                str(len(task.train)),
                str(len(task.test)),
                str(len(task.templates)),
                names,
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    # Text columns left-aligned, numbers right-aligned; the last column is not padded.
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if i in (0, 1) else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join([header, *lines])
