"""Hugging Face's BLIP folders (`BlipForConditionalGeneration`, `BlipForImageTextRetrieval`,
`BlipForQuestionAnswering`) to and from `mmcl.models.blip.Blip`'s layout.

Vision: `vision_model.*` -> `visual.*` (fused `qkv` is already `in_proj`; `projection` is
`out_proj`; the class and position embeddings lose their leading 1-dimensions). Text:
`text_encoder.*` and `text_decoder.{bert,cls}.*` through `mmcl.io.checkpoints.bert`. The heads
(`vision_proj`, `text_proj`, `itm_head`) keep their names. `save_pretrained` leaves out the LM
head's weight and bias, tied to the word embeddings and ``cls.predictions.bias``: they are
filled from those.
"""

from __future__ import annotations

from typing import Any

import torch

from mmcl.io.checkpoints.bert import bert_from_huggingface, bert_to_huggingface
from mmcl.io.checkpoints.errors import CheckpointError

_HEADS = ("vision_proj.", "text_proj.", "itm_head.")
# BLIP's learned ITC temperature at the start of training (mmcl's `Blip.temp`). Hugging Face's
# classes have no place for it: a folder with the ITC heads loads with this value, and export
# leaves it out. Nothing but training reads it (ITC ranks by cosine similarity).
_INITIAL_TEMPERATURE = 0.07
_VISION_RENAMES = (  # (Hugging Face, mmcl), after "vision_model." / "visual."
    ("embeddings.patch_embedding", "conv1"),
    ("post_layernorm", "ln_post"),
    ("encoder.layers.", "transformer.resblocks."),
    ("self_attn.qkv.weight", "attn.in_proj_weight"),
    ("self_attn.qkv.bias", "attn.in_proj_bias"),
    ("self_attn.projection", "attn.out_proj"),
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
)
_HF_CLASSES = {  # the mmcl parts each Hugging Face class holds
    "BlipForConditionalGeneration": ("text_decoder",),
    "BlipForImageTextRetrieval": ("text_encoder", "itc", "itm"),
    "BlipForQuestionAnswering": ("text_encoder", "text_decoder"),
}


def is_blip_config(hf_config: dict[str, Any]) -> bool:
    return hf_config.get("model_type") == "blip"


def blip_from_huggingface(
    tensors: dict[str, torch.Tensor], hf_config: dict[str, Any], source: str
) -> dict[str, torch.Tensor]:
    """mmcl's names for a Hugging Face BLIP folder's tensors; unknown keys are kept as they
    are, so that the strict load names them."""
    tensors = dict(tensors)
    word = "text_decoder.bert.embeddings.word_embeddings.weight"
    tie = hf_config.get("text_config", {}).get("tie_word_embeddings", True)
    if word in tensors and tie:
        tensors.setdefault("text_decoder.cls.predictions.decoder.weight", tensors[word])
    if "text_decoder.cls.predictions.bias" in tensors:
        bias = tensors.pop("text_decoder.cls.predictions.bias")
        tensors.setdefault("text_decoder.cls.predictions.decoder.bias", bias)
    out: dict[str, torch.Tensor] = {}
    if "vision_proj.weight" in tensors and "temp" not in tensors:
        out["temp"] = torch.tensor(_INITIAL_TEMPERATURE, dtype=tensors["vision_proj.weight"].dtype)
    groups: dict[str, dict[str, torch.Tensor]] = {"text_encoder.": {}, "text_decoder.": {}}
    for key, value in tensors.items():
        if key.startswith("vision_model."):
            out.update(_vision_tensor(key.removeprefix("vision_model."), value))
        elif key.startswith("text_encoder."):
            groups["text_encoder."][key.removeprefix("text_encoder.")] = value
        elif key.startswith(("text_decoder.bert.", "text_decoder.cls.")):
            rest = key.removeprefix("text_decoder.")
            groups["text_decoder."][rest.removeprefix("bert.")] = value
        else:
            out[key] = value  # the heads, or unknown
    for prefix, group in groups.items():
        try:
            converted = bert_from_huggingface(group)
        except CheckpointError as error:
            raise CheckpointError(f"{source}: {prefix.rstrip('.')}: {error}") from error
        out.update({prefix + key: value for key, value in converted.items()})
    return out


def blip_to_huggingface(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `blip_from_huggingface`, as `save_pretrained` writes it (with the tied
    LM head weights too, which `from_pretrained` accepts)."""
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[str, torch.Tensor]] = {"text_encoder.": {}, "text_decoder.": {}}
    for key, value in state_dict.items():
        if key.startswith("visual."):
            out.update(_vision_tensor(key.removeprefix("visual."), value, reverse=True))
        elif key.startswith(tuple(groups)):
            prefix, _, rest = key.partition(".")
            groups[prefix + "."][rest] = value
        elif key.startswith(_HEADS):
            out[key] = value
        elif key != "temp":
            raise CheckpointError(f"no Hugging Face BLIP name for mmcl parameter {key!r}")
    out.update(
        {f"text_encoder.{k}": v for k, v in bert_to_huggingface(groups["text_encoder."]).items()}
    )
    for key, value in bert_to_huggingface(groups["text_decoder."]).items():
        out[f"text_decoder.{key}" if key.startswith("cls.") else f"text_decoder.bert.{key}"] = value
    return out


def config_from_huggingface(hf: dict[str, Any], source: str) -> dict[str, Any]:
    """An mmcl `BlipConfig` dict for a Hugging Face BLIP config.json."""
    architectures = hf.get("architectures") or []
    kinds = [name for name in architectures if name in _HF_CLASSES]
    if not kinds:
        raise CheckpointError(
            f"{source}: config.json's architectures {architectures} name none of the BLIP "
            f"classes mmcl reads ({', '.join(_HF_CLASSES)})"
        )
    try:
        vision, text = hf["vision_config"], hf["text_config"]
        for where, tower, eps in (("vision", vision, 1e-5), ("text", text, 1e-12)):
            if tower.get("hidden_act", "gelu") != "gelu":
                raise CheckpointError(f"{source}: {where} hidden_act other than gelu")
            if abs(tower.get("layer_norm_eps", eps) - eps) > eps * 1e-3:
                raise CheckpointError(f"{source}: {where} layer_norm_eps other than {eps}")
        if text.get("encoder_hidden_size", vision["hidden_size"]) != vision["hidden_size"]:
            raise CheckpointError(
                f"{source}: text_config.encoder_hidden_size differs from the vision width"
            )
        dec_id = text.get("bos_token_id", 30522)
        return {
            "blip_vision": {
                "image_size": vision["image_size"],
                "patch_size": vision["patch_size"],
                "width": vision["hidden_size"],
                "layers": vision["num_hidden_layers"],
                "heads": vision["num_attention_heads"],
                "mlp_width": vision["intermediate_size"],
            },
            "blip_text": {
                "vocab_size": text["vocab_size"],
                "width": text["hidden_size"],
                "layers": text["num_hidden_layers"],
                "heads": text["num_attention_heads"],
                "mlp_width": text["intermediate_size"],
                "max_positions": text["max_position_embeddings"],
                "pad_id": text.get("pad_token_id", 0),
                "sep_id": text.get("sep_token_id", 102),
                "dec_id": dec_id,
                "enc_id": dec_id + 1,  # BLIP's tokenizer adds [ENC] right after [DEC]
            },
            "embed_dim": hf.get("image_text_hidden_size", 256),
            "parts": list(_HF_CLASSES[kinds[0]]),
            "share_text_weights": False,  # Hugging Face's classes keep two copies
        }
    except KeyError as error:
        raise CheckpointError(f"{source}: config.json lacks {error}") from error


def config_to_huggingface(config: dict[str, Any]) -> dict[str, Any]:
    """A Hugging Face BLIP config.json for an mmcl `BlipConfig` dict; the class is the one
    holding exactly its parts."""
    parts = tuple(config["parts"])
    classes = [name for name, held in _HF_CLASSES.items() if set(held) == set(parts)]
    if not classes:
        raise CheckpointError(
            f"no Hugging Face BLIP class holds exactly the parts {list(parts)}; export it as "
            f"mmcl safetensors instead"
        )
    vision, text = config["blip_vision"], config["blip_text"]
    if vision.get("conv_stem"):
        raise CheckpointError(
            "Hugging Face's BLIP has no convolutional stem (blip_vision.conv_stem); export this "
            "model as mmcl safetensors instead"
        )
    return {
        "architectures": classes,
        "model_type": "blip",
        "image_text_hidden_size": config["embed_dim"],
        "vision_config": {
            "model_type": "blip_vision_model",
            "image_size": vision["image_size"],
            "patch_size": vision["patch_size"],
            "hidden_size": vision["width"],
            "num_hidden_layers": vision["layers"],
            "num_attention_heads": vision["heads"],
            "intermediate_size": vision["mlp_width"],
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-5,
        },
        "text_config": {
            "model_type": "blip_text_model",
            "vocab_size": text["vocab_size"],
            "hidden_size": text["width"],
            "encoder_hidden_size": vision["width"],
            "num_hidden_layers": text["layers"],
            "num_attention_heads": text["heads"],
            "intermediate_size": text["mlp_width"],
            "max_position_embeddings": text["max_positions"],
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-12,
            "pad_token_id": text["pad_id"],
            "sep_token_id": text["sep_id"],
            "bos_token_id": text["dec_id"],
            "is_decoder": True,
            "tie_word_embeddings": True,
        },
        "tie_word_embeddings": True,
    }


def _vision_tensor(name: str, value: torch.Tensor, reverse: bool = False) -> dict:
    """One vision tensor under the other side's name (with "vision_model."/"visual.").
    Hugging Face keeps the class token as (1, 1, width) and the positions as (1, n, width)."""
    if reverse:
        if name == "class_embedding":
            return {"vision_model.embeddings.class_embedding": value.reshape(1, 1, -1)}
        if name == "positional_embedding":
            return {"vision_model.embeddings.position_embedding": value.unsqueeze(0)}
        for hf_name, our_name in reversed(_VISION_RENAMES):
            name = name.replace(our_name, hf_name)
        return {f"vision_model.{name}": value}
    if name == "embeddings.class_embedding":
        return {"visual.class_embedding": value.reshape(-1)}
    if name == "embeddings.position_embedding":
        return {"visual.positional_embedding": value.squeeze(0)}
    for hf_name, our_name in _VISION_RENAMES:
        name = name.replace(hf_name, our_name)
    return {f"visual.{name}": value}
