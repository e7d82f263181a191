"""Hugging Face `CLIPModel` layout and config, converted to and from mmcl's.

Differences: HF splits attention into q/k/v projections (we keep one fused `in_proj`), stores
projections as `nn.Linear` weights (the transpose of our matrices) and names layers differently.
Hugging Face's CLIP has only the ViT image tower.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from mmcl.io.checkpoints.errors import CheckpointError

# (HF name, mmcl name) for tensors that only change name; {i} is a layer index.
_BLOCK_RENAMES = (
    ("self_attn.out_proj", "attn.out_proj"),
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
)
_TOWER_RENAMES = (
    ("text_model.embeddings.token_embedding.weight", "text.token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "text.positional_embedding"),
    ("text_model.final_layer_norm", "text.ln_final"),
    ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
    ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
    ("vision_model.pre_layrnorm", "visual.ln_pre"),  # sic: HF's spelling
    ("vision_model.post_layernorm", "visual.ln_post"),
)
_ENCODERS = (
    ("text_model.encoder.layers.", "text.transformer.resblocks."),
    ("vision_model.encoder.layers.", "visual.transformer.resblocks."),
)
_PROJECTIONS = (
    ("text_projection.weight", "text.text_projection"),
    ("visual_projection.weight", "visual.proj"),
)
_IGNORED = re.compile(r".*embeddings\.position_ids$")  # a buffer older transformers saved
_QKV = ("q_proj", "k_proj", "v_proj")


def is_huggingface_layout(tensors: dict[str, torch.Tensor]) -> bool:
    return any(key.startswith("text_model.") for key in tensors)


def from_huggingface(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    pending_qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if _IGNORED.match(key):
            continue
        if key == "logit_scale":
            out[key] = value
            continue
        projection = dict(_PROJECTIONS).get(key)
        if projection:
            out[projection] = value.t().contiguous()
            continue
        renamed = _rename_tower(key)
        if renamed:
            out[renamed] = value
            continue
        for hf_prefix, our_prefix in _ENCODERS:
            if key.startswith(hf_prefix):
                rest = key[len(hf_prefix) :]
                index, name = rest.split(".", 1)
                target = f"{our_prefix}{index}."
                for part in _QKV:
                    if name.startswith(f"self_attn.{part}."):
                        kind = name.rsplit(".", 1)[1]  # weight or bias
                        pending_qkv.setdefault(f"{target}attn.in_proj_{kind}", {})[part] = value
                        break
                else:
                    out[target + _rename_block(name)] = value
                break
        else:
            out[key] = value  # unknown: kept, so the strict load reports it as unexpected
    for key, parts in pending_qkv.items():
        if set(parts) != set(_QKV):
            raise CheckpointError(f"incomplete attention projections for {key}: {sorted(parts)}")
        out[key] = torch.cat([parts[p] for p in _QKV], dim=0)
    return out


def to_huggingface(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    reverse_projections = {ours: hf for hf, ours in _PROJECTIONS}
    for key, value in state_dict.items():
        if key in reverse_projections:
            out[reverse_projections[key]] = value.t().contiguous()
            continue
        if key == "logit_scale":
            out[key] = value
            continue
        renamed = _rename_tower(key, reverse=True)
        if renamed:
            out[renamed] = value
            continue
        for hf_prefix, our_prefix in _ENCODERS:
            if key.startswith(our_prefix):
                index, name = key[len(our_prefix) :].split(".", 1)
                target = f"{hf_prefix}{index}."
                if name.startswith("attn.in_proj_"):
                    kind = name.rsplit("_", 1)[1]
                    for part, chunk in zip(_QKV, value.chunk(3, dim=0), strict=True):
                        out[f"{target}self_attn.{part}.{kind}"] = chunk.contiguous()
                else:
                    out[target + _rename_block(name, reverse=True)] = value
                break
        else:
            raise CheckpointError(f"no Hugging Face name for mmcl parameter {key!r}")
    return out


def _rename_tower(key: str, reverse: bool = False) -> str | None:
    for hf_name, our_name in _TOWER_RENAMES:
        old, new = (our_name, hf_name) if reverse else (hf_name, our_name)
        if key == old or key.startswith(old + "."):
            return new + key[len(old) :]
    return None


def _rename_block(name: str, reverse: bool = False) -> str:
    for hf_name, our_name in _BLOCK_RENAMES:
        old, new = (our_name, hf_name) if reverse else (hf_name, our_name)
        if name.startswith(old + "."):
            return new + name[len(old) :]
    return name


def config_from_huggingface(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """open_clip-style config dict from a `CLIPModel` config.json."""
    try:
        text, vision = hf["text_config"], hf["vision_config"]
        acts = {text.get("hidden_act", "quick_gelu"), vision.get("hidden_act", "quick_gelu")}
        if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"}:
            raise CheckpointError(f"{source}: unsupported activations {sorted(acts)}")
        for tower in (text, vision):
            if abs(tower.get("layer_norm_eps", 1e-5) - 1e-5) > 1e-12:
                raise CheckpointError(f"{source}: layer_norm_eps other than 1e-5 is unsupported")
        text_width, vision_width = text["hidden_size"], vision["hidden_size"]
        vision_cfg = {
            "image_size": vision["image_size"],
            "layers": vision["num_hidden_layers"],
            "width": vision_width,
            "patch_size": vision["patch_size"],
            "head_width": vision_width // vision["num_attention_heads"],
            "mlp_ratio": vision["intermediate_size"] / vision_width,
        }
        text_cfg = {
            "context_length": text.get("max_position_embeddings", 77),
            "vocab_size": text.get("vocab_size", 49408),
            "width": text_width,
            "heads": text["num_attention_heads"],
            "layers": text["num_hidden_layers"],
            "mlp_ratio": text["intermediate_size"] / text_width,
        }
        return {
            "embed_dim": hf["projection_dim"],
            "quick_gelu": acts == {"quick_gelu"},
            "vision_cfg": vision_cfg,
            "text_cfg": text_cfg,
        }
    except KeyError as error:
        raise CheckpointError(f"{source}: config.json lacks {error}") from error


def config_to_huggingface(config: dict[str, Any]) -> dict[str, Any]:
    vision, text = config["vision_cfg"], config["text_cfg"]
    if vision.get("patch_size") is None:
        raise CheckpointError(
            "Hugging Face's CLIPModel has no ModifiedResNet image tower; export RN models "
            "as safetensors or in the open_clip layout instead"
        )
    act = "quick_gelu" if config.get("quick_gelu") else "gelu"
    vision_width, text_width = vision["width"], text["width"]
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": config["embed_dim"],
        "logit_scale_init_value": 2.6592,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": text["vocab_size"],
            "hidden_size": text_width,
            "intermediate_size": int(text_width * text.get("mlp_ratio", 4.0) + 1e-6),
            "num_attention_heads": text["heads"],
            "num_hidden_layers": text["layers"],
            "max_position_embeddings": text["context_length"],
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
            "projection_dim": config["embed_dim"],
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 1,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": vision_width,
            "intermediate_size": int(vision_width * vision.get("mlp_ratio", 4.0) + 1e-6),
            "num_attention_heads": vision_width // vision.get("head_width", 64),
            "num_hidden_layers": vision["layers"],
            "image_size": vision["image_size"],
            "patch_size": vision["patch_size"],
            "num_channels": 3,
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
            "projection_dim": config["embed_dim"],
        },
    }
