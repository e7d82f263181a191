"""Writing a model in mmcl's own safetensors layout, open_clip's layout, or Hugging Face's.

Each writer takes any object with `state_dict()` and `config.to_dict()` (an `mmcl` CLIP) and
writes atomically: a crash never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from mmcl.io.atomic import atomic_path
from mmcl.io.checkpoints import huggingface, openai

# Metadata key under which an mmcl safetensors file carries its architecture.
MMCL_CONFIG_KEY = "mmcl_config"


def _plain_tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses views and shared storage; save independent contiguous copies.
    return {key: value.detach().cpu().contiguous().clone() for key, value in state_dict.items()}


def save_safetensors(model, path: str | os.PathLike) -> Path:
    """mmcl layout with the architecture in the file's metadata, so `mmcl.load(path)` works.
    A model without an mmcl config (e.g. a plain classifier) is saved as bare tensors."""
    metadata = {"format": "pt"}
    if getattr(model, "config", None) is not None:
        metadata[MMCL_CONFIG_KEY] = json.dumps(model.config.to_dict())
    with atomic_path(path) as tmp:
        save_file(_plain_tensors(model.state_dict()), str(tmp), metadata=metadata)
    return Path(path)


def save_open_clip(model, path: str | os.PathLike) -> Path:
    """open_clip / OpenAI state-dict layout; `.safetensors` or a pickled `.pt`/`.bin`."""
    tensors = _plain_tensors(openai.to_openai_layout(model.state_dict()))
    with atomic_path(path) as tmp:
        if str(path).endswith(".safetensors"):
            save_file(tensors, str(tmp))
        else:
            torch.save(tensors, tmp)
    return Path(path)


def save_huggingface(model, directory: str | os.PathLike) -> Path:
    """A `CLIPModel` folder (config.json + model.safetensors) for `transformers`."""
    config = huggingface.config_to_huggingface(model.config.to_dict())
    tensors = _plain_tensors(huggingface.to_huggingface(model.state_dict()))
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        if target.exists():  # replace a previous export only once the new one is complete
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
