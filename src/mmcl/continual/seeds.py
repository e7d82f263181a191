"""One method run with several seeds, summarised: the mean and sample standard deviation of
every metric. Pure functions of the runs' reports.

A seed sets the stream (for a class-incremental stream the class order; for every built-in
stream which items each task draws), the training (batch order, augmentation) and the
initialisation of what is random at the start (a randomly initialised model, the adapters,
prompts or heads a method adds). The standard deviation is the sample one (divided by
n - 1); with one seed it is undefined (NaN, shown as "—").

>>> runs = {0: {"metrics": {"last_accuracy": 0.5}, "total_seconds": 10.0},
...         1: {"metrics": {"last_accuracy": 0.7}, "total_seconds": 14.0}}
>>> summary = aggregate_seeds(runs)
>>> round(summary["metrics"]["last_accuracy"], 4), round(summary["metrics_std"]["last_accuracy"], 4)
(0.6, 0.1414)
>>> summary["seeds"], summary["total_seconds"]
([0, 1], 12.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

NAN = float("nan")


def parse_seeds(text: str) -> list[int]:
    """`"3"` -> `[0, 1, 2]` (that many seeds, from 0); `"0,5,7"` -> `[0, 5, 7]`.

    >>> parse_seeds("3"), parse_seeds("1, 4")
    ([0, 1, 2], [1, 4])
    """
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    try:
        numbers = [int(item) for item in items]
    except ValueError:
        raise ValueError(
            f"--seeds {text!r}: give a count (e.g. 3, for seeds 0, 1, 2) or a comma-separated "
            f"list of integer seeds (e.g. 0,1,2)"
        ) from None
    if len(numbers) == 1 and "," not in str(text):
        if numbers[0] < 1:
            raise ValueError(f"--seeds {text!r}: the number of seeds must be at least 1")
        return list(range(numbers[0]))
    if not numbers or len(set(numbers)) != len(numbers) or min(numbers) < 0:
        raise ValueError(
            f"--seeds {text!r}: the seeds must be distinct non-negative integers (e.g. 0,1,2)"
        )
    return numbers


def mean_and_std(values: Sequence[float | None]) -> tuple[float, float]:
    """The mean and sample standard deviation (n - 1) of `values`; NaN where undefined: a
    missing or NaN value makes both NaN (a metric undefined on one seed is not averaged
    over the others), and one value has no standard deviation.

    >>> mean_and_std([1.0, 2.0, 3.0])
    (2.0, 1.0)
    """
    numbers = [NAN if v is None else float(v) for v in values]
    if not numbers or any(math.isnan(v) for v in numbers):
        return NAN, NAN
    mean = sum(numbers) / len(numbers)
    if len(numbers) < 2:
        return mean, NAN
    variance = sum((v - mean) ** 2 for v in numbers) / (len(numbers) - 1)
    return mean, math.sqrt(variance)


def aggregate_seeds(reports: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """One method's runs by seed -> ``{"metrics": means, "metrics_std": sample stds,
    "total_seconds": mean, "total_seconds_std", "seeds": [...], "runs": reports}``.
    Every metric any run reports is summarised (a metric missing from a run is NaN)."""
    if not reports:
        raise ValueError("aggregate_seeds needs the report of at least one seed")
    runs = list(reports.values())
    keys = list(dict.fromkeys(key for run in runs for key in run.get("metrics", {})))
    means, stds = {}, {}
    for key in keys:
        means[key], stds[key] = mean_and_std([run.get("metrics", {}).get(key) for run in runs])
    seconds = [run.get("total_seconds") for run in runs]
    mean_seconds, std_seconds = mean_and_std(seconds)
    first = runs[0]
    return {
        "method": first.get("method"),
        "tasks": first.get("tasks"),
        "metrics": means,
        "metrics_std": stds,
        "total_seconds": None if math.isnan(mean_seconds) else mean_seconds,
        "total_seconds_std": None if math.isnan(std_seconds) else std_seconds,
        "seeds": list(reports),
        "runs": dict(reports),
    }
