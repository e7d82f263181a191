"""Hugging Face's `Blip2ForConditionalGeneration` and `InstructBlipForConditionalGeneration`
folders to and from `mmcl.models.bridges.blip2.Blip2`'s layout.

- `vision_model.*` -> `visual.*` as BLIP's (`mmcl.io.checkpoints.blip`), except its
  `post_layernorm`, which is BLIP-2's LayerNorm over the tower's features (LAVIS's
  `ln_vision`): `qformer.ln_vision`.
- `query_tokens` ``(1, Q, width)`` -> `qformer.queries.query` ``(Q, width)``;
  `qformer.layernorm` -> `qformer.embed_norm`; the layers through `mmcl.io.checkpoints.bert`
  (Hugging Face's `attention.attention.*` is BERT's `attention.self.*`), the queries' FFN
  (`intermediate_query`, `output_query`) -> `query_mlp`, `query_mlp_norm`.
- InstructBLIP's Q-Former has text embeddings: `qformer.embeddings.{word,position}_embeddings`
  -> `qformer.{word,position}_embeddings`, its `qformer.embeddings.layernorm` (there in place
  of `qformer.layernorm`) -> `qformer.embed_norm`, and the text FFN of every layer.
- `language_projection.*` and `language_model.*` keep their names: the LM is the
  transformers model itself. A tied LM head left out of the file is filled from the input
  embeddings.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from mmcl.io.checkpoints.bert import bert_from_huggingface, bert_to_huggingface
from mmcl.io.checkpoints.blip import _vision_tensor
from mmcl.io.checkpoints.errors import CheckpointError

_QUERY_FFN = (  # (Hugging Face, mmcl) inside a layer
    ("intermediate_query.dense", "query_mlp.c_fc"),
    ("output_query.dense", "query_mlp.c_proj"),
    ("output_query.LayerNorm", "query_mlp_norm"),
)
_BLOCK = re.compile(r"encoder\.blocks\.\d+\.")
_EMBEDDINGS = (  # (Hugging Face, mmcl) after "qformer."; InstructBLIP's
    ("embeddings.word_embeddings.", "word_embeddings."),
    ("embeddings.position_embeddings.", "position_embeddings."),
    ("embeddings.layernorm.", "embed_norm."),
)
_MODEL_TYPES = {  # Hugging Face model_type: (class, vision model_type, qformer model_type)
    "blip-2": ("Blip2ForConditionalGeneration", "blip_2_vision_model", "blip_2_qformer"),
    "instructblip": (
        "InstructBlipForConditionalGeneration",
        "instructblip_vision_model",
        "instructblip_qformer",
    ),
}


def is_blip2_config(hf_config: dict[str, Any]) -> bool:
    """A BLIP-2 or an InstructBLIP."""
    return hf_config.get("model_type") in _MODEL_TYPES


def blip2_from_huggingface(
    tensors: dict[str, torch.Tensor], hf_config: dict[str, Any], source: str
) -> dict[str, torch.Tensor]:
    """mmcl's names for a Hugging Face BLIP-2 folder's tensors; unknown keys are kept as they
    are, so that the strict load names them."""
    out: dict[str, torch.Tensor] = {}
    layers: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key.startswith("vision_model.post_layernorm."):
            out["qformer.ln_vision." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("vision_model."):
            out.update(_vision_tensor(key.removeprefix("vision_model."), value))
        elif key == "query_tokens":
            out["qformer.queries.query"] = value.reshape(value.shape[-2:])
        elif key.startswith("qformer.layernorm."):
            out["qformer.embed_norm." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("qformer.embeddings."):
            out["qformer." + _renamed(key.removeprefix("qformer."), _EMBEDDINGS)] = value
        elif key.startswith("qformer.encoder.layer."):
            name = key.removeprefix("qformer.").replace("attention.attention.", "attention.self.")
            for hf_name, our_name in _QUERY_FFN:
                name = name.replace(f".{hf_name}.", f".{our_name}.")
            layers[name] = value
        else:
            out[key] = value  # language_projection, language_model, or unknown
    try:
        converted = bert_from_huggingface(layers)
    except CheckpointError as error:
        raise CheckpointError(f"{source}: qformer: {error}") from error
    out.update({"qformer." + _BLOCK.sub(_block, k): v for k, v in converted.items()})
    _fill_tied_lm_head(out, hf_config.get("text_config", {}))
    return out


def blip2_to_huggingface(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `blip2_from_huggingface` (the tied LM head is written too, which
    `from_pretrained` accepts)."""
    out: dict[str, torch.Tensor] = {}
    blocks: dict[str, torch.Tensor] = {}
    instruct = "qformer.word_embeddings.weight" in state_dict
    for key, value in state_dict.items():
        if key.startswith("qformer.ln_vision."):
            out["vision_model.post_layernorm." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("visual."):
            out.update(_vision_tensor(key.removeprefix("visual."), value, reverse=True))
        elif key == "qformer.queries.query":
            out["query_tokens"] = value.unsqueeze(0)
        elif key.startswith("qformer.embed_norm.") and not instruct:
            out["qformer.layernorm." + key.rsplit(".", 1)[1]] = value
        elif key.startswith(("qformer.embed_norm.", "qformer.word_", "qformer.position_")):
            reverse = [(ours, hf) for hf, ours in _EMBEDDINGS]
            out["qformer." + _renamed(key.removeprefix("qformer."), reverse)] = value
        elif key.startswith("qformer.blocks."):
            name = "encoder." + key.removeprefix("qformer.")
            for hf_name, our_name in _QUERY_FFN:
                name = name.replace(f".{our_name}.", f".{hf_name}.")
            blocks[name] = value
        elif key.startswith(("language_model.", "language_projection.")):
            out[key] = value
        else:
            raise CheckpointError(f"no Hugging Face BLIP-2 name for mmcl parameter {key!r}")
    for key, value in bert_to_huggingface(blocks).items():
        out["qformer." + key.replace("attention.self.", "attention.attention.")] = value
    return out


def config_from_huggingface(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """An mmcl `Blip2Config` dict for a Hugging Face BLIP-2 or InstructBLIP config.json."""
    model_type = hf.get("model_type")
    hf_class = _MODEL_TYPES[model_type][0]
    architectures = hf.get("architectures") or []
    if hf_class not in architectures:
        raise CheckpointError(
            f"{source}: config.json's architectures {architectures} do not name {hf_class}, "
            f"the one {model_type} class mmcl reads"
        )
    instruct = model_type == "instructblip"
    try:
        vision, qformer, text = hf["vision_config"], hf["qformer_config"], hf["text_config"]
        for where, part in (("vision", vision), ("qformer", qformer)):
            if part.get("hidden_act", "gelu") != "gelu":
                raise CheckpointError(f"{source}: {where}_config.hidden_act other than gelu")
        if not vision.get("qkv_bias", True):
            raise CheckpointError(f"{source}: vision_config.qkv_bias false is not supported")
        if abs(qformer.get("layer_norm_eps", 1e-12) - 1e-12) > 1e-15:
            raise CheckpointError(f"{source}: qformer_config.layer_norm_eps other than 1e-12")
        if qformer.get("use_qformer_text_input", False):
            raise CheckpointError(f"{source}: qformer_config.use_qformer_text_input is not read")
        text_part = {
            "vocab_size": qformer.get("vocab_size", 30522) if instruct else None,
            "max_positions": qformer.get("max_position_embeddings", 512),
            "pad_id": qformer.get("pad_token_id") or 0,
        }
        return {
            "blip_vision": {
                "image_size": vision["image_size"],
                "patch_size": vision["patch_size"],
                "width": vision["hidden_size"],
                "layers": vision["num_hidden_layers"],
                "heads": vision["num_attention_heads"],
                "mlp_width": vision["intermediate_size"],
            },
            "vision_eps": vision.get("layer_norm_eps", 1e-6),
            "qformer": {
                "width": qformer["hidden_size"],
                "layers": qformer["num_hidden_layers"],
                "heads": qformer["num_attention_heads"],
                "mlp_width": qformer["intermediate_size"],
                "queries": hf.get("num_query_tokens", 32),
                "cross_attention_freq": qformer.get("cross_attention_frequency", 2),
                "embed_dim": hf.get("image_text_hidden_size", 256),
                **text_part,
            },
            "text_config": text,
            "image_token_id": hf.get("image_token_index"),
            "instruct": instruct,
        }
    except KeyError as error:
        raise CheckpointError(f"{source}: config.json lacks {error}") from error


def config_to_huggingface(config: dict[str, Any]) -> dict[str, Any]:
    """A Hugging Face BLIP-2 (or, with `instruct`, InstructBLIP) config.json for an mmcl
    `Blip2Config` dict."""
    vision, qformer = config["blip_vision"], config["qformer"]
    instruct = config.get("instruct", False)
    if qformer.get("vocab_size") is not None and not instruct:
        raise CheckpointError(
            "this BLIP-2 has the Q-Former's text part (stage 1), which "
            "Blip2ForConditionalGeneration does not hold; export it as mmcl safetensors instead"
        )
    model_type = "instructblip" if instruct else "blip-2"
    hf_class, vision_type, qformer_type = _MODEL_TYPES[model_type]
    text_part = {}
    if instruct:
        text_part = {
            "vocab_size": qformer["vocab_size"],
            "max_position_embeddings": qformer["max_positions"],
            "pad_token_id": qformer["pad_id"],
        }
    return {
        "architectures": [hf_class],
        "model_type": model_type,
        "num_query_tokens": qformer["queries"],
        "image_text_hidden_size": qformer["embed_dim"],
        "image_token_index": config["image_token_id"],
        "vision_config": {
            "model_type": vision_type,
            "image_size": vision["image_size"],
            "patch_size": vision["patch_size"],
            "hidden_size": vision["width"],
            "num_hidden_layers": vision["layers"],
            "num_attention_heads": vision["heads"],
            "intermediate_size": vision["mlp_width"],
            "hidden_act": "gelu",
            "layer_norm_eps": config["vision_eps"],
            "qkv_bias": True,
        },
        "qformer_config": {
            "model_type": qformer_type,
            "hidden_size": qformer["width"],
            "num_hidden_layers": qformer["layers"],
            "num_attention_heads": qformer["heads"],
            "intermediate_size": qformer["mlp_width"],
            "cross_attention_frequency": qformer["cross_attention_freq"],
            "encoder_hidden_size": vision["width"],
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-12,
            **text_part,
        },
        "text_config": config["text_config"],
        "use_decoder_only_language_model": True,
    }


def _renamed(name: str, renames) -> str:
    for old, new in renames:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def _block(match: re.Match) -> str:
    return "blocks." + match.group(0).split(".")[2] + "."


def _fill_tied_lm_head(out: dict[str, torch.Tensor], text_config: dict[str, Any]) -> None:
    """`save_pretrained` leaves out an LM head tied to the input embeddings: put it back."""
    if "language_model.lm_head.weight" in out or not text_config.get("tie_word_embeddings", True):
        return
    embeddings = [
        k for k in out if k.startswith("language_model.") and k.endswith("embed_tokens.weight")
    ]
    if len(embeddings) == 1:
        out["language_model.lm_head.weight"] = out[embeddings[0]]
