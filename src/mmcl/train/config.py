"""Settings of a training run: one dataclass, loadable from YAML and overridable by flags.

Each setting is checked against its type annotation when the settings are made (from a recipe,
`--set`, or Python), so `--set train.lr=abc` fails at once, naming the key, the value and the
type it needs, not in the middle of a run.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mmcl.choices import Precision

# coca, albef, blip: each model's own objective (contrastive plus captioning / ITM / MLM / LM)
Loss = Literal["clip", "siglip", "coca", "albef", "blip"]
Optimizer = Literal["adamw", "sgd"]
Schedule = Literal["cosine", "step"]
PRECISIONS = typing.get_args(Precision)
LOSSES = typing.get_args(Loss)
OPTIMIZERS = typing.get_args(Optimizer)
SCHEDULES = typing.get_args(Schedule)


@dataclass
class TrainConfig:
    # length: `steps` (optimizer steps) wins over `epochs` when both are set
    epochs: int = 1
    steps: int | None = None
    batch_size: int = 64  # per rank and micro-batch; global batch = this x ranks x accumulation
    shuffle: bool = True  # False: items in order every epoch (to match another loop batch by batch)
    accumulation_steps: int = 1
    # optimisation
    optimizer: Optimizer = "adamw"  # sgd: plain SGD (+ momentum), as the classic CL protocols use
    momentum: float = 0.0  # sgd only
    lr: float = 5e-4
    weight_decay: float = 0.2
    schedule: Schedule = "cosine"  # cosine with warm-up, or step: x lr_decay at each lr_decay_at
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine only
    lr_decay_at: tuple[float, ...] = ()  # step only: fractions of the run, e.g. (0.7, 0.9)
    lr_decay: float = 0.1
    grad_clip_norm: float | None = None
    loss: Loss = "clip"
    albef_queue_size: int = 65536  # loss albef: features in each ITC queue (ALBEF's 65,536)
    albef_momentum: float = 0.995  # loss albef: of the momentum model (ALBEF's 0.995)
    grad_cache_chunk: int | None = None  # embed in chunks of this size (gradient caching)
    # numerics and memory
    precision: Precision = (
        "fp32"  # bf16: autocast on CPU and GPU; fp16: autocast + grad scaler (GPU)
    )
    grad_checkpointing: bool = False
    # False: frozen parameters go once to frozen.safetensors; checkpoints and model.safetensors
    # keep the trainable ones and a reference (path + SHA-256) to that file (train/frozen_weights)
    checkpoint_frozen: bool = True
    # freezing (LiT: lock_image=True)
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    lock_text: bool = False
    lock_text_unlocked_groups: int = 0
    # data loading
    workers: int = 0
    seed: int = 0
    # bookkeeping
    output_dir: str = "runs/mmcl"
    log_every: int = 10
    eval_every: int | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    resume: str | None = None  # a checkpoint path, or "latest" in output_dir (see run_folder)
    allow_schedule_change: bool = False
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        wrong = []
        for field in dataclasses.fields(self):
            try:
                setattr(self, field.name, _typed(getattr(self, field.name), hints[field.name]))
            except TypeError:
                value, expected = getattr(self, field.name), _describe(hints[field.name])
                wrong.append(f"{field.name}={value!r} is not {expected}")
        if wrong:  # range checks below assume the types are right
            raise ValueError("invalid training settings: " + "; ".join(wrong))
        problems = []
        for name in (
            "epochs",
            "batch_size",
            "accumulation_steps",
            "keep_checkpoints",
            "log_every",
            "albef_queue_size",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("steps", "eval_every", "checkpoint_every", "grad_cache_chunk"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be at least 1 (or unset), got {value}")
        if self.lr <= 0:
            problems.append(f"lr must be positive, got {self.lr}")
        for name in ("momentum", "albef_momentum"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if any(not 0 < x < 1 for x in self.lr_decay_at) or list(self.lr_decay_at) != sorted(
            self.lr_decay_at
        ):
            problems.append(
                f"lr_decay_at must be increasing fractions of the run in (0, 1), "
                f"got {list(self.lr_decay_at)}"
            )
        if self.lr_decay_at and self.schedule != "step":
            problems.append("lr_decay_at needs schedule 'step'")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 < self.lr_decay <= 1:
            problems.append(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if problems:
            raise ValueError("invalid training settings: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "training settings") -> TrainConfig:
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected key: value settings, got {values!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            near = sorted({m for k in unknown for m in difflib.get_close_matches(k, known, 3)})
            hint = f"did you mean {near}?" if near else f"valid settings: {known}"
            raise ValueError(f"{source}: unknown setting(s) {unknown}; {hint}")
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output_dir) / "checkpoints"


# A YAML reader reads `1e-3` (no dot) as a string; numbers written so are still numbers.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _typed(value: Any, hint: Any) -> Any:
    """`value` as a setting of type `hint` (converting only losslessly), else TypeError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _typed(value, option)
            except TypeError:
                pass
        raise TypeError(hint)
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise TypeError(hint)
    if origin is tuple:  # tuple[float, ...]: a YAML list
        if not isinstance(value, (list, tuple)):
            raise TypeError(hint)
        return tuple(_typed(item, args[0]) for item in value)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):  # output_dir=Path(...) in Python
            return os.fspath(value)
    raise TypeError(hint)


def _describe(hint: Any) -> str:
    """The type `hint` in words, for error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        words = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(words + (["null"] if type(None) in args else []))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0]).removeprefix('a ')}s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]
