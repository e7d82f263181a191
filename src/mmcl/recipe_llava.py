"""The LLaVA recipes (``model.kind: llava``): stage 1 trains the projector on captions, stage 2
the projector and the language model on conversations, both on the one engine.

    model:  kind: llava
            init: FOLDER            # a LLaVA folder with its tokenizer (stage 1's output), or:
            tower: tiny-vit         # an mmcl CLIP config name for the image tower
            tower_pretrained: PATH  # optional: that CLIP's trained weights
            lm: {hidden_size: 64, ...}   # LlamaConfig fields of a new tiny LLaMA
            projector: mlp2x_gelu
            vocab_size: 512         # of the tokenizer trained on the built-in scene text
            tokenizer_text_size: 1000  # scenes whose text it is trained on
            trainable: [projector]  # the parts trained; all others are frozen and left out
                                    # of the optimizer
            lora: {target: lm, r: 8, alpha: 16, modules: [q_proj, v_proj]}
                                    # optional: LoRA (peft) on lm, projector or tower; that
                                    # part's own weights are frozen, its adapters train
    data:   kind: scene_conversations, stage: captions | instructions, size, max_turns
            or kind: llava_json, path: FILE, images: FOLDER;  max_length: tokens per sample;
            system: the chat template's system text (default Vicuna's, as LLaVA-1.5's);
                    hf/ records it in the tokenizer's chat template, for `mmcl ask`
    eval:   vqa_size: N (held-out scene questions), scene_split: test

The run's folder gets the engine's `model.safetensors` and checkpoints, and ``hf/``: the
model as a Hugging Face LLaVA folder with its tokenizer (what the next stage's `init` and
`mmcl.load` read; LoRA merged into it), and with LoRA ``lora.safetensors``: the adapter alone.
"""

from __future__ import annotations

import os
import shutil
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
from mmcl.io.lm_tokenizer import train_lm_tokenizer
from mmcl.io.transforms import image_transform
from mmcl.models.bridges.llava import Llava, LlavaConfig
from mmcl.models.factory import create_model, load
from mmcl.nn.lora import LoraSpec, add_lora, save_lora_adapter, unload_lora
from mmcl.train import FitResult, Trainer
from mmcl.train.lm_objective import CausalLMObjective, pack_targets
from mmcl.train.run_folder import resume_checkpoint

PARTS = ("visual", "projector", "language_model")
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


def is_llava_recipe(recipe) -> bool:
    return recipe.model.get("kind") == "llava"


def run_llava_recipe(recipe) -> FitResult:
    spec = dict(recipe.model)
    spec.pop("kind")
    resume_checkpoint(recipe.train.resume, recipe.train.output_dir)
    torch.manual_seed(recipe.train.seed)
    data = dict(recipe.data)
    template = ChatTemplate(system=data.pop("system", VICUNA_SYSTEM))
    model, tokenizer = build_llava(spec, recipe.source, template)
    set_trainable(model, spec.pop("trainable", ["projector"]), recipe.source)
    lora = spec.pop("lora", None)
    if lora is not None:
        lora = LoraSpec.from_dict(lora, f"{recipe.source}: model.lora")
        add_lora(model, lora, f"{recipe.source}: model.lora")
    if spec:
        raise ValueError(f"{recipe.source}: unknown model entries {sorted(spec)}")
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
    train_data = EncodedConversations(conversations, encoder)
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
    trainer = Trainer(
        model,
        train_data,
        recipe.train,
        collate_fn=ConversationCollate(tokenizer.pad_token_id),
        evaluate=evaluate,
        objective=CausalLMObjective(),
    )
    result = trainer.fit()
    if lora is not None:
        save_lora_adapter(model, lora, Path(recipe.train.output_dir) / LORA_FILE)
        unload_lora(model)  # the Hugging Face folder holds the merged weights
    save_llava_folder(model, tokenizer, Path(recipe.train.output_dir) / "hf", template)
    return result


def build_llava(spec: dict[str, Any], source: str, template: ChatTemplate | None = None):
    """`(model, tokenizer)`: loaded from `spec["init"]`, or new (the tokenizer trained on the
    built-in scene text and `template`'s words); the entries used are removed from `spec`."""
    from transformers import AutoTokenizer

    if "init" in spec:
        new_only = {
            "tower",
            "tower_pretrained",
            "lm",
            "projector",
            "vocab_size",
            "tokenizer_text_size",
        }
        given = sorted(new_only & set(spec))
        if given:
            raise ValueError(
                f"{source}: model.init loads the model and tokenizer as they are; drop {given}"
            )
        folder = spec.pop("init")
        model = load(folder)[0]
        return model, AutoTokenizer.from_pretrained(folder)
    texts = _scene_text(spec.pop("tokenizer_text_size", 1000), template)
    tokenizer = train_lm_tokenizer(texts, spec.pop("vocab_size", 512))
    tower = create_model(spec.pop("tower", "tiny-vit")).config
    lm = {**DEFAULT_LM, **spec.pop("lm", {})}
    lm.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
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
    pretrained = spec.pop("tower_pretrained", None)
    if pretrained is not None:
        clip = create_model(pretrained=pretrained)
        weights = {k: v for k, v in clip.visual.state_dict().items() if k != "proj"}
        model.visual.load_state_dict(weights)
    return model, tokenizer


def set_trainable(model: torch.nn.Module, parts, source: str) -> None:
    """Train `parts` (of `PARTS`); freeze the rest, so the engine leaves them out of the
    optimizer."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ValueError(f"{source}: model.trainable must list some of {list(PARTS)}, got {parts}")
    for part in PARTS:
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
        f"{source}: data.kind must be scene_conversations or llava_json for a LLaVA model, "
        f"got {kind!r}"
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


def save_llava_folder(
    model: Llava, tokenizer, folder: str | os.PathLike, template: ChatTemplate | None = None
) -> Path:
    """The model as a Hugging Face LLaVA folder with its tokenizer, replacing a previous one
    whole (a reader never sees half of each). The tokenizer's chat template is `template`'s
    (`ChatTemplate.to_jinja`: `mmcl ask` reads the system text from it, and transformers'
    `apply_chat_template` renders the training layout)."""
    folder = Path(folder)
    if template is not None:
        tokenizer.chat_template = template.to_jinja()
    with atomic_folder(folder.with_name(folder.name + ".new")) as staging:
        save_huggingface(model, staging, overwrite=True)
        tokenizer.save_pretrained(staging)
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        folder.with_name(folder.name + ".new").rename(folder)
        shutil.rmtree(old)
    else:
        folder.with_name(folder.name + ".new").rename(folder)
    return folder


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
