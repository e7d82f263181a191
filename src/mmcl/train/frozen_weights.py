"""Frozen weights out of checkpoints: a run with `checkpoint_frozen=False` writes its frozen
parameters once, to ``frozen.safetensors`` in its folder, and every checkpoint (and the final
``model.safetensors``) holds only the trainable parameters and the buffers, plus a reference
to that file: its path and SHA-256. A bridge whose LM is frozen then saves megabytes per
checkpoint, not the LM each time.

Resuming loads the frozen file back after checking it is the one the checkpoint was made
with; a missing or changed file is an error naming it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmcl.io.atomic import atomic_path
from mmcl.train.state import ResumeError

FROZEN_FILE = "frozen.safetensors"


def frozen_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if not p.requires_grad]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict less the frozen parameters (buffers stay: they are small and may
    change in training, e.g. batch-norm statistics)."""
    frozen = set(frozen_names(model))
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_frozen_weights(model: nn.Module, folder: str | Path) -> dict[str, Any] | None:
    """Writes `model`'s frozen parameters to `folder`/frozen.safetensors; returns the
    reference the checkpoints keep (None when nothing is frozen)."""
    from safetensors.torch import save_file

    names = set(frozen_names(model))
    if not names:
        return None
    path = Path(folder) / FROZEN_FILE
    state = model.state_dict()
    tensors = {k: state[k].detach().cpu().contiguous().clone() for k in sorted(names)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    return {"path": str(path.resolve()), "sha256": file_sha256(path), "keys": sorted(names)}


def load_frozen_weights(model: nn.Module, reference: dict[str, Any], source: str) -> None:
    """Loads the frozen file a checkpoint (`source`) refers to into `model`, after checking
    it is unchanged."""
    from safetensors.torch import load_file

    path = Path(reference["path"])
    if not path.is_file():
        raise FileNotFoundError(
            f"{source} refers to its frozen weights in {path}, which is missing; restore that "
            f"file (the checkpoint holds only the trainable weights)"
        )
    if file_sha256(path) != reference["sha256"]:
        raise ResumeError(
            f"{source} refers to frozen weights in {path}, but that file has changed since "
            f"(its SHA-256 differs); restore the original file"
        )
    tensors = load_file(str(path))
    expected = set(reference["keys"])
    if set(tensors) != expected:
        raise ResumeError(f"{path}: holds other tensors than {source} expects")
    missing = expected - set(model.state_dict())
    if missing:
        raise ResumeError(f"{path}: tensors {sorted(missing)[:3]} are not in the model")
    model.load_state_dict(tensors, strict=False)


def load_model_state(model: nn.Module, state: dict[str, Any], source: str) -> None:
    """Restores a checkpoint's model: whole, or trainable weights plus the frozen file."""
    reference = state.get("frozen")
    if reference is None:
        model.load_state_dict(state["model"])
        return
    load_frozen_weights(model, reference, source)
    result = model.load_state_dict(state["model"], strict=False)
    missing = set(result.missing_keys) - set(reference["keys"])
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"missing keys {sorted(missing)[:3]}, unexpected keys {result.unexpected_keys[:3]}"
        )


def save_trainable_safetensors(model: nn.Module, path: str | Path, reference: dict) -> Path:
    """The trained model without its frozen parameters, the reference to them in the
    metadata (``mmcl_frozen``), beside the model's config (``mmcl_config``)."""
    import json

    from safetensors.torch import save_file

    metadata = {"format": "pt", "mmcl_frozen": json.dumps(reference)}
    if getattr(model, "config", None) is not None and hasattr(model.config, "to_dict"):
        metadata["mmcl_config"] = json.dumps(model.config.to_dict())
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in trainable_state(model).items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)
