"""The recipes of the bridges into a language model (``model.kind``: llava, blip2, minigpt4):
stage 1 trains the bridge on captions, stage 2 on conversations, both on the one engine, with
the loss on the assistant's answers only (`mmcl.data.chat_template`).

    model:  kind: llava | blip2 | minigpt4
            init: FOLDER            # a folder with its tokenizer (stage 1's hf/), or a new
                                    # model (the entries of `Bridge.new_entries`):
            lm: {hidden_size: 64, ...}   # LlamaConfig fields of a new tiny LLaMA
            vocab_size: 512         # of the tokenizer trained on the built-in scene text
            tokenizer_text_size: 1000  # scenes whose text it is trained on
            # llava:    tower: tiny-vit (a CLIP config), tower_pretrained: PATH (its weights),
            #           projector: mlp2x_gelu | linear
            # blip2, minigpt4: tower: tiny-blip (a BLIP config: its blip_vision),
            #           tower_pretrained: PATH (a BLIP checkpoint: its image tower),
            #           qformer: {width: 64, queries: 8, ...} (QFormerConfig fields)
            # minigpt4: blip2_init: FOLDER (a BLIP-2 folder: its tower and Q-Former)
            trainable: [projector]  # the parts trained (`Bridge.parts`); all others are
                                    # frozen and left out of the optimizer
            lora: {target: lm, r: 8, alpha: 16, modules: [q_proj, v_proj]}
                                    # optional: LoRA (peft) on a part; that part's own
                                    # weights are frozen, its adapters train
    data:   kind: scene_conversations, stage: captions | instructions, size, max_turns
            or kind: llava_json, path: FILE, images: FOLDER;  max_length: tokens per sample;
            system: the chat template's system text (default Vicuna's, as LLaVA-1.5's);
                    hf/ records it in the tokenizer's chat template, for `mmcl ask`
    eval:   vqa_size: N (held-out scene questions), scene_split: test

The run's folder gets the engine's `model.safetensors` and checkpoints, and ``hf/``: the
model with its tokenizer (what the next stage's `init`, `mmcl.load` and `mmcl ask` read; a
Hugging Face LLaVA or BLIP-2 folder, or mmcl's MiniGPT-4 folder; LoRA merged into it), and
with LoRA ``lora.safetensors``: the adapter alone.

A new bridge is one `Bridge` entry in `mmcl.train.bridges.BRIDGES`: its parts, how a new one
is built, how its forward gives logits and how its folder is written.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from mmcl.data.chat_template import VICUNA_SYSTEM, ChatTemplate, ConversationEncoder
from mmcl.data.conversation_batches import ConversationCollate, EncodedConversations
from mmcl.data.conversations import ConversationImages
from mmcl.data.scene_conversations import SceneConversations
from mmcl.eval.scene_vqa import ChatAnswerer, SceneVQASuite
from mmcl.io.atomic import atomic_folder
from mmcl.io.transforms import image_transform
from mmcl.models.bridges.llava import Llava
from mmcl.nn.lora import LoraSpec, add_lora, save_lora_adapter, unload_lora
from mmcl.train import FitResult, Trainer
from mmcl.train.bridges import (
    BRIDGES,
    build_bridge,
    save_huggingface_folder,
    set_trainable,
)
from mmcl.train.lm_objective import CausalLMObjective, llava_logits
from mmcl.train.run_folder import resume_checkpoint

LORA_FILE = "lora.safetensors"


def is_bridge_recipe(recipe) -> bool:
    return recipe.model.get("kind") in BRIDGES


def run_bridge_recipe(recipe) -> FitResult:
    spec = dict(recipe.model)
    kind = spec.pop("kind")
    if kind not in BRIDGES:
        raise ValueError(
            f"{recipe.source}: model.kind {kind!r} is unknown; the bridges are {sorted(BRIDGES)} "
            f"(a CLIP-family model is named with model.name instead)"
        )
    bridge = BRIDGES[kind]
    resume_checkpoint(recipe.train.resume, recipe.train.output_dir)
    torch.manual_seed(recipe.train.seed)
    data = dict(recipe.data)
    system = data.pop("system", VICUNA_SYSTEM)
    if not isinstance(system, str):  # `--set data.system=` reads as null
        raise ValueError(
            f'{recipe.source}: data.system must be a text ("" for none), got {system!r}'
        )
    template = ChatTemplate(system=system)
    model, tokenizer = build_bridge(bridge, spec, recipe.source, template)
    set_trainable(model, spec.pop("trainable", list(bridge.trainable)), recipe.source, bridge.parts)
    lora = spec.pop("lora", None)
    if lora is not None:
        lora = LoraSpec.from_dict(lora, f"{recipe.source}: model.lora")
        add_lora(model, lora, f"{recipe.source}: model.lora")
    if spec:
        raise ValueError(f"{recipe.source}: unknown model entries {sorted(spec)}")
    trainer = conversation_trainer(recipe, model, tokenizer, template, data, bridge.logits_of)
    result = trainer.fit()
    if not trainer.info.is_main:  # one rank writes the folders
        return result
    if lora is not None:
        save_lora_adapter(model, lora, Path(recipe.train.output_dir) / LORA_FILE)
        unload_lora(model)  # the model folder holds the merged weights
    save_model_folder(model, tokenizer, Path(recipe.train.output_dir) / "hf", bridge.save, template)
    return result


def conversation_trainer(
    recipe, model, tokenizer, template: ChatTemplate, data: dict[str, Any], logits_of=llava_logits
) -> Trainer:
    """The engine set up for a bridge on conversations: `data` (the recipe's data entries
    without `system`; each one read is checked) encoded with `template`, the loss on the
    answers only, and the held-out scene VQA suite when `recipe.eval` asks for it."""
    encoder = ConversationEncoder(
        tokenizer,
        model.image_token_id,
        model.tokens_per_image,
        template,
        max_length=data.pop("max_length", None),
    )
    conversations = build_conversations(data, model.image_size, recipe.source)
    if data:
        raise ValueError(f"{recipe.source}: unknown data entries {sorted(data)}")
    evaluate = None
    spec_eval = dict(recipe.eval)
    if "vqa_size" in spec_eval:
        evaluate = SceneVQASuite(
            ChatAnswerer(encoder),
            spec_eval.pop("scene_split", "test"),
            spec_eval.pop("vqa_size"),
            model.image_size,
        )
    if spec_eval:
        raise ValueError(f"{recipe.source}: unknown eval entries {sorted(spec_eval)}")
    return Trainer(
        model,
        EncodedConversations(conversations, encoder),
        recipe.train,
        collate_fn=ConversationCollate(tokenizer.pad_token_id),
        evaluate=evaluate,
        objective=CausalLMObjective(logits_of),
    )


def build_conversations(data: dict[str, Any], image_size: int, source: str):
    kind = data.pop("kind", None)
    transform = image_transform(image_size)
    if kind == "scene_conversations":
        return SceneConversations(
            "train",
            data.pop("size", 10_000),
            data.pop("stage", "instructions"),
            image_size,
            data.pop("seed", 0),
            transform,
            data.pop("max_turns", 3),
        )
    if kind == "llava_json":
        if "path" not in data or "images" not in data:
            raise ValueError(f"{source}: data.kind llava_json needs data.path and data.images")
        return ConversationImages(data.pop("path"), data.pop("images"), transform)
    raise ValueError(
        f"{source}: data.kind must be scene_conversations or llava_json for a bridge, got {kind!r}"
    )


def save_model_folder(
    model,
    tokenizer,
    folder: str | os.PathLike,
    save=save_huggingface_folder,
    template: ChatTemplate | None = None,
) -> Path:
    """The model and its tokenizer as one folder (`save` writes them: a Hugging Face folder by
    default), replacing a previous one whole (a reader never sees half of each). The
    tokenizer's chat template is `template`'s (`ChatTemplate.to_jinja`: `mmcl ask` reads the
    system text from it, and transformers' `apply_chat_template` renders the training layout)."""
    folder = Path(folder)
    if template is not None:
        tokenizer.chat_template = template.to_jinja()
    with atomic_folder(folder.with_name(folder.name + ".new")) as staging:
        save(model, tokenizer, staging)
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        folder.with_name(folder.name + ".new").rename(folder)
        shutil.rmtree(old)
    else:
        folder.with_name(folder.name + ".new").rename(folder)
    return folder


def save_llava_folder(
    model: Llava, tokenizer, folder: str | os.PathLike, template: ChatTemplate | None = None
) -> Path:
    """The model as a Hugging Face LLaVA folder with its tokenizer (`save_model_folder`)."""
    return save_model_folder(model, tokenizer, folder, template=template)
