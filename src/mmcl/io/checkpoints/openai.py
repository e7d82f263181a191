"""OpenAI / open_clip layout: text tower at the top level of the state dict.

mmcl keeps the text tower under `text.`; otherwise the names are the same, so conversion is a
prefix change. OpenAI's `clip.build_model` infers the architecture from tensor shapes; we do the
same, returning an open_clip-style config dict.
"""

from __future__ import annotations

from typing import Any

import torch

from mmcl.io.checkpoints.errors import CheckpointError

TEXT_TOP_LEVEL = (
    "token_embedding",
    "positional_embedding",
    "transformer",
    "ln_final",
    "text_projection",
)
# Non-tensor attributes that TorchScript archives and some open_clip versions store as entries.
IGNORED_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def is_openai_layout(tensors: dict[str, torch.Tensor]) -> bool:
    return "text_projection" in tensors and "token_embedding.weight" in tensors


def from_openai_layout(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    converted = {}
    for key, value in tensors.items():
        if key in IGNORED_KEYS:
            continue
        converted[f"text.{key}" if key.split(".")[0] in TEXT_TOP_LEVEL else key] = value
    return converted


def to_openai_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key.removeprefix("text."): value for key, value in state_dict.items()}


def infer_config(tensors: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Architecture from an OpenAI-layout state dict, following `clip.build_model`.

    Activation cannot be seen in the weights; OpenAI's models use QuickGELU, so we do too.
    """
    try:
        text_width = tensors["ln_final.weight"].shape[0]
        text_layers = _count_blocks(tensors, "transformer.resblocks.")
        config = {
            "embed_dim": tensors["text_projection"].shape[1],
            "quick_gelu": True,
            "vision_cfg": _infer_vision(tensors),
            "text_cfg": {
                "context_length": tensors["positional_embedding"].shape[0],
                "vocab_size": tensors["token_embedding.weight"].shape[0],
                "width": text_width,
                "heads": text_width // 64,
                "layers": text_layers,
            },
        }
    except KeyError as error:
        raise CheckpointError(
            f"{source}: cannot infer a CLIP architecture, key {error} is missing"
        ) from error
    return config


def _count_blocks(tensors: dict[str, torch.Tensor], prefix: str) -> int:
    return len({key[len(prefix) :].split(".")[0] for key in tensors if key.startswith(prefix)})


def _infer_vision(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    if "visual.proj" in tensors:  # ViT
        width, _, patch, _ = tensors["visual.conv1.weight"].shape
        grid = round((tensors["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        mlp_width = tensors["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        vision = {
            "image_size": patch * grid,
            "layers": _count_blocks(tensors, "visual.transformer.resblocks."),
            "width": width,
            "patch_size": patch,
        }
        if mlp_width != 4 * width:
            vision["mlp_ratio"] = mlp_width / width
        return vision
    stages = [_count_blocks(tensors, f"visual.layer{stage}.") for stage in (1, 2, 3, 4)]
    grid = round((tensors["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
    return {
        "image_size": grid * 32,
        "layers": stages,
        "width": tensors["visual.layer1.0.conv1.weight"].shape[0],
        "patch_size": None,
    }
