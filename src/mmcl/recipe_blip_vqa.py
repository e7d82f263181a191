"""The BLIP VQA recipe (``model.kind: blip_vqa``): BLIP's VQA fine-tuning
(`mmcl.train.blip_vqa_objective`) on single-turn scene questions, on the one engine.

    model:  kind: blip_vqa
            init: FOLDER      # a BLIP folder with its vocabulary (runs/blip-scenes): its image
                              # tower, text encoder and decoder; the ITC and ITM parts dropped
            # or init: null, with name: tiny-blip and its config overrides (blip_vision: ...)
    data:   kind: scene_conversations, stage, size, seed, max_turns: 1 (the data of the
            llava-scenes recipe, one question a sample); or kind: llava_json, path, images
            (single-turn conversations)
    eval:   vqa_size: N (held-out scene questions, scored as the LLaVA recipes' are),
            scene_split: test

As in BLIP's VQA model, the encoder and decoder are separate (BLIP's pre-training shares
all but their self-attention; the VQA decoder cross-attends to the question's states rather
than to the image, so each starts as a copy and trains on its own). The run's folder holds
the engine's `model.safetensors` and the model's vocabulary: `mmcl.load(FOLDER)` gives the
model with its tokenizer, and `mmcl ask --model FOLDER` answers with it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from mmcl.data.vqa_pairs import VQAPairs
from mmcl.eval.scene_vqa import BlipAnswerer, SceneVQASuite
from mmcl.models.blip import Blip
from mmcl.models.factory import create_model, load
from mmcl.models.registry import get_model_config
from mmcl.recipe_bridges import build_conversations
from mmcl.train import FitResult, Trainer
from mmcl.train.blip_vqa_objective import BlipVqaObjective
from mmcl.train.run_folder import resume_checkpoint

VQA_PARTS = ("text_encoder", "text_decoder")  # as Hugging Face's BlipForQuestionAnswering
_KEPT = ("visual.", "text_encoder.", "text_decoder.")
_FIXED = ("parts", "share_text_weights")


def run_blip_vqa_recipe(recipe) -> FitResult:
    spec = dict(recipe.model)
    spec.pop("kind")
    resume_checkpoint(recipe.train.resume, recipe.train.output_dir)
    torch.manual_seed(recipe.train.seed)
    model = build_vqa_blip(spec, recipe.source)
    data = dict(recipe.data)
    if data.get("kind") == "scene_conversations":
        turns = data.setdefault("max_turns", 1)
        if turns != 1:
            raise ValueError(
                f"{recipe.source}: data.max_turns must be 1 for BLIP, which answers one "
                f"question at a time; got {turns!r}"
            )
    conversations = build_conversations(data, model.image_size, recipe.source)
    if data:
        raise ValueError(f"{recipe.source}: unknown data entries {sorted(data)}")
    trainer = Trainer(
        model,
        VQAPairs(conversations, model.tokenizer, model.context_length),
        recipe.train,
        evaluate=build_vqa_evaluation(recipe.eval, model.image_size, recipe.source),
        objective=BlipVqaObjective(),
    )
    result = trainer.fit()
    if trainer.info.is_main:  # beside model.safetensors: one self-contained folder
        model.tokenizer.save(recipe.train.output_dir)
    return result


def build_vqa_evaluation(spec: dict[str, Any], image_size: int, source: str):
    spec = dict(spec)
    suite = None
    if "vqa_size" in spec:
        size = spec.pop("vqa_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{source}: eval.vqa_size must be a positive int, got {size!r}")
        suite = SceneVQASuite(BlipAnswerer(), spec.pop("scene_split", "test"), size, image_size)
    if spec:
        raise ValueError(f"{source}: unknown eval entries {sorted(spec)}")
    return suite


def build_vqa_blip(spec: dict[str, Any], source: str) -> Blip:
    """A BLIP holding its image tower, text encoder and decoder, untied, with its tokenizer:
    from `spec["init"]` (a BLIP folder) or new (`name` and config overrides); the entries
    used are removed from `spec`."""
    fixed = sorted(set(_FIXED) & set(spec))
    if fixed:
        raise ValueError(
            f"{source}: drop model.{fixed[0]}: a BLIP VQA model holds {list(VQA_PARTS)}, unshared"
        )
    folder = spec.pop("init", None)
    if folder is None:
        name = spec.pop("name", "tiny-blip")
        if "blip_text" not in get_model_config(name):
            raise ValueError(f"{source}: model.name {name!r} is not a BLIP (e.g. tiny-blip)")
        overrides = {key: spec.pop(key) for key in list(spec)}
        model = create_model(name, parts=list(VQA_PARTS), share_text_weights=False, **overrides)
    else:
        if spec:
            raise ValueError(
                f"{source}: model.init loads the BLIP as it is; drop {sorted(spec)} (or set "
                f"model.init: null for a new model)"
            )
        model = _from_folder(Path(folder), source)
    if model.tokenizer is None:
        raise ValueError(
            f"{source}: the BLIP has no WordPiece tokenizer; give a model whose config names "
            f"a shipped vocabulary (tiny-blip) or a folder holding its vocab.txt"
        )
    text, vision = model.config.blip_text, model.config.blip_vision
    if text.width != vision.width:
        raise ValueError(
            f"{source}: the answer decoder's cross-attention reads the question encoder's "
            f"states (blip_text.width {text.width}) with the width of the image's "
            f"(blip_vision.width {vision.width}); make them equal"
        )
    return model


def _from_folder(folder: Path, source: str) -> Blip:
    if not folder.exists():
        raise FileNotFoundError(
            f"{source}: model.init {folder} does not exist; train the BLIP it starts from "
            f"(mmcl train --config blip-scenes), or --set model.init=null for a new tiny-blip"
        )
    start = load(folder)[0]
    if not isinstance(start, Blip):
        raise ValueError(
            f"{source}: model.init {folder} holds a {type(start).__name__} model; give a BLIP "
            f"folder (e.g. runs/blip-scenes)"
        )
    missing = [part for part in VQA_PARTS if part not in start.config.parts]
    if missing:
        raise ValueError(
            f"{source}: model.init {folder} holds a BLIP without {missing}; VQA needs its text "
            f"encoder and decoder (the blip-scenes recipe's folder has both)"
        )
    config = dataclasses.replace(start.config, parts=VQA_PARTS, share_text_weights=False)
    model = Blip(config)
    # A tied model's state dict names each shared tensor twice (encoder and decoder): each
    # copy starts from it.
    state = {k: v for k, v in start.state_dict().items() if k.startswith(_KEPT)}
    model.load_state_dict(state)
    model.tokenizer = start.tokenizer
    return model
