"""What a `Trainer` saves in each checkpoint, and how a resumed run takes it back.

A checkpoint holds the model (or, with `checkpoint_frozen=False`, its trainable weights and a
reference to the frozen ones: `mmcl.train.frozen_weights`), optimiser, scheduler, grad scaler, every RNG state, the data
position, the schedule it was made under, the objective's state and each plugin's state under
the plugin's name. Restoring it makes the resumed run compute exactly what the uninterrupted
one would have (the resume tests compare the two loss curves).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmcl.train.frozen_weights import load_model_state, trainable_state
from mmcl.train.plugins import load_plugin_states, plugin_states
from mmcl.train.state import (
    ResumeError,
    capture_rng_state,
    check_schedule,
    load_training_state,
    restore_rng_state,
)

if TYPE_CHECKING:
    from mmcl.train.engine import Trainer


def capture_trainer_state(trainer: Trainer) -> dict[str, Any]:
    objective = trainer.objective
    frozen = trainer.frozen_reference
    return {
        "model": trainer.model.state_dict() if frozen is None else trainable_state(trainer.model),
        "frozen": frozen,
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "rng": capture_rng_state(),
        "step": trainer.step,
        "data": {
            "epoch": trainer.epoch,
            "items_consumed": trainer.items_consumed,
            # Batch counts, unlike sample counts, are the same on every rank.
            "stream_batches": trainer.train_data.batches_consumed if trainer.streaming else None,
        },
        "skipped": trainer.skipped,
        "schedule": trainer.schedule(),
        "config": trainer.config.to_dict(),
        "plugins": plugin_states(trainer.plugins),
        "objective": objective.state_dict() if hasattr(objective, "state_dict") else None,
    }


def restore_trainer_state(trainer: Trainer, path: Path) -> None:
    """Loads the checkpoint at `path` into a set-up `trainer` (its optimiser and scheduler
    built), refusing a different schedule unless `allow_schedule_change` is set."""
    state = load_training_state(path)
    config = trainer.config
    if not config.allow_schedule_change:
        check_schedule(state["schedule"], trainer.schedule(), str(path))
    try:
        load_model_state(trainer.model, state, str(path))
    except RuntimeError as error:
        raise ResumeError(f"{path}: the checkpoint's model does not fit: {error}") from error
    trainer.frozen_reference = state.get("frozen")
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    if config.allow_schedule_change:
        # An explicit schedule change: continue the *new* schedule from the saved step.
        for group in trainer.optimizer.param_groups:
            group["initial_lr"] = config.lr
        trainer.scheduler.base_lrs = [config.lr] * len(trainer.optimizer.param_groups)
        trainer.scheduler.last_epoch = state["step"] - 1
        trainer.scheduler.step()
    trainer.scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"])
    trainer.step = state["step"]
    trainer.epoch = state["data"]["epoch"]
    trainer.items_consumed = state["data"]["items_consumed"]
    if trainer.streaming:
        trainer.train_data.resume_from(
            trainer.epoch, batches_consumed=state["data"]["stream_batches"]
        )
    trainer.skipped = state.get("skipped", 0)
    if state.get("objective") is not None and hasattr(trainer.objective, "load_state_dict"):
        trainer.objective.load_state_dict(state["objective"])
    load_plugin_states(trainer.plugins, state.get("plugins", {}), str(path))
