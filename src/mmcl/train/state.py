"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint holds the model, optimiser, scheduler, grad scaler, every RNG state, the data
position and the schedule it was made under. Loading uses `weights_only=True`: a checkpoint is
data, never code.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcl.io.atomic import atomic_path

# Changing any of these mid-run changes what the learning-rate schedule means.
SCHEDULE_KEYS = ("total_steps", "warmup_steps", "lr", "global_batch_size", "accumulation_steps")


class ResumeError(ValueError):
    """A checkpoint cannot be resumed under the current settings."""


def capture_rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    state = {
        "python": _to_plain(random.getstate()),
        "numpy": {
            "kind": numpy_state[0],
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_training_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged pickle
        raise ResumeError(f"{path}: unreadable training checkpoint ({error})") from error
    missing = [k for k in ("model", "optimizer", "scheduler", "step", "schedule") if k not in state]
    if missing:
        raise ResumeError(f"{path}: not an mmcl training checkpoint (missing {missing})")
    return state


def check_schedule(saved: dict[str, Any], current: dict[str, Any], source: str) -> None:
    """Refuse to resume under a different schedule: a silent LR jump is worse than an error."""
    changed = {
        k: (saved.get(k), current.get(k)) for k in SCHEDULE_KEYS if saved.get(k) != current.get(k)
    }
    if changed:
        details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in changed.items())
        raise ResumeError(
            f"{source} was made under a different schedule ({details}). Resuming would change "
            f"the learning rate mid-run; pass allow_schedule_change=True "
            f"(--allow-schedule-change) if that is what you want."
        )


def _to_plain(value):
    return [_to_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuple(value):
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value
