"""Hugging Face's `LlavaForConditionalGeneration` folders to and from `mmcl`'s `Llava` layout.

The image tower `vision_tower.*` is a `CLIPVisionModel`'s, converted as `huggingface.py`
converts CLIP's (to `visual.*`); `multi_modal_projector.*` becomes `projector.*`; the language
model keeps its own names under `language_model.` (`language_model.model.*`,
`language_model.lm_head.*`), since mmcl holds that model as transformers builds it.

Transformers has saved these folders under more than one set of prefixes (`vision_tower.`,
`vision_tower.vision_model.`, `model.vision_tower.`, `lm_head.`, ...); all are read. Export
writes the prefixes that `save_pretrained` writes today (`language_model.model.`,
`language_model.lm_head.`, `vision_tower.`, `multi_modal_projector.`).
"""

from __future__ import annotations

from typing import Any

import torch

from mmcl.io.checkpoints import huggingface
from mmcl.io.checkpoints.errors import CheckpointError

# (another saved prefix, the one read below); longest first, applied once.
_PREFIX_ALIASES = (
    ("model.vision_tower.vision_model.", "vision_tower."),
    ("vision_tower.vision_model.", "vision_tower."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)
_VISION_ACTS = {"quick_gelu": True, "gelu": False}


def is_llava_config(hf_config: dict[str, Any]) -> bool:
    return hf_config.get("model_type") == "llava"


def llava_from_huggingface(
    tensors: dict[str, torch.Tensor], hf_config: dict[str, Any], source: str
) -> dict[str, torch.Tensor]:
    """mmcl's names for a LLaVA folder's tensors; unknown keys are kept, for the strict load
    to name. A tied LM head, which `save_pretrained` leaves out, is filled from the
    embeddings."""
    vision: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        for alias, prefix in _PREFIX_ALIASES:
            if key.startswith(alias):
                key = prefix + key[len(alias) :]
                break
        if key.startswith("vision_tower."):
            vision["vision_model." + key.removeprefix("vision_tower.")] = value
        elif key.startswith("multi_modal_projector."):
            out["projector." + key.removeprefix("multi_modal_projector.")] = value
        else:
            out[key] = value
    try:
        out.update(huggingface.from_huggingface(vision))
    except CheckpointError as error:
        raise CheckpointError(f"{source}: vision_tower: {error}") from error
    head, embeddings = "language_model.lm_head.weight", "language_model.model.embed_tokens.weight"
    if head not in out and embeddings in out and _ties(hf_config):
        out[head] = out[embeddings]
    return out


def llava_to_huggingface(
    state_dict: dict[str, torch.Tensor], tied: bool = False
) -> dict[str, torch.Tensor]:
    """The inverse of `llava_from_huggingface`, in `save_pretrained`'s names (a tied LM head
    left out, as it leaves it out)."""
    vision: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("visual."):
            vision[key] = value
        elif key.startswith("projector."):
            out["multi_modal_projector." + key.removeprefix("projector.")] = value
        elif key.startswith("language_model."):
            if not (tied and key == "language_model.lm_head.weight"):
                out[key] = value
        else:
            raise CheckpointError(f"no Hugging Face LLaVA name for mmcl parameter {key!r}")
    for key, value in huggingface.to_huggingface(vision).items():
        out["vision_tower." + key.removeprefix("vision_model.")] = value
    return out


def config_from_huggingface(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """An mmcl `LlavaConfig` dict for a LLaVA config.json."""
    try:
        vision = hf["vision_config"]
        text = dict(hf.get("text_config") or {"model_type": "llama"})
        if vision.get("model_type", "clip_vision_model") != "clip_vision_model":
            raise CheckpointError(
                f"{source}: the image tower is {vision['model_type']!r}; mmcl reads LLaVA "
                f"folders with a CLIP one (clip_vision_model)"
            )
        act = vision.get("hidden_act", "quick_gelu")
        if act not in _VISION_ACTS:
            raise CheckpointError(f"{source}: vision hidden_act {act!r} is unsupported")
        if abs(vision.get("layer_norm_eps", 1e-5) - 1e-5) > 1e-12:
            raise CheckpointError(f"{source}: vision layer_norm_eps other than 1e-5")
        if hf.get("projector_hidden_act", "gelu") != "gelu":
            raise CheckpointError(
                f"{source}: projector_hidden_act {hf['projector_hidden_act']!r}; mmcl's "
                f"mlp2x_gelu projector uses gelu"
            )
        layer = hf.get("vision_feature_layer", -2)
        if not isinstance(layer, int):
            raise CheckpointError(
                f"{source}: vision_feature_layer {layer} lists several layers; mmcl reads one"
            )
        strategy = hf.get("vision_feature_select_strategy", "default")
        if strategy not in ("default", "full"):
            raise CheckpointError(f"{source}: unknown vision_feature_select_strategy {strategy!r}")
        width = vision["hidden_size"]
        if "tie_word_embeddings" in hf:
            text["tie_word_embeddings"] = hf["tie_word_embeddings"]
        return {
            "llava_vision": {
                "image_size": vision["image_size"],
                "patch_size": vision["patch_size"],
                "width": width,
                "layers": vision["num_hidden_layers"],
                "head_width": width // vision["num_attention_heads"],
                "mlp_ratio": vision["intermediate_size"] / width,
            },
            "language_model": text,
            "projector": "mlp2x_gelu",
            "projector_bias": hf.get("multimodal_projector_bias", True),
            "feature_layer": layer,
            "keep_class_token": strategy == "full",
            "quick_gelu": _VISION_ACTS[act],
            "image_token_id": hf.get("image_token_id", hf.get("image_token_index", 32000)),
        }
    except KeyError as error:
        raise CheckpointError(f"{source}: config.json lacks {error}") from error


def config_to_huggingface(config: dict[str, Any]) -> dict[str, Any]:
    """A LLaVA config.json for an mmcl `LlavaConfig` dict."""
    if config["projector"] != "mlp2x_gelu":
        raise CheckpointError(
            f"Hugging Face's LLaVA has only the mlp2x_gelu projector, not "
            f"{config['projector']!r}; export this model as mmcl safetensors instead"
        )
    vision, text = config["llava_vision"], dict(config["language_model"])
    width, grid = vision["width"], vision["image_size"] // vision["patch_size"]
    tied = bool(text.get("tie_word_embeddings", False))
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": config["image_token_id"],
        "image_seq_length": grid * grid + int(config["keep_class_token"]),
        "multimodal_projector_bias": config["projector_bias"],
        "projector_hidden_act": "gelu",
        "vision_feature_layer": config["feature_layer"],
        "vision_feature_select_strategy": "full" if config["keep_class_token"] else "default",
        "tie_word_embeddings": tied,
        "text_config": text,
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": width,
            "intermediate_size": int(width * vision.get("mlp_ratio", 4.0) + 1e-6),
            "num_attention_heads": width // vision.get("head_width", 64),
            "num_hidden_layers": vision["layers"],
            "image_size": vision["image_size"],
            "patch_size": vision["patch_size"],
            "num_channels": 3,
            "hidden_act": "quick_gelu" if config["quick_gelu"] else "gelu",
            "layer_norm_eps": 1e-5,
        },
    }


def _ties(hf: dict[str, Any]) -> bool:
    return bool(
        hf.get(
            "tie_word_embeddings", (hf.get("text_config") or {}).get("tie_word_embeddings", False)
        )
    )
