"""How class-incremental and task-incremental scenarios cut classes into tasks.

>>> split_classes(4, n_tasks=2, seed=0)
[[2, 0], [1, 3]]
"""

from __future__ import annotations

import operator
import random
from collections.abc import Sequence
from typing import Any

__all__ = ["split_classes"]


def split_classes(
    n_classes: int,
    n_tasks: int | None = None,
    seed: int = 0,
    class_order: Sequence[int] | None = None,
    classes_per_task: int | Sequence[int] | None = None,
    class_splits: Sequence[Sequence[int]] | None = None,
) -> list[list[int]]:
    """Groups of global class ids, one per task, disjoint.

    Either ``class_splits`` explicitly (need not cover every class: a scenario on part of a
    data set), or an order (``class_order``, a permutation of ``0..n_classes-1``, else a
    shuffle by ``seed``) cut into ``n_tasks`` equal groups or groups of ``classes_per_task``.

    >>> split_classes(6, n_tasks=3, class_order=[5, 4, 3, 2, 1, 0])
    [[5, 4], [3, 2], [1, 0]]
    >>> split_classes(6, classes_per_task=[4, 2], class_order=range(6))
    [[0, 1, 2, 3], [4, 5]]
    """
    if class_splits is not None:
        if class_order is not None or classes_per_task is not None:
            raise ValueError("give class_splits alone, without class_order or classes_per_task")
        return _checked_splits(class_splits, n_classes, n_tasks)

    if class_order is None:
        # An int seed only: random.Random(None) would draw a different order every run.
        order = list(range(n_classes))
        random.Random(_class_id(seed, "seed")).shuffle(order)
    else:
        order = [_class_id(c, "class_order") for c in class_order]
        if sorted(order) != list(range(n_classes)):
            missing = sorted(set(range(n_classes)) - set(order))
            repeated = sorted({c for c in order if order.count(c) > 1})
            unknown = sorted({c for c in order if not 0 <= c < n_classes})
            raise ValueError(
                f"class_order must be a permutation of 0..{n_classes - 1}; missing {missing}, "
                f"repeated {repeated}, unknown {unknown}"
            )

    sizes = _group_sizes(n_classes, n_tasks, classes_per_task)
    groups, start = [], 0
    for size in sizes:
        groups.append(order[start : start + size])
        start += size
    return groups


def _class_id(value: Any, what: str) -> int:
    """``value`` as an int: Python, numpy or 0-d tensor integers, never bools."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise ValueError(f"{what}: expected an integer, got {value!r}")


def _checked_splits(
    class_splits: Sequence[Sequence[int]], n_classes: int, n_tasks: int | None
) -> list[list[int]]:
    try:
        groups = [[_class_id(c, "class_splits") for c in group] for group in class_splits]
    except TypeError:  # a group that is not a list
        raise ValueError(f"class_splits must be lists of class ids, got {class_splits!r}") from None
    if not groups:
        raise ValueError("class_splits is empty: give at least one group of class ids")
    if n_tasks is not None and n_tasks != len(groups):
        raise ValueError(f"n_tasks={n_tasks} but class_splits has {len(groups)} groups")
    seen: dict[int, int] = {}
    for t, group in enumerate(groups):
        if not group:
            raise ValueError(f"class_splits[{t}] is empty: every task needs a class")
        unknown = [c for c in group if not 0 <= c < n_classes]
        if unknown:
            raise ValueError(
                f"class_splits[{t}] has unknown class ids {unknown} (0..{n_classes - 1})"
            )
        for c in group:
            if c in seen:
                raise ValueError(
                    f"class {c} is in class_splits[{seen[c]}] and class_splits[{t}]; "
                    "class splits must not overlap"
                )
            seen[c] = t
    return groups


def _is_int(value: Any) -> bool:
    try:
        _class_id(value, "")
    except ValueError:
        return False
    return True


def _group_sizes(
    n_classes: int, n_tasks: int | None, classes_per_task: int | Sequence[int] | None
) -> list[int]:
    if classes_per_task is not None and not _is_int(classes_per_task):
        try:
            sizes = [_class_id(k, "classes_per_task") for k in classes_per_task]
        except TypeError:  # not iterable
            raise ValueError(
                f"classes_per_task must be an int or a list of ints, got {classes_per_task!r}"
            ) from None
        if any(k <= 0 for k in sizes):
            raise ValueError(f"classes_per_task {sizes} has an empty task")
        if sum(sizes) != n_classes:
            raise ValueError(f"classes_per_task {sizes} sums to {sum(sizes)}, not {n_classes}")
        if n_tasks is not None and n_tasks != len(sizes):
            raise ValueError(f"n_tasks={n_tasks} but classes_per_task has {len(sizes)} entries")
        return sizes
    if classes_per_task is not None:
        k = _class_id(classes_per_task, "classes_per_task")
        if k <= 0 or n_classes % k:
            raise ValueError(f"{n_classes} classes cannot be cut into groups of {k}")
        if n_tasks is not None and n_tasks * k != n_classes:
            raise ValueError(f"n_tasks={n_tasks} groups of {k} do not make {n_classes} classes")
        return [k] * (n_classes // k)
    if n_tasks is None:
        raise ValueError("give n_tasks, classes_per_task or class_splits")
    if not _is_int(n_tasks) or n_tasks <= 0:
        raise ValueError(f"n_tasks must be a positive int, got {n_tasks!r}")
    n_tasks = _class_id(n_tasks, "n_tasks")
    if n_tasks > n_classes:
        raise ValueError(f"n_tasks={n_tasks} is more than the {n_classes} classes")
    if n_classes % n_tasks:
        raise ValueError(
            f"{n_classes} classes do not split evenly into {n_tasks} tasks; pass "
            "classes_per_task as a list of group sizes"
        )
    return [n_classes // n_tasks] * n_tasks
