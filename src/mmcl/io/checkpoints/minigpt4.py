"""MiniGPT-4 folders: mmcl's own layout (no Hugging Face class holds a MiniGPT-4), described
in `mmcl.models.bridges.minigpt4`: ``model.safetensors`` (mmcl safetensors, the config in its
metadata) beside the LM's tokenizer files.

Reading checks that the file holds each of the model's four parts, so that a folder written
by hand without, say, its projection is refused in one line naming the part, rather than
with a list of missing keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mmcl.io.checkpoints.errors import CheckpointError

PARTS = {  # state-dict prefix: what it is
    "visual.": "image tower",
    "qformer.": "Q-Former",
    "language_projection.": "projection (the one trained linear layer)",
    "language_model.": "language model",
}


def is_minigpt4_config(config: dict[str, Any]) -> bool:
    return config.get("architecture") == "minigpt4"


def check_parts(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse a MiniGPT-4 file that lacks a part (every tensor of it)."""
    for prefix, name in PARTS.items():
        if not any(key.startswith(prefix) for key in tensors):
            raise CheckpointError(
                f"{source}: a MiniGPT-4 without its {name}: no {prefix}* tensors; write the "
                f"folder whole with mmcl.io.checkpoints.minigpt4.save_minigpt4_folder(model, "
                f"tokenizer, FOLDER) (the minigpt4-scenes recipes' hf/ folder is one)"
            )


def save_minigpt4_folder(model, tokenizer, folder: str | os.PathLike) -> Path:
    """Write `folder`: the model (``model.safetensors``) and `tokenizer` (its
    `save_pretrained` files). The files are written into `folder` (created if needed); the
    bridges recipes stage it and rename it whole."""
    from mmcl.io.checkpoints.export import save_safetensors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(model, folder / "model.safetensors")
    tokenizer.save_pretrained(folder)
    return folder
