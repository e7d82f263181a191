"""Settings of a training run: one dataclass, loadable from YAML and overridable by flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")
LOSSES = ("clip", "siglip")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step")


@dataclass
class TrainConfig:
    # length: `steps` (optimizer steps) wins over `epochs` when both are set
    epochs: int = 1
    steps: int | None = None
    batch_size: int = 64  # per rank and micro-batch; global batch = this x ranks x accumulation
    accumulation_steps: int = 1
    # optimisation
    optimizer: str = "adamw"  # sgd: plain SGD (+ momentum), as the classic CL protocols use
    momentum: float = 0.0  # sgd only
    lr: float = 5e-4
    weight_decay: float = 0.2
    schedule: str = "cosine"  # cosine with warm-up, or step: x lr_decay at each lr_decay_at
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine only
    lr_decay_at: tuple[float, ...] = ()  # step only: fractions of the run, e.g. (0.7, 0.9)
    lr_decay: float = 0.1
    grad_clip_norm: float | None = None
    loss: str = "clip"
    grad_cache_chunk: int | None = None  # embed in chunks of this size (gradient caching)
    # numerics and memory
    precision: str = "fp32"  # bf16: autocast on CPU and GPU; fp16: autocast + grad scaler (GPU)
    grad_checkpointing: bool = False
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
    resume: str | None = None  # a checkpoint path, or "latest" in output_dir
    allow_schedule_change: bool = False
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.loss not in LOSSES:
            problems.append(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("epochs", "batch_size", "accumulation_steps", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("steps", "eval_every", "checkpoint_every", "grad_cache_chunk"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be at least 1 (or unset), got {value}")
        if self.lr <= 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum must be in [0, 1), got {self.momentum}")
        self.lr_decay_at = tuple(float(x) for x in self.lr_decay_at)
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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output_dir) / "checkpoints"
