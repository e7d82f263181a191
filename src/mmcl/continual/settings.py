"""The settings that shape a continual run's results, and how two sets of them differ.

A run records them in ``progress.json`` when it starts; `--resume` and `compare` hold a new
request against that record, so every task of a run (and every row of a comparison) was
trained the same way, and the report can say how.

Recorded: the method and every one of its arguments (defaults included), the training
settings of `TrainConfig` except those that only decide bookkeeping (`NOT_RESULTS`), and what
the caller adds (scenario and its arguments, model).

>>> differences({"training": {"lr": 1e-4, "steps": 30}}, {"training": {"lr": 0.05, "steps": 30}})
['training.lr 0.0001 -> 0.05']
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

# TrainConfig fields that change where files go or what is shown, not what is learnt.
NOT_RESULTS = frozenset(
    {
        "output_dir",
        "progress",
        "tensorboard",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "resume",
        "allow_schedule_change",
        "workers",  # data order and augmentation seeds do not depend on the process count
    }
)


# Settings added after runs were first recorded, with the value that keeps a run's results as
# they were: a record made before a setting existed was made with that value, so it matches a
# request that asks for it (and an interrupted run of an older mmcl still resumes).
ADDED_LATER = {"scenario_args.shuffle_order": False}


def training_settings(config) -> dict[str, Any]:
    """The `TrainConfig` fields that shape results, as JSON values."""
    values = dataclasses.asdict(config)
    return as_json({k: v for k, v in values.items() if k not in NOT_RESULTS})


def run_settings(method, config, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything recorded about a run: `extra` (scenario, model, ...), method, training."""
    from mmcl.continual.methods import method_arguments

    return as_json(
        {
            **(extra or {}),
            "method": method.name,
            "method_args": method_arguments(method),
            "training": training_settings(config),
        }
    )


def as_json(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists), so records compare equal."""
    return json.loads(json.dumps(value, default=str))


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`"key old -> new"` for each setting (nested keys joined by dots) that differs; an
    `ADDED_LATER` setting missing from `old` counts as its value there.

    >>> differences({"scenario_args": {"seed": 1}}, {"scenario_args": {"seed": 1, "shuffle_order": False}})
    []
    """
    flat_old, flat_new = _flatten(as_json(old)), _flatten(as_json(new))
    missing = object()
    changed = []
    for key in [*flat_old, *(k for k in flat_new if k not in flat_old)]:
        before = flat_old.get(key, ADDED_LATER.get(key, missing))
        after = flat_new.get(key, missing)
        if before != after:
            shown = ["(unset)" if v is missing else json.dumps(v) for v in (before, after)]
            changed.append(f"{key} {shown[0]} -> {shown[1]}")
    return changed


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}
