"""The bridges into a language model that a run trains (LLaVA, BLIP-2, MiniGPT-4): their
parts, which of them train, how a new one is built (a tokenizer trained on the built-in scene
text, a tiny LLaMA, the tower of a CLIP or BLIP config or checkpoint) or loaded from a folder,
how its forward gives logits and how its folder is written.

Used by the training recipes (`mmcl.recipe_bridges`) and by continual runs on instruction
streams (`mmcl.continual.generative`). A new bridge is one `Bridge` entry in `BRIDGES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmcl.data.chat_template import ChatTemplate
from mmcl.data.scene_conversations import scene_tokenizer_text
from mmcl.io.checkpoints import save_huggingface
from mmcl.io.checkpoints.minigpt4 import save_minigpt4_folder
from mmcl.io.lm_tokenizer import train_lm_tokenizer
from mmcl.models.bridges.blip2 import Blip2, Blip2Config, query_prompt_logits
from mmcl.models.bridges.llava import Llava, LlavaConfig
from mmcl.models.bridges.minigpt4 import MiniGPT4, MiniGPT4Config
from mmcl.models.factory import create_model, load
from mmcl.models.registry import get_model_config
from mmcl.train.lm_objective import llava_logits

PARTS = ("visual", "projector", "language_model")  # LLaVA's
QFORMER_PARTS = ("visual", "qformer", "language_projection", "language_model")
DEFAULT_LM = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}
DEFAULT_QFORMER = {  # a tiny Q-Former: cross-attention in every layer, no text part
    "width": 64,
    "layers": 2,
    "heads": 4,
    "mlp_width": 128,
    "queries": 8,
    "cross_attention_freq": 1,
    "vocab_size": None,
    "embed_dim": 64,
}
TOKENIZER_ENTRIES = ("vocab_size", "tokenizer_text_size")


@dataclass(frozen=True)
class Bridge:
    """What the recipe needs to know of one kind of bridge."""

    model_class: type
    parts: tuple[str, ...]  # what `trainable` may name
    trainable: tuple[str, ...]  # stage 1's default
    # (spec, source, tokenizer, lm config dict) -> a new model; pops the entries it reads
    build: Callable[..., torch.nn.Module]
    new_entries: tuple[str, ...]  # model entries only a new model reads
    logits_of: Callable = llava_logits  # (model, ids, images, mask) -> logits, by forward
    save: Callable = None  # (model, tokenizer, folder): writes the model folder


def save_huggingface_folder(model, tokenizer, folder: Path) -> None:
    save_huggingface(model, folder, overwrite=True)
    tokenizer.save_pretrained(folder)


def clip_tower(spec: dict[str, Any], source: str):
    """`(tower config, CLIP or None)` from `spec["tower"]` (a config name, tiny-vit by default)
    or `spec["tower_pretrained"]` (a CLIP's weights, which bring their tower's shape); both
    entries are removed from `spec`."""
    pretrained = spec.pop("tower_pretrained", None)
    name = spec.pop("tower", None)
    clip = None if pretrained is None else create_model(pretrained=pretrained)
    if clip is not None and not hasattr(clip.config, "vision_cfg"):
        raise ValueError(
            f"{source}: model.tower_pretrained {pretrained} is a {type(clip).__name__}, "
            f"not a CLIP (e.g. runs/scenes-vit/model.safetensors)"
        )
    if clip is None:
        return create_model(name or "tiny-vit").config, None
    tower = clip.config  # e.g. scenes-vit's 4 layers
    named = None if name is None else vision_dict(create_model(name).config.vision_cfg)
    if named is not None and named != vision_dict(tower.vision_cfg):
        raise ValueError(
            f"{source}: model.tower_pretrained {pretrained} holds a tower "
            f"{vision_dict(tower.vision_cfg)}, not model.tower {name}'s {named}; "
            f"drop model.tower (--set model.tower=null)"
        )
    return tower, clip


def load_clip_tower(visual: torch.nn.Module, clip) -> None:
    """Copy a CLIP's image tower into a bridge's (the bridge reads patch tokens: no `proj`)."""
    visual.load_state_dict({k: v for k, v in clip.visual.state_dict().items() if k != "proj"})


def new_tokenizer_and_lm(spec: dict[str, Any], template=None):
    """`(tokenizer, LM config dict)` for a new bridge: the tokenizer trained on the built-in
    scene text and `template`'s words, the LM `DEFAULT_LM` updated by `spec["lm"]`, sized to
    the tokenizer; the entries used are removed from `spec`."""
    texts = scene_tokenizer_text(spec.pop("tokenizer_text_size", 1000), template)
    tokenizer = train_lm_tokenizer(texts, spec.pop("vocab_size", 512))
    lm = {**DEFAULT_LM, **spec.pop("lm", {})}
    lm.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer, lm


def _new_llava(spec: dict[str, Any], source: str, tokenizer, lm: dict[str, Any]) -> Llava:
    tower, clip = clip_tower(spec, source)
    config = LlavaConfig.from_dict(
        {
            "llava_vision": vision_dict(tower.vision_cfg),
            "language_model": lm,
            "projector": spec.pop("projector", "mlp2x_gelu"),
            "quick_gelu": tower.quick_gelu,
            "image_token_id": tokenizer.convert_tokens_to_ids("<image>"),
        },
        source=source,
    )
    model = Llava(config)
    if clip is not None:
        load_clip_tower(model.visual, clip)
    return model


def _qformer_bridge_builder(model_class: type, config_class: type):
    """A BLIP-2-style bridge's builder: a BLIP tower (a config's, or a trained BLIP's), a
    Q-Former, one linear projection, the LM."""

    def build(spec: dict[str, Any], source: str, tokenizer, lm: dict[str, Any]):
        pretrained = spec.pop("tower_pretrained", None)
        blip = None
        if pretrained is not None:
            if "tower" in spec:
                raise ValueError(
                    f"{source}: model.tower_pretrained brings its own tower; drop model.tower"
                )
            blip = create_model(pretrained=pretrained)
            if not hasattr(blip.config, "blip_vision"):
                raise ValueError(
                    f"{source}: model.tower_pretrained {pretrained} is a "
                    f"{type(blip).__name__}, not a BLIP (e.g. runs/blip-scenes/model.safetensors)"
                )
            vision = blip.config.blip_vision.__dict__
        else:
            vision = get_model_config(spec.pop("tower", "tiny-blip")).get("blip_vision")
            if vision is None:
                raise ValueError(f"{source}: model.tower must name a BLIP config (e.g. tiny-blip)")
        config = config_class.from_dict(
            {
                "blip_vision": dict(vision),
                "qformer": {**DEFAULT_QFORMER, **spec.pop("qformer", {})},
                "text_config": lm,
                "image_token_id": tokenizer.convert_tokens_to_ids("<image>"),
            },
            source=f"{source}: model",
        )
        model = model_class(config)
        if blip is not None:  # BLIP's tower ends with a LayerNorm; BLIP-2's has none
            weights = blip.visual.state_dict()
            model.visual.load_state_dict({k: v for k, v in weights.items() if "ln_post" not in k})
        blip2_folder = spec.pop("blip2_init", None)
        if blip2_folder is not None:
            blip2 = load(blip2_folder)[0]
            if not isinstance(blip2, Blip2) or isinstance(blip2, MiniGPT4):
                raise ValueError(
                    f"{source}: model.blip2_init {blip2_folder} holds a "
                    f"{type(blip2).__name__}, not a BLIP-2 (e.g. runs/blip2-scenes-stage1/hf)"
                )
            try:
                model.load_blip2_parts(blip2)
            except ValueError as error:
                raise ValueError(f"{source}: model.blip2_init {blip2_folder}: {error}") from None
        return model

    return build


BRIDGES = {
    "llava": Bridge(
        Llava,
        PARTS,
        ("projector",),
        _new_llava,
        ("tower", "tower_pretrained", "projector"),
        save=save_huggingface_folder,
    ),
    "blip2": Bridge(
        Blip2,
        QFORMER_PARTS,
        ("qformer", "language_projection"),
        _qformer_bridge_builder(Blip2, Blip2Config),
        ("tower", "tower_pretrained", "qformer"),
        query_prompt_logits,
        save_huggingface_folder,
    ),
    "minigpt4": Bridge(
        MiniGPT4,
        QFORMER_PARTS,
        ("language_projection",),
        _qformer_bridge_builder(MiniGPT4, MiniGPT4Config),
        ("tower", "tower_pretrained", "qformer", "blip2_init"),
        query_prompt_logits,
        save_minigpt4_folder,
    ),
}


def build_bridge(bridge: Bridge, spec: dict[str, Any], source: str, template=None):
    """`(model, tokenizer)`: loaded from `spec["init"]`, or new (the tokenizer trained on the
    built-in scene text and `template`'s words); the entries used are removed from `spec`."""
    from transformers import AutoTokenizer

    if "init" in spec:
        given = sorted(({"lm", *TOKENIZER_ENTRIES, *bridge.new_entries}) & set(spec))
        if given:
            raise ValueError(
                f"{source}: model.init loads the model and tokenizer as they are; drop {given}"
            )
        folder = spec.pop("init")
        model = load(folder)[0]
        if type(model) is not bridge.model_class:
            raise ValueError(
                f"{source}: model.init {folder} holds a {type(model).__name__}, not a "
                f"{bridge.model_class.__name__} (model.kind); give that kind's folder"
            )
        return model, AutoTokenizer.from_pretrained(folder)
    tokenizer, lm = new_tokenizer_and_lm(spec, template)
    return bridge.build(spec, source, tokenizer, lm), tokenizer


def build_llava(spec: dict[str, Any], source: str, template: ChatTemplate | None = None):
    """`build_bridge` for a LLaVA."""
    return build_bridge(BRIDGES["llava"], spec, source, template)


def set_trainable(model: torch.nn.Module, parts, source: str, names=PARTS) -> None:
    """Train `parts` (of `names`, the bridge's parts); freeze the rest, so the engine leaves
    them out of the optimizer."""
    unknown = sorted(set(parts) - set(names))
    if unknown or not parts:
        raise ValueError(f"{source}: model.trainable must list some of {list(names)}, got {parts}")
    for part in names:
        getattr(model, part).requires_grad_(part in parts)


def vision_dict(vision) -> dict[str, Any]:
    return {
        "image_size": vision.image_size,
        "layers": vision.layers,
        "width": vision.width,
        "patch_size": vision.patch_size,
        "head_width": vision.head_width,
        "mlp_ratio": vision.mlp_ratio,
    }
