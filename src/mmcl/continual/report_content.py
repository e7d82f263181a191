"""The content of a continual-learning run's ``report.json``: the accuracy matrix with its
metrics (`mmcl.continual.metrics`), the per-task times and memory, an instruction stream's
formats, CIDEr-D and general sets, a captioned stream's held-out sets, all checked and made
JSON-ready (numpy and torch values converted, undefined metrics None). `mmcl.continual.report`
writes it; `read_report` reads it back.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmcl.continual.generative_metrics import summarize_generative
from mmcl.continual.held_out import summarize_held_out
from mmcl.continual.metrics import (
    as_accuracy_matrix,
    as_initial_accuracy,
    per_task_metrics,
    summarize,
)

REPORT_JSON = "report.json"
FORMAT_VERSION = 1


def build_report(
    matrix: Any,
    task_names: Sequence[str],
    method_name: str,
    extra: Mapping[str, Any] | None = None,
    times: Sequence[float] | None = None,
    peak_memory: Sequence[float] | None = None,
    initial: Any = None,
    generative: Mapping[str, Any] | None = None,
    held_out: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON-ready content of ``report.json`` (see `write_report` for the arguments)."""
    array = as_accuracy_matrix(matrix)
    num_tasks = len(array)
    names = _checked_names(task_names, num_tasks)
    if not isinstance(method_name, str) or not method_name.strip():
        raise ValueError(f"method_name must be a non-empty string, got {method_name!r}")
    a0 = None if initial is None else as_initial_accuracy(initial, num_tasks)
    seconds = _checked_per_task(times, num_tasks, "times")
    memory = _checked_per_task(peak_memory, num_tasks, "peak_memory")
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(f"extra must be a mapping (a dict), got {type(extra).__name__}")
    metrics = summarize(array, a0)
    if generative is not None:
        if len(generative["rows"]) != num_tasks:
            raise ValueError(f"{len(generative['rows'])} generative rows for {num_tasks} tasks")
        metrics |= summarize_generative(generative)
    if held_out is not None:
        if len(held_out["rows"]) != num_tasks:
            raise ValueError(f"{len(held_out['rows'])} held-out rows for {num_tasks} tasks")
        metrics |= summarize_held_out(held_out)
    report = _jsonable(
        {
            "format_version": FORMAT_VERSION,
            "method": method_name,
            "tasks": names,
            "accuracy_matrix": array,
            "initial_accuracy": a0,
            "metrics": metrics,
            "per_task": per_task_metrics(array),
            "seconds_per_task": seconds,
            "total_seconds": None if seconds is None else sum(seconds),
            "peak_memory_mib": memory,
            "extra": dict(extra or {}),
        },
        "report",
    )
    if generative is not None:
        report["generative"] = _jsonable(_generative_record(generative), "generative")
    if held_out is not None:
        record = {"initial": held_out.get("initial"), "after_task": held_out["rows"]}
        report["held_out"] = _jsonable(record, "held_out")
    return report


def _generative_record(generative: Mapping[str, Any]) -> dict[str, Any]:
    """The format and CIDEr-D matrices and the general sets, row by row."""
    rows, initial = generative["rows"], generative.get("initial") or {}
    return {
        "format_matrix": [row["formats"] for row in rows],
        "initial_formats": initial.get("formats"),
        "cider_d_matrix": [row["cider_d"] for row in rows],
        "initial_cider_d": initial.get("cider_d"),
        "general": {
            "initial": initial.get("general"),
            "after_task": [row["general"] for row in rows],
        },
    }


def read_report(path: str | os.PathLike) -> dict[str, Any]:
    """Load a ``report.json`` (or the one in a folder); undefined metrics come back as NaN."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
    report = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(report, dict) or "metrics" not in report or "accuracy_matrix" not in report:
        raise ValueError(f"{path} is not a continual-learning report (no metrics / matrix)")
    report["metrics"] = {k: math.nan if v is None else v for k, v in report["metrics"].items()}
    return report


def _checked_names(task_names: Sequence[str], num_tasks: int) -> list[str]:
    if isinstance(task_names, str) or not all(isinstance(n, str) for n in task_names):
        raise ValueError(f"task_names must be a sequence of strings, got {task_names!r}")
    if len(task_names) != num_tasks:
        raise ValueError(f"{len(task_names)} task names for a {num_tasks}-task matrix")
    return list(task_names)


def _checked_per_task(values: Sequence[float] | None, num_tasks: int, what: str):
    if values is None:
        return None
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    if array.shape != (num_tasks,) or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{what} must hold one number per task ({num_tasks}), got {values!r}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(f"{what} must be finite and non-negative, got {values!r}")
    return array.tolist()


def _jsonable(value: Any, where: str) -> Any:
    """``value`` with numpy/torch values, tuples and paths converted, non-finite floats None."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _jsonable(value.item(), where)
    if isinstance(value, np.ndarray) or hasattr(value, "tolist"):  # numpy arrays, tensors
        return _jsonable(value.tolist(), where)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        converted = {}
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)):
                raise TypeError(f"{where} has a key JSON cannot hold: {key!r}")
            converted[str(key)] = _jsonable(item, f"{where}[{key!r}]")
        return converted
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, f"{where}[{index}]") for index, item in enumerate(value)]
    raise TypeError(f"{where} is not JSON-serialisable: {type(value).__name__} {value!r}")
