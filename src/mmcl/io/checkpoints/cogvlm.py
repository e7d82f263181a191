"""mmcl's CogVLM folder: what `mmcl.load(folder)` and `mmcl ask --model folder` read.

There is no Hugging Face class for CogVLM's visual expert (its published checkpoints run their
own remote code), so the folder is mmcl's own:

    config.json        {"model_type": "mmcl_cogvlm", "mmcl_config": {...the CogVLMConfig...},
                        "frozen": {"file": "../frozen.safetensors", "sha256": ..., "keys": [...]}}
    model.safetensors  the weights, less those in the frozen file when there is one
    tokenizer files    (the recipe saves the LM's tokenizer beside them)

A training run with `train.checkpoint_frozen: false` writes its frozen weights (the image
tower, the language weights of the LM) once, to its ``frozen.safetensors``; the folder refers
to that file (a path relative to the folder, and its SHA-256) instead of copying it. Loading
checks the file is there and unchanged, and names it when not.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from mmcl.io.atomic import atomic_folder, atomic_path
from mmcl.io.checkpoints.errors import CheckpointError

MODEL_TYPE = "mmcl_cogvlm"
WEIGHTS_FILE = "model.safetensors"


def is_cogvlm_folder(config: dict[str, Any]) -> bool:
    return config.get("model_type") == MODEL_TYPE


def cogvlm_from_folder(
    tensors: dict[str, torch.Tensor], config: dict[str, Any], folder: Path
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`(state dict, CogVLMConfig dict)` of a folder: its own tensors plus the frozen file's."""
    from safetensors.torch import load_file

    if not isinstance(config.get("mmcl_config"), dict):
        raise CheckpointError(f"{folder / 'config.json'}: lacks the model's mmcl_config")
    reference = config.get("frozen")
    if reference is None:
        return tensors, config["mmcl_config"]
    path = (folder / reference["file"]).resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder}: its frozen weights are in {path}, which is missing; restore that file "
            f"(the folder holds only the trained weights), or load the run folder it came from"
        )
    if _sha256(path) != reference["sha256"]:
        raise CheckpointError(
            f"{folder}: refers to frozen weights in {path}, but that file has changed since "
            f"(its SHA-256 differs); restore the original file"
        )
    frozen = load_file(str(path))
    if sorted(frozen) != sorted(reference["keys"]):
        raise CheckpointError(f"{path}: holds other tensors than {folder} refers to")
    overlap = sorted(set(frozen) & set(tensors))
    if overlap:
        raise CheckpointError(f"{folder}: {overlap[:3]} are both in the folder and in {path}")
    return {**frozen, **tensors}, config["mmcl_config"]


def save_cogvlm_folder(
    model: torch.nn.Module,
    folder: str | os.PathLike,
    frozen_file: str | os.PathLike | None = None,
    tokenizer=None,
) -> Path:
    """Writes `model` (a `CogVLM`) as a folder, replacing a previous one whole; with
    `frozen_file` (a run's frozen.safetensors, holding some of the model's parameters as they
    are now) the folder refers to it rather than copying its tensors. `tokenizer`: saved with
    its `save_pretrained`."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = Path(folder)
    state = model.state_dict()
    config: dict[str, Any] = {"model_type": MODEL_TYPE, "mmcl_config": model.config.to_dict()}
    if frozen_file is not None:
        frozen_file = Path(frozen_file)
        with safe_open(str(frozen_file), framework="pt") as handle:
            keys = sorted(handle.keys())
            unknown = sorted(set(keys) - set(state))
            if unknown:
                raise CheckpointError(
                    f"{frozen_file}: {unknown[:3]} are not the model's parameters"
                )
            # One tensor at a time: a reference must stand for the model's values as they are.
            changed = [k for k in keys if not torch.equal(handle.get_tensor(k), state[k].cpu())]
        if changed:
            raise CheckpointError(
                f"{frozen_file}: the model's {changed[:3]} differ from the file's; save the "
                f"folder without frozen_file (all weights in it)"
            )
        config["frozen"] = {
            "file": os.path.relpath(frozen_file.resolve(), folder.resolve()),
            "sha256": _sha256(frozen_file),
            "keys": keys,
        }
        state = {k: v for k, v in state.items() if k not in set(keys)}
    staging = folder.with_name(folder.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)  # a crashed earlier save's leftover
    with atomic_folder(staging) as new:
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
        save_file(tensors, str(new / WEIGHTS_FILE), metadata={"format": "pt"})
        with atomic_path(new / "config.json") as tmp:
            tmp.write_text(json.dumps(config, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(new)
    if folder.exists():  # swap: a reader sees the old folder or the new one, never a mix
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        staging.rename(folder)
        shutil.rmtree(old)
    else:
        staging.rename(folder)
    return folder


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
