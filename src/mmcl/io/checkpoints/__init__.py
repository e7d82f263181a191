"""Checkpoint formats: read OpenAI, open_clip, Hugging Face and mmcl files; write them back.

Every reader returns tensors in mmcl's layout (`visual.*`, `text.*`, `logit_scale`; CoCa adds
`text_decoder.*`) and, where the file says or the weights show it, the architecture as an
open_clip-style config dict.

>>> from mmcl.io.checkpoints import load_checkpoint   # doctest: +SKIP
>>> checkpoint = load_checkpoint("ViT-B-32.pt")        # doctest: +SKIP
>>> checkpoint.format, checkpoint.config["embed_dim"]  # doctest: +SKIP
('openai', 512)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmcl.io.checkpoints import blip, blip2, coca, cogvlm, huggingface, llava, minigpt4, openai
from mmcl.io.checkpoints.errors import CheckpointError, describe_mismatch
from mmcl.io.checkpoints.export import (
    HF_EXPORT_FILES,
    MMCL_CONFIG_KEY,
    check_export_target,
    save_huggingface,
    save_open_clip,
    save_safetensors,
)
from mmcl.io.checkpoints.files import read_checkpoint

__all__ = [
    "HF_EXPORT_FILES",
    "CheckpointError",
    "LoadedCheckpoint",
    "check_export_target",
    "describe_mismatch",
    "load_checkpoint",
    "save_huggingface",
    "save_open_clip",
    "save_safetensors",
]


@dataclass
class LoadedCheckpoint:
    path: Path
    # "mmcl", "openai", "open_clip", "open_clip_coca", "huggingface", "huggingface_blip" or
    # "huggingface_llava" or "huggingface_blip2" or "mmcl_cogvlm"
    format: str
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] | None  # None when neither the file nor the weights tell it

    @property
    def config_is_inferred(self) -> bool:
        return self.format in ("openai", "open_clip", "open_clip_coca")


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    raw = read_checkpoint(path)
    source = str(raw.path)
    if raw.container == "huggingface" and blip.is_blip_config(raw.metadata):
        return LoadedCheckpoint(
            raw.path,
            "huggingface_blip",
            blip.blip_from_huggingface(raw.tensors, raw.metadata, source),
            blip.config_from_huggingface(raw.metadata, source),
        )
    if raw.container == "huggingface" and llava.is_llava_config(raw.metadata):
        return LoadedCheckpoint(
            raw.path,
            "huggingface_llava",
            llava.llava_from_huggingface(raw.tensors, raw.metadata, source),
            llava.config_from_huggingface(raw.metadata, source),
        )
    if raw.container == "huggingface" and blip2.is_blip2_config(raw.metadata):
        return LoadedCheckpoint(
            raw.path,
            "huggingface_blip2",
            blip2.blip2_from_huggingface(raw.tensors, raw.metadata, source),
            blip2.config_from_huggingface(raw.metadata, source),
        )
    if raw.container == "huggingface" and cogvlm.is_cogvlm_folder(raw.metadata):
        tensors, config = cogvlm.cogvlm_from_folder(raw.tensors, raw.metadata, raw.path)
        return LoadedCheckpoint(raw.path, "mmcl_cogvlm", tensors, config)
    if raw.container == "huggingface":
        return LoadedCheckpoint(
            raw.path,
            "huggingface",
            huggingface.from_huggingface(raw.tensors),
            huggingface.config_from_huggingface(raw.metadata, source),
        )
    if "mmcl_frozen" in raw.metadata:  # a run's trainable weights (train.checkpoint_frozen)
        frozen = json.loads(raw.metadata["mmcl_frozen"]).get("path")
        raise CheckpointError(
            f"{source}: holds only a run's trainable weights (the frozen ones are in {frozen}); "
            f"load the run's whole model instead (a LLaVA run's hf/ folder, a CogVLM run's "
            f"model/ folder)"
        )
    if MMCL_CONFIG_KEY in raw.metadata:
        try:
            config = json.loads(raw.metadata[MMCL_CONFIG_KEY])
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{source}: its embedded model config is not JSON") from error
        if minigpt4.is_minigpt4_config(config):
            minigpt4.check_parts(raw.tensors, source)
        return LoadedCheckpoint(raw.path, "mmcl", raw.tensors, config)
    if coca.is_coca_layout(raw.tensors):  # open_clip's CoCa: mmcl's own layout
        config = coca.infer_coca_config(raw.tensors, source)
        return LoadedCheckpoint(raw.path, "open_clip_coca", raw.tensors, config)
    if openai.is_openai_layout(raw.tensors):
        fmt = "openai" if raw.container == "torchscript" else "open_clip"
        return LoadedCheckpoint(
            raw.path,
            fmt,
            openai.from_openai_layout(raw.tensors),
            openai.infer_config(raw.tensors, source),
        )
    if huggingface.is_huggingface_layout(raw.tensors):
        return LoadedCheckpoint(
            raw.path, "huggingface", huggingface.from_huggingface(raw.tensors), None
        )
    if any(key.startswith(("visual.", "text.")) for key in raw.tensors):
        return LoadedCheckpoint(raw.path, "mmcl", raw.tensors, None)
    sample = ", ".join(sorted(raw.tensors)[:5])
    raise CheckpointError(
        f"{source}: not a CLIP checkpoint in any known layout (OpenAI, open_clip, open_clip "
        f"CoCa, Hugging Face, mmcl); first keys: {sample or '(none)'}"
    )
