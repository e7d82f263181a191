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

A new bridge is one `Bridge` entry in `BRIDGES`: its parts, how a new one is built, how its
forward gives logits and how its folder is written.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmcl.data.chat_template import (
    VICUNA_SYSTEM,
    ChatTemplate,
    ConversationEncoder,
    collate_for_training,
)
from mmcl.data.conversations import ConversationImages
from mmcl.data.scene_conversations import (
    CAPTION_INSTRUCTIONS,
    DESCRIBE_INSTRUCTIONS,
    SceneConversations,
)
from mmcl.data.scene_qa import scene_texts
from mmcl.eval.scene_vqa import SceneVQASuite
from mmcl.io.atomic import atomic_folder
from mmcl.io.checkpoints import save_huggingface
from mmcl.io.checkpoints.minigpt4 import save_minigpt4_folder
from mmcl.io.lm_tokenizer import train_lm_tokenizer
from mmcl.io.transforms import image_transform
from mmcl.models.bridges.blip2 import Blip2, Blip2Config, query_prompt_logits
from mmcl.models.bridges.llava import Llava, LlavaConfig
from mmcl.models.bridges.minigpt4 import MiniGPT4, MiniGPT4Config
from mmcl.models.factory import create_model, load
from mmcl.models.registry import get_model_config
from mmcl.nn.lora import LoraSpec, add_lora, save_lora_adapter, unload_lora
from mmcl.train import FitResult, Trainer
from mmcl.train.lm_objective import CausalLMObjective, llava_logits, pack_targets
from mmcl.train.run_folder import resume_checkpoint

PARTS = ("visual", "projector", "language_model")  # LLaVA's
QFORMER_PARTS = ("visual", "qformer", "language_projection", "language_model")
LORA_FILE = "lora.safetensors"
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


def _save_huggingface(model, tokenizer, folder: Path) -> None:
    save_huggingface(model, folder, overwrite=True)
    tokenizer.save_pretrained(folder)


def _new_llava(spec: dict[str, Any], source: str, tokenizer, lm: dict[str, Any]) -> Llava:
    pretrained = spec.pop("tower_pretrained", None)
    name = spec.pop("tower", None)
    clip = None if pretrained is None else create_model(pretrained=pretrained)
    if clip is not None and not hasattr(clip.config, "vision_cfg"):
        raise ValueError(
            f"{source}: model.tower_pretrained {pretrained} is a {type(clip).__name__}, "
            f"not a CLIP (e.g. runs/scenes-vit/model.safetensors)"
        )
    if clip is None:
        tower = create_model(name or "tiny-vit").config
    else:  # the weights bring their tower's shape (e.g. scenes-vit's 4 layers)
        tower = clip.config
        named = None if name is None else _vision_dict(create_model(name).config.vision_cfg)
        if named is not None and named != _vision_dict(tower.vision_cfg):
            raise ValueError(
                f"{source}: model.tower_pretrained {pretrained} holds a tower "
                f"{_vision_dict(tower.vision_cfg)}, not model.tower {name}'s {named}; "
                f"drop model.tower (--set model.tower=null)"
            )
    config = LlavaConfig.from_dict(
        {
            "llava_vision": _vision_dict(tower.vision_cfg),
            "language_model": lm,
            "projector": spec.pop("projector", "mlp2x_gelu"),
            "quick_gelu": tower.quick_gelu,
            "image_token_id": tokenizer.convert_tokens_to_ids("<image>"),
        },
        source=source,
    )
    model = Llava(config)
    if clip is not None:
        weights = {k: v for k, v in clip.visual.state_dict().items() if k != "proj"}
        model.visual.load_state_dict(weights)
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
        save=_save_huggingface,
    ),
    "blip2": Bridge(
        Blip2,
        QFORMER_PARTS,
        ("qformer", "language_projection"),
        _qformer_bridge_builder(Blip2, Blip2Config),
        ("tower", "tower_pretrained", "qformer"),
        query_prompt_logits,
        _save_huggingface,
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
            encoder,
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
    texts = _scene_text(spec.pop("tokenizer_text_size", 1000), template)
    tokenizer = train_lm_tokenizer(texts, spec.pop("vocab_size", 512))
    lm = {**DEFAULT_LM, **spec.pop("lm", {})}
    lm.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
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


class EncodedConversations(torch.utils.data.Dataset):
    """``(image, EncodedConversation)`` items of an ``(image, Conversation)`` data set."""

    def __init__(self, conversations, encoder: ConversationEncoder):
        self.conversations, self.encoder = conversations, encoder

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int):
        image, conversation = self.conversations[index]
        return image, self.encoder.encode(conversation, where=f"sample {index}")


class ConversationCollate:
    """Images stacked; ids, labels and mask right-padded and packed for the engine."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items):
        images = torch.stack([image for image, _ in items])
        encoded = [sample for _, sample in items]
        return images, pack_targets(collate_for_training(encoded, self.pad_token_id))


def save_model_folder(
    model,
    tokenizer,
    folder: str | os.PathLike,
    save=_save_huggingface,
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


def _vision_dict(vision) -> dict[str, Any]:
    return {
        "image_size": vision.image_size,
        "layers": vision.layers,
        "width": vision.width,
        "patch_size": vision.patch_size,
        "head_width": vision.head_width,
        "mlp_ratio": vision.mlp_ratio,
    }


def _scene_text(size: int, template: ChatTemplate | None = None) -> list[str]:
    """The built-in text the tokenizer learns: `size` scene captions, questions and answers
    and conversations (their text as the template lays it out, without the placeholder),
    and the chat template's words."""
    from mmcl.data.conversations import IMAGE_PLACEHOLDER

    template = template or ChatTemplate()
    conversations = SceneConversations("train", size, transform=lambda image: image)
    texts = scene_texts(size)
    for index in range(size):
        for turn in conversations.conversation(index).turns:
            texts += [text.replace(IMAGE_PLACEHOLDER, "") for text in turn]
    # Every sample holds the template's words: weigh them so, and they become few tokens.
    template_words = [w for w in (template.system, template.user, template.assistant) if w]
    instructions = list(CAPTION_INSTRUCTIONS + DESCRIBE_INSTRUCTIONS)
    return texts + template_words * max(1, size // 4) + instructions
