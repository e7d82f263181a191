"""Build continual-learning scenarios from any labelled classification dataset.

A dataset here is anything with ``__len__`` and ``__getitem__ -> (image, label)``; its labels
are read from ``targets=`` if given, else cheaply from the dataset (see
:func:`~mmcl.continual.tasks.dataset_targets`). Class names come from ``classnames=`` or the
dataset's ``classnames`` attribute, templates from ``templates=`` or the dataset's
``templates`` attribute, else :data:`DEFAULT_TEMPLATES`.

* :func:`class_incremental`: classes split into disjoint groups, one per task; labels stay
  **global class ids**, and a model is evaluated over every class seen so far
  (:meth:`Scenario.classes_seen_up_to`).
* :func:`task_incremental`: the same splits, labels remapped to ``0..k-1`` within each task;
  the task id is known at test time, so each task is evaluated over its own classes.
* :func:`domain_incremental`: one label space, a different input distribution per task (ready
  made: :func:`~mmcl.continual.domains.rotated_domains`,
  :func:`~mmcl.continual.domains.colour_permuted_domains`).
* :func:`multi_dataset`: the MTIL setting, each task a whole data set with its own class names
  and templates (built in: :func:`mmcl.continual.builtin.mini_mtil`).

Every builder checks its input and raises ``ValueError`` before anything is trained. The class
order is a fixed function of ``seed`` (Python's ``random.Random``, stable across platforms).

>>> import torch
>>> from torch.utils.data import TensorDataset
>>> labels = torch.arange(40) % 4
>>> data = TensorDataset(torch.zeros(40, 3, 8, 8), labels)
>>> scenario = class_incremental(data, data, ["a", "b", "c", "d"], n_tasks=2, seed=0)
>>> [task.class_ids for task in scenario], scenario.classes_seen_up_to(1)
([[2, 0], [1, 3]], [2, 0, 1, 3])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmcl.continual.domains import (
    PermuteChannels,
    Rotate,
    TransformedDataset,
    colour_permuted_domains,
    rotated_domains,
    transformed_domains,
)
from mmcl.continual.splits import split_classes
from mmcl.continual.tasks import Scenario, Task, TaskSubset, dataset_targets, describe

__all__ = [
    "DEFAULT_TEMPLATES",
    "PermuteChannels",
    "Rotate",
    "Scenario",
    "Task",
    "TaskSubset",
    "TransformedDataset",
    "class_incremental",
    "colour_permuted_domains",
    "dataset_targets",
    "describe",
    "domain_incremental",
    "multi_dataset",
    "rotated_domains",
    "split_by_class",
    "split_classes",
    "task_incremental",
    "transformed_domains",
]

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

Targets = Sequence[int] | None


def _resolve_names(dataset: Any, classnames: Sequence[str] | None) -> list[str]:
    names = classnames if classnames is not None else getattr(dataset, "classnames", None)
    if not names:
        raise ValueError("class names are needed: pass classnames= or use a dataset with them")
    return [str(name) for name in names]


def _resolve_templates(dataset: Any, templates: Sequence[str] | None) -> list[str]:
    found = templates if templates is not None else getattr(dataset, "templates", None)
    return list(found) if found else list(DEFAULT_TEMPLATES)


def _checked_targets(dataset: Any, targets: Targets, n_classes: int, what: str) -> list[int]:
    labels = dataset_targets(dataset, targets)
    for index, label in enumerate(labels):
        if not 0 <= label < n_classes:
            raise ValueError(
                f"{what} label {label} at index {index} is not a class id (0..{n_classes - 1})"
            )
    return labels


def split_by_class(
    train: Any,
    test: Any,
    classnames: Sequence[str] | None = None,
    n_tasks: int | None = None,
    seed: int = 0,
    class_order: Sequence[int] | None = None,
    *,
    local_labels: bool,
    classes_per_task: int | Sequence[int] | None = None,
    class_splits: Sequence[Sequence[int]] | None = None,
    templates: Sequence[str] | None = None,
    train_targets: Targets = None,
    test_targets: Targets = None,
    name: str | None = None,
) -> Scenario:
    """The one builder behind :func:`class_incremental` (``local_labels=False``) and
    :func:`task_incremental` (``local_labels=True``): the classes are cut into groups by
    :func:`split_classes`, one task per group, and the two differ only in each task's labels
    (global class ids, or ``0..k-1`` in the group's order).

    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> data = TensorDataset(torch.zeros(4, 1), torch.tensor([0, 1, 2, 1]))
    >>> split = dict(class_splits=[[2, 1], [0]])
    >>> split_by_class(data, data, ["x", "y", "z"], local_labels=False, **split)[0].train.targets
    [1, 2, 1]
    >>> split_by_class(data, data, ["x", "y", "z"], local_labels=True, **split)[0].train.targets
    [1, 0, 1]
    """
    kind = "task-incremental" if local_labels else "class-incremental"
    name = kind if name is None else name
    names = _resolve_names(train, classnames)
    prompts = _resolve_templates(train, templates)
    train_labels = _checked_targets(train, train_targets, len(names), "train")
    test_labels = _checked_targets(test, test_targets, len(names), "test")
    # A class without training items could never be learnt: refuse it before any training.
    untrainable = sorted(set(range(len(names))) - set(train_labels))
    tasks = []
    groups = split_classes(len(names), n_tasks, seed, class_order, classes_per_task, class_splits)
    for t, group in enumerate(groups):
        missing = [c for c in group if c in untrainable]
        if missing:
            raise ValueError(
                f"task {t}: classes {missing} ({', '.join(names[c] for c in missing)}) have no "
                "training examples"
            )
        label_map = {c: j for j, c in enumerate(group)} if local_labels else None
        members = set(group)
        parts = {}
        for split, data, labels in (("train", train, train_labels), ("test", test, test_labels)):
            indices = [i for i, y in enumerate(labels) if y in members]
            if not indices:
                raise ValueError(f"task {t} (classes {group}) has no {split} examples")
            parts[split] = TaskSubset(data, indices, labels, label_map)
        tasks.append(
            Task(
                name=f"task-{t}",
                index=t,
                train=parts["train"],
                test=parts["test"],
                classnames=[names[c] for c in group],
                templates=prompts,
                class_ids=list(group),
                global_labels=not local_labels,
            )
        )
    return Scenario(tasks, kind, seed=seed, classnames=names, name=name)


def class_incremental(
    train: Any,
    test: Any,
    classnames: Sequence[str] | None = None,
    n_tasks: int | None = None,
    seed: int = 0,
    class_order: Sequence[int] | None = None,
    *,
    classes_per_task: int | Sequence[int] | None = None,
    class_splits: Sequence[Sequence[int]] | None = None,
    templates: Sequence[str] | None = None,
    train_targets: Targets = None,
    test_targets: Targets = None,
    name: str = "class-incremental",
) -> Scenario:
    """Class-incremental scenario: disjoint groups of classes (see :func:`split_classes`).

    Labels stay global class ids; ``task.classnames``/``task.class_ids`` list the task's own
    classes, and ``scenario.classes_seen_up_to(t)`` the label space after task ``t``.

    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> data = TensorDataset(torch.zeros(6, 1), torch.tensor([0, 1, 2, 0, 1, 2]))
    >>> scenario = class_incremental(data, data, ["x", "y", "z"], class_splits=[[2], [0, 1]])
    >>> scenario[1].classnames, scenario[1].train.targets
    (['x', 'y'], [0, 1, 0, 1])
    """
    return split_by_class(
        train,
        test,
        classnames,
        n_tasks,
        seed,
        class_order,
        local_labels=False,
        classes_per_task=classes_per_task,
        class_splits=class_splits,
        templates=templates,
        train_targets=train_targets,
        test_targets=test_targets,
        name=name,
    )


def task_incremental(
    train: Any,
    test: Any,
    classnames: Sequence[str] | None = None,
    n_tasks: int | None = None,
    seed: int = 0,
    class_order: Sequence[int] | None = None,
    *,
    classes_per_task: int | Sequence[int] | None = None,
    class_splits: Sequence[Sequence[int]] | None = None,
    templates: Sequence[str] | None = None,
    train_targets: Targets = None,
    test_targets: Targets = None,
    name: str = "task-incremental",
) -> Scenario:
    """Task-incremental scenario: the splits of :func:`class_incremental`, but each task's
    labels remapped to ``0..k-1`` (``task.classnames[j]`` names local label ``j``, whose
    global id is ``task.class_ids[j]``); the task id is known at test time.

    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> data = TensorDataset(torch.zeros(6, 1), torch.tensor([0, 1, 2, 0, 1, 2]))
    >>> scenario = task_incremental(data, data, ["x", "y", "z"], class_splits=[[2], [0, 1]])
    >>> scenario[0].classnames, scenario[0].train.targets
    (['z'], [0, 0])
    """
    return split_by_class(
        train,
        test,
        classnames,
        n_tasks,
        seed,
        class_order,
        local_labels=True,
        classes_per_task=classes_per_task,
        class_splits=class_splits,
        templates=templates,
        train_targets=train_targets,
        test_targets=test_targets,
        name=name,
    )


def domain_incremental(
    domains: Sequence[tuple[str, Any, Any]],
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    seed: int = 0,
    name: str = "domain-incremental",
) -> Scenario:
    """Domain-incremental scenario: one task per ``(name, train, test)`` domain, in the given
    order, all sharing one label space (labels index ``classnames``). ``seed`` is recorded
    only: the order is yours.

    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> data = TensorDataset(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]))
    >>> scenario = domain_incremental(rotated_domains(data, data, [0, 90]), ["a", "b"])
    >>> scenario.task_names, scenario.classes_seen_up_to(0)
    (['rotated-0', 'rotated-90'], [0, 1])
    """
    domains = [tuple(domain) for domain in domains]
    if not domains:
        raise ValueError("domain_incremental needs at least one (name, train, test) domain")
    for t, domain in enumerate(domains):
        if len(domain) != 3:
            raise ValueError(f"domain {t} must be (name, train, test), got {len(domain)} items")
    names = _resolve_names(domains[0][1], classnames)
    tasks = []
    for t, (domain_name, train, test) in enumerate(domains):
        _checked_targets(train, None, len(names), f"domain {domain_name!r} train")
        _checked_targets(test, None, len(names), f"domain {domain_name!r} test")
        tasks.append(
            Task(
                name=str(domain_name),
                index=t,
                train=train,
                test=test,
                classnames=names,
                templates=_resolve_templates(train, templates),
                class_ids=list(range(len(names))),
            )
        )
    return Scenario(tasks, "domain-incremental", seed=seed, classnames=names, name=name)


def multi_dataset(
    tasks: Sequence[tuple[str, Any, Any, Sequence[str] | None, Sequence[str] | None]],
    seed: int = 0,
    name: str = "multi-dataset",
) -> Scenario:
    """Multi-dataset (MTIL-style) scenario: each ``(name, train, test, classnames, templates)``
    is a whole data set with its own label space; ``None`` class names or templates are taken
    from the train dataset. ``seed`` is recorded only: the order is yours.

    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> a = TensorDataset(torch.zeros(2, 1), torch.tensor([0, 1]))
    >>> b = TensorDataset(torch.zeros(3, 1), torch.tensor([0, 1, 2]))
    >>> scenario = multi_dataset([("a", a, a, ["x", "y"], None), ("b", b, b, ["p", "q", "r"], None)])
    >>> [task.num_classes for task in scenario], scenario.classnames is None
    ([2, 3], True)
    """
    entries = [tuple(entry) for entry in tasks]
    if not entries:
        raise ValueError("multi_dataset needs at least one task")
    built = []
    for t, entry in enumerate(entries):
        if len(entry) != 5:
            raise ValueError(
                f"task {t} must be (name, train, test, classnames, templates), got {len(entry)} items"
            )
        task_name, train, test, classnames, templates = entry
        names = _resolve_names(train, classnames)
        _checked_targets(train, None, len(names), f"task {task_name!r} train")
        _checked_targets(test, None, len(names), f"task {task_name!r} test")
        built.append(
            Task(
                name=str(task_name),
                index=t,
                train=train,
                test=test,
                classnames=names,
                templates=_resolve_templates(train, templates),
            )
        )
    return Scenario(built, "multi-dataset", seed=seed, name=name)
