"""open_clip's CoCa state dicts: mmcl keeps their layout (`visual.*`, `text.*`, `text_decoder.*`,
`logit_scale`), so reading and writing change no name; the architecture is read off the shapes.

Head counts do not show in shapes: they are taken as open_clip's CoCa configs have them (64
wide for the text stacks, 8 heads in the attentional pooler), which holds for every coca_*
config open_clip ships; `mmcl.models.factory` warns when a file fits none of those.
"""

from __future__ import annotations

from typing import Any

import torch

from mmcl.io.checkpoints.errors import CheckpointError

DECODER_PREFIX = "text_decoder."


def is_coca_layout(tensors: dict[str, torch.Tensor]) -> bool:
    return any(key.startswith(DECODER_PREFIX) for key in tensors)


def infer_coca_config(tensors: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """An open_clip CoCa config dict for an open_clip CoCa state dict."""
    try:
        embed_dim = tensors["text.text_projection"].shape[1]
        width, _, patch, _ = tensors["visual.conv1.weight"].shape
        grid = round((tensors["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = {
            "image_size": patch * grid,
            "layers": _count(tensors, "visual.transformer.resblocks."),
            "width": width,
            "patch_size": patch,
            "head_width": min(64, width),
            "mlp_ratio": _mlp_ratio(tensors, "visual.transformer.resblocks.", width),
            "output_tokens": True,
        }
        if "visual.attn_pool.query" in tensors:
            vision["attentional_pool"] = True
            vision["attn_pooler_heads"] = 8
            vision["attn_pooler_queries"] = tensors["visual.attn_pool.query"].shape[0]
        text_width = tensors["text.ln_final.weight"].shape[0]
        text = {
            "context_length": tensors["text.positional_embedding"].shape[0] - 1,
            "vocab_size": tensors["text.token_embedding.weight"].shape[0],
            "width": text_width,
            "heads": max(1, text_width // 64),
            "layers": _count(tensors, "text.transformer.resblocks."),
            "mlp_ratio": _mlp_ratio(tensors, "text.transformer.resblocks.", text_width),
            "embed_cls": True,
            "output_tokens": True,
        }
        decoder_width = tensors["text_decoder.ln_final.weight"].shape[0]
        multimodal = {
            "context_length": text["context_length"],
            "vocab_size": tensors["text_decoder.text_projection"].shape[1],
            "width": decoder_width,
            "heads": max(1, decoder_width // 64),
            "layers": _count(tensors, "text_decoder.resblocks."),
            "mlp_ratio": _mlp_ratio(tensors, "text_decoder.resblocks.", decoder_width),
        }
    except KeyError as error:
        raise CheckpointError(
            f"{source}: cannot infer a CoCa architecture, key {error} is missing"
        ) from error
    return {
        "embed_dim": embed_dim,
        "vision_cfg": vision,
        "text_cfg": text,
        "multimodal_cfg": multimodal,
        "custom_text": True,
    }


def _count(tensors: dict[str, torch.Tensor], prefix: str) -> int:
    return len({key[len(prefix) :].split(".")[0] for key in tensors if key.startswith(prefix)})


def _mlp_ratio(tensors: dict[str, torch.Tensor], prefix: str, width: int) -> float:
    return tensors[f"{prefix}0.mlp.c_fc.weight"].shape[0] / width
