"""The CogVLM recipe (``model.kind: cogvlm``): CogVLM's adapter and visual expert trained on
the scene conversations (or a LLaVA-format JSON file), on the one engine, the loss on the
assistant's answers only.

    model:  kind: cogvlm
            init: FOLDER            # a LLaVA folder with its tokenizer (e.g. runs/llava-scenes/hf):
                                    # its image tower, LM and tokenizer, a new adapter, and the
                                    # expert copied from its LM; or a CogVLM folder, to go on
            tower / tower_pretrained / lm / vocab_size / tokenizer_text_size
                                    # without init: a new model, as the llava recipes build one
            adapter_width: N        # the GLU adapter's inner width (default: the LM's)
            trainable: [projector, visual_expert]   # of visual, projector, visual_expert,
                                    # language_model (the LM's own weights: text tokens' path)
    data, eval: as the llava recipes' (scene_conversations or llava_json; vqa_size)

The run's folder gets the engine's checkpoints and ``model/``: the model as a CogVLM folder
with its tokenizer (what `mmcl.load` and `mmcl ask --model` read). With
`train.checkpoint_frozen: false` the frozen weights are written once, to the run's
frozen.safetensors, and both the checkpoints and ``model/`` refer to that file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmcl.data.chat_template import VICUNA_SYSTEM, ChatTemplate
from mmcl.io.checkpoints.cogvlm import save_cogvlm_folder
from mmcl.models.bridges.cogvlm import CogVLM, CogVLMConfig
from mmcl.models.bridges.llava import Llava
from mmcl.models.factory import load
from mmcl.nn.visual_expert import copy_language_weights_to_expert
from mmcl.recipe_bridges import conversation_trainer
from mmcl.train import FitResult
from mmcl.train.bridges import clip_tower, load_clip_tower, new_tokenizer_and_lm, vision_dict
from mmcl.train.run_folder import resume_checkpoint

PARTS = ("visual", "projector", "visual_expert", "language_model")
MODEL_FOLDER = "model"
NEW_ONLY = ("tower", "tower_pretrained", "lm", "vocab_size", "tokenizer_text_size")


def is_cogvlm_recipe(recipe) -> bool:
    return recipe.model.get("kind") == "cogvlm"


def run_cogvlm_recipe(recipe) -> FitResult:
    spec = dict(recipe.model)
    spec.pop("kind")
    resume_checkpoint(recipe.train.resume, recipe.train.output_dir)
    torch.manual_seed(recipe.train.seed)
    data = dict(recipe.data)
    template = ChatTemplate(system=data.pop("system", VICUNA_SYSTEM))
    model, tokenizer = build_cogvlm(spec, recipe.source, template)
    set_trainable(model, spec.pop("trainable", ["projector", "visual_expert"]), recipe.source)
    if spec:
        raise ValueError(f"{recipe.source}: unknown model entries {sorted(spec)}")
    trainer = conversation_trainer(recipe, model, tokenizer, template, data)
    result = trainer.fit()
    if trainer.info.is_main:
        frozen = trainer.frozen_reference  # the run's frozen.safetensors, when it wrote one
        tokenizer.chat_template = template.to_jinja()  # `mmcl ask` reads the system text
        save_cogvlm_folder(
            model,
            Path(recipe.train.output_dir) / MODEL_FOLDER,
            None if frozen is None else frozen["path"],
            tokenizer,
        )
    return result


def build_cogvlm(spec: dict[str, Any], source: str, template: ChatTemplate | None = None):
    """`(model, tokenizer)`: from `spec["init"]` (a LLaVA or CogVLM folder with its tokenizer),
    or new; the entries used are removed from `spec`."""
    from transformers import AutoTokenizer

    adapter_width = spec.pop("adapter_width", None)
    folder = spec.pop("init", None)
    if folder is not None:
        given = sorted(set(NEW_ONLY) & set(spec))
        if given:
            raise ValueError(
                f"{source}: model.init loads the model and tokenizer as they are; drop {given}"
            )
        if not Path(folder).exists():
            raise FileNotFoundError(
                f"{source}: model.init {folder} does not exist; train the LLaVA it starts from "
                f"(mmcl train --config llava-scenes-stage1, then --config llava-scenes), or "
                f"--set model.init=null for a new model"
            )
        start = load(folder)[0]
        if not isinstance(start, Llava):  # a CogVLM is one too
            raise ValueError(
                f"{source}: model.init {folder} holds a {type(start).__name__} model; give a "
                f"LLaVA or CogVLM folder with its tokenizer (e.g. runs/llava-scenes/hf)"
            )
        if not (Path(folder) / "tokenizer_config.json").is_file():
            raise ValueError(
                f"{source}: model.init {folder} has no tokenizer (tokenizer_config.json); give "
                f"the folder a recipe wrote (model and tokenizer)"
            )
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if isinstance(start, CogVLM):
            if adapter_width is not None:
                raise ValueError(f"{source}: model.init is a CogVLM folder; drop adapter_width")
            return start, tokenizer
        config = {
            "cogvlm_vision": vision_dict(start.config.llava_vision),
            "language_model": start.config.language_model,
            "adapter_width": adapter_width,
            "feature_layer": start.config.feature_layer,
            "keep_class_token": start.config.keep_class_token,
            "quick_gelu": start.config.quick_gelu,
            "image_token_id": start.image_token_id,
        }
        model = CogVLM(CogVLMConfig.from_dict(config, source))
        model.visual.load_state_dict(start.visual.state_dict())
        # The LM's weights under their own names; the expert copies them anew.
        loaded = model.language_model.load_state_dict(
            start.language_model.state_dict(), strict=False
        )
        assert not loaded.unexpected_keys and all(".expert." in k for k in loaded.missing_keys)
        copy_language_weights_to_expert(model.language_model)
        return model, tokenizer
    tokenizer, lm = new_tokenizer_and_lm(spec, template)
    tower, clip = clip_tower(spec, source)
    config = {
        "cogvlm_vision": vision_dict(tower.vision_cfg),
        "language_model": lm,
        "adapter_width": adapter_width,
        "quick_gelu": tower.quick_gelu,
        "image_token_id": tokenizer.convert_tokens_to_ids("<image>"),
    }
    model = CogVLM(CogVLMConfig.from_dict(config, source))
    if clip is not None:
        load_clip_tower(model.visual, clip)
    return model, tokenizer


def set_trainable(model: CogVLM, parts, source: str) -> None:
    """Train `parts` (of `PARTS`); freeze the rest, so the engine leaves them out of the
    optimizer (and, with `train.checkpoint_frozen: false`, out of the checkpoints)."""
    unknown = sorted(set(parts or []) - set(PARTS))
    if unknown or not parts:
        raise ValueError(f"{source}: model.trainable must list some of {list(PARTS)}, got {parts}")
    model.requires_grad_(False)
    for part in ("visual", "projector", "language_model"):
        if part in parts:
            getattr(model, part).requires_grad_(True)
    if "language_model" in parts and "visual_expert" not in parts:
        for parameter in model.expert_parameters():
            parameter.requires_grad_(False)
    if "visual_expert" in parts:
        for parameter in model.expert_parameters():
            parameter.requires_grad_(True)
