"""Continual-learning metrics: pure functions of the accuracy matrix.

``A[i, j]`` is the accuracy on task ``j`` after training task ``i`` (``T x T``, 0-based), every
entry included: ``j > i`` is zero-shot accuracy on a task not trained yet, ``j == i`` is the
accuracy just after learning the task, ``j < i`` is what is left of an earlier task. The optional
vector ``a0`` (``initial``) holds the accuracies of the model before any training.

Units are preserved: pass fractions in [0, 1] and get fractions back, pass percentages in
[0, 100] and get percentages back (entries outside [0, 100] are rejected, mixing is not
detected). Numpy arrays, torch tensors and nested lists are accepted; results are Python floats.

Metrics that compare an earlier row with a later one (`transfer`, `backward_transfer`,
`forgetting_max`, `forgetting_first`, `forward_transfer`) are undefined for a single task and
return NaN there rather than raising, so that `summarize` works after the first task of a run.

>>> A = [[80, 30, 10],
...      [83, 90, 40],
...      [60, 84, 72]]
>>> summary = summarize(A, initial=[51, 24, 15])
>>> {name: round(value, 4) for name, value in summary.items()}  # doctest: +NORMALIZE_WHITESPACE
{'transfer': 27.5, 'average_accuracy': 61.0, 'last_accuracy': 72.0, 'backward_transfer': -13.0,
 'forgetting_max': 14.5, 'forgetting_first': 13.0, 'forward_transfer': 15.5,
 'initial_average': 30.0, 'initial_transfer': 19.5}
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "as_accuracy_matrix",
    "as_initial_accuracy",
    "average_accuracy",
    "backward_transfer",
    "forgetting_first",
    "forgetting_max",
    "forward_transfer",
    "last_accuracy",
    "per_task_metrics",
    "summarize",
    "transfer",
]

MAX_ACCURACY = 100.0  # entries must lie in [0, 100]: fractions and percentages both fit
NAN = float("nan")


def as_accuracy_matrix(matrix: Any) -> np.ndarray:
    """The matrix as a float64 numpy array, after checking it is a valid accuracy matrix.

    Raises ValueError unless it is 2-D, square, non-empty (``T >= 1``), finite and within
    [0, 100].

    >>> as_accuracy_matrix([[0.5]]).shape
    (1, 1)
    """
    array = _as_float_array(matrix, "accuracy matrix")
    if array.ndim != 2:
        raise ValueError(f"the accuracy matrix must be 2-D (T x T), got shape {array.shape}")
    if array.shape[0] != array.shape[1]:
        raise ValueError(
            f"the accuracy matrix must be square (row i: after training task i, column j: "
            f"task j), got shape {array.shape}"
        )
    if array.shape[0] == 0:
        raise ValueError("the accuracy matrix must hold at least one task (T >= 1)")
    _check_range(array, "accuracy matrix")
    return array


def as_initial_accuracy(initial: Any, num_tasks: int) -> np.ndarray:
    """The initial accuracies ``a0`` as a float64 vector of length ``num_tasks``, checked.

    >>> as_initial_accuracy([0.5, 0.25], 2).tolist()
    [0.5, 0.25]
    """
    array = _as_float_array(initial, "initial accuracy")
    if array.shape != (num_tasks,):
        raise ValueError(
            f"the initial accuracies must be a vector with one entry per task ({num_tasks}), "
            f"got shape {array.shape}"
        )
    _check_range(array, "initial accuracy")
    return array


def average_accuracy(matrix: Any) -> float:
    """ "Avg" of ZSCL (Zheng et al., ICCV 2023) on the MTIL benchmark: the mean of all entries.

    ``Avg = 1/T^2 * sum_{i, j} A[i, j]``, zero-shot entries above the diagonal included, so it
    rewards both keeping old tasks and not losing zero-shot ability on future ones. (This is
    not the "average accuracy" of GEM / Chaudhry et al., which is `last_accuracy`.)

    >>> average_accuracy([[0.8, 0.2], [0.6, 0.9]])
    0.625
    """
    return float(as_accuracy_matrix(matrix).mean())


def last_accuracy(matrix: Any) -> float:
    """ "Last" of ZSCL: the mean of the last row, i.e. every task after training all of them.

    ``Last = 1/T * sum_j A[T-1, j]``; the "average accuracy" ACC of Lopez-Paz & Ranzato
    (GEM, NeurIPS 2017) and A_T of Chaudhry et al. (ECCV 2018).

    >>> last_accuracy([[0.8, 0.2], [0.6, 0.9]])
    0.75
    """
    return float(as_accuracy_matrix(matrix)[-1].mean())


def transfer(matrix: Any) -> float:
    """ "Transfer" of ZSCL (Zheng et al., ICCV 2023): zero-shot accuracy on tasks not yet trained.

    For each task ``j >= 1`` (0-based), the mean of the entries above the diagonal in its
    column, then the mean over those tasks::

        Transfer = 1/(T-1) * sum_{j=1}^{T-1} ( 1/j * sum_{i=0}^{j-1} A[i, j] )

    The initial accuracies ``a0`` are not part of it, as in ZSCL, whose tables give the
    initial model as a separate "zero-shot" row (``mean(a0[1:])``, `summarize`'s
    ``initial_transfer``). NaN when ``T == 1``.

    >>> transfer([[0.8, 0.2, 0.1], [0.6, 0.9, 0.3], [0.5, 0.7, 0.9]])
    0.2
    """
    return _mean(per_task_metrics(matrix)["transfer"][1:])


def backward_transfer(matrix: Any) -> float:
    """BWT of Lopez-Paz & Ranzato (GEM, NeurIPS 2017): final minus just-learned accuracy.

    ``BWT = 1/(T-1) * sum_{j=0}^{T-2} (A[T-1, j] - A[j, j])``; negative values are forgetting,
    positive values mean later tasks helped earlier ones. NaN when ``T == 1``.

    >>> round(backward_transfer([[0.8, 0.2], [0.6, 0.9]]), 4)
    -0.2
    """
    array = as_accuracy_matrix(matrix)
    last = len(array) - 1
    return _mean(array[last, :last] - np.diag(array)[:last])


def forgetting_max(matrix: Any) -> float:
    """Forgetting of Chaudhry et al. (RWalk, ECCV 2018): best earlier accuracy minus final.

    ``F = 1/(T-1) * sum_{j=0}^{T-2} ( max_{l=j}^{T-2} A[l, j] - A[T-1, j] )``.

    Chaudhry et al. write the maximum over every earlier step ``l in {0, ..., T-2}``; in their
    class-incremental setting a task is not measured (or is at chance) before it is learned,
    so the rows ``l < j`` never matter there. With a vision-language model they do hold real
    zero-shot accuracies, and counting them would call a drop below the *pre-training*
    zero-shot level "forgetting" of a task that was never learned; so, like the common
    implementations (which fill unseen tasks with zeros), only the rows from learning task
    ``j`` on count: ``l in {j, ..., T-2}``. Hence ``forgetting_max >= forgetting_first``.
    Not clipped at 0: a task that keeps improving has negative forgetting. NaN when
    ``T == 1``.

    >>> round(forgetting_max([[0.5, 0.1, 0.1], [0.7, 0.8, 0.1], [0.4, 0.8, 0.9]]), 4)
    0.15
    """
    array = as_accuracy_matrix(matrix)
    last = len(array) - 1
    best = [array[j:last, j].max() for j in range(last)]
    return _mean(np.asarray(best) - array[last, :last])


def forgetting_first(matrix: Any) -> float:
    """Forgetting as the accuracy just after learning a task minus the final accuracy.

    ``F_first = 1/(T-1) * sum_{j=0}^{T-2} (A[j, j] - A[T-1, j])`` (the per-task forgetting of
    e.g. Avalanche's ``StreamForgetting``); it equals ``-backward_transfer`` exactly, and is
    never above `forgetting_max`. NaN when ``T == 1``.

    >>> round(forgetting_first([[0.5, 0.1, 0.1], [0.7, 0.8, 0.1], [0.4, 0.8, 0.9]]), 4)
    0.05
    """
    return -backward_transfer(matrix)


def forward_transfer(matrix: Any, initial: Any) -> float:
    """FWT of Lopez-Paz & Ranzato (GEM, NeurIPS 2017): what training helps a task not yet seen.

    ``FWT = 1/(T-1) * sum_{j=1}^{T-1} (A[j-1, j] - a0[j])``: accuracy on task ``j`` just before
    training it, relative to the initial model's (GEM uses a randomly initialised model; for a
    pre-trained CLIP ``a0`` is its zero-shot accuracy, so negative FWT means the zero-shot
    ability on future tasks is being eroded). NaN when ``T == 1``.

    >>> round(forward_transfer([[0.8, 0.4], [0.6, 0.9]], initial=[0.3, 0.5]), 4)
    -0.1
    """
    array = as_accuracy_matrix(matrix)
    a0 = as_initial_accuracy(initial, len(array))
    before_training = np.diag(array, k=1)  # A[j-1, j] for j = 1 .. T-1
    return _mean(before_training - a0[1:])


def per_task_metrics(matrix: Any) -> dict[str, np.ndarray]:
    """Per-task columns of ZSCL's tables: ``transfer``, ``average`` and ``last``, each ``(T,)``.

    ``transfer[j] = mean_{i<j} A[i, j]`` (NaN for ``j = 0``, never zero-shot),
    ``average[j] = mean_i A[i, j]``, ``last[j] = A[T-1, j]``. Their means over tasks are
    `transfer` (over ``j >= 1``), `average_accuracy` and `last_accuracy`.

    >>> per_task_metrics([[0.8, 0.2], [0.6, 0.9]])["transfer"].tolist()
    [nan, 0.2]
    """
    array = as_accuracy_matrix(matrix)
    above_diagonal = [array[:j, j].mean() if j else NAN for j in range(len(array))]
    return {
        "transfer": np.asarray(above_diagonal),
        "average": array.mean(axis=0),
        "last": array[-1].copy(),
    }


def summarize(matrix: Any, initial: Any = None) -> dict[str, float]:
    """Every metric of this module in one dict, with the same keys whatever the input.

    Keys: ``transfer``, ``average_accuracy``, ``last_accuracy``, ``backward_transfer``,
    ``forgetting_max``, ``forgetting_first``, ``forward_transfer`` and, describing the initial
    model as ZSCL's "zero-shot" row does, ``initial_average`` (``mean(a0)``) and
    ``initial_transfer`` (``mean(a0[1:])``, the Transfer of a model that learns nothing).
    Undefined values (``T == 1``; no ``initial``) are NaN.

    >>> summarize([[0.5]])["average_accuracy"], summarize([[0.5]])["forgetting_max"]
    (0.5, nan)
    """
    array = as_accuracy_matrix(matrix)
    a0 = None if initial is None else as_initial_accuracy(initial, len(array))
    return {
        "transfer": transfer(array),
        "average_accuracy": average_accuracy(array),
        "last_accuracy": last_accuracy(array),
        "backward_transfer": backward_transfer(array),
        "forgetting_max": forgetting_max(array),
        "forgetting_first": forgetting_first(array),
        "forward_transfer": NAN if a0 is None else forward_transfer(array, a0),
        "initial_average": NAN if a0 is None else float(a0.mean()),
        "initial_transfer": NAN if a0 is None else _mean(a0[1:]),
    }


def _as_float_array(values: Any, what: str) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, on any device, in any float dtype
        values = values.detach().cpu().double().numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"the {what} must be a rectangular array of numbers, got {values!r}"
        ) from error
    return array


def _check_range(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        raise ValueError(f"the {what} holds NaN or infinite entries")
    if array.size == 0:
        return
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > MAX_ACCURACY:
        raise ValueError(
            f"the {what} must hold accuracies in [0, 1] or [0, 100], got values in "
            f"[{low:g}, {high:g}]"
        )


def _mean(values: np.ndarray) -> float:
    """The mean as a Python float, NaN (without numpy's warning) when there is nothing."""
    return float(np.mean(values)) if len(values) else math.nan
