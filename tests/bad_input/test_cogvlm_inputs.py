"""Promises of CogVLM (the visual expert, its folder, the cogvlm-scenes recipe) about input
that does not fit: one clear error naming what is wrong and the way out."""

from __future__ import annotations

import pytest
import torch

import mmcl
from mmcl.io.checkpoints import CheckpointError, save_safetensors
from mmcl.io.checkpoints.cogvlm import save_cogvlm_folder
from mmcl.models.bridges.cogvlm import CogVLM, CogVLMConfig
from mmcl.recipe import load_recipe, run_recipe
from mmcl.train.frozen_weights import write_frozen_weights

VISION = {"image_size": 32, "patch_size": 16, "width": 32, "layers": 2, "head_width": 16}
LLAMA = {
    "model_type": "llama",
    "vocab_size": 50,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}


def tiny(lm=LLAMA) -> CogVLM:
    config = {"cogvlm_vision": VISION, "language_model": lm, "image_token_id": 49}
    return CogVLM(CogVLMConfig.from_dict(config, source="cfg.json"))


def folder_with_frozen_weights(tmp_path):
    model = tiny()
    model.requires_grad_(False)
    for parameter in model.expert_parameters():
        parameter.requires_grad_(True)
    reference = write_frozen_weights(model, tmp_path)
    save_cogvlm_folder(model, tmp_path / "model", reference["path"])
    return tmp_path / "model", tmp_path / "frozen.safetensors"


def test_a_language_model_outside_the_llama_family_is_refused_by_name():
    gpt2 = {"model_type": "gpt2", "vocab_size": 50, "n_embd": 32, "n_layer": 1, "n_head": 2}
    with pytest.raises(ValueError, match=r"LLaMA-family language model .*not 'gpt2'"):
        tiny(gpt2)


def test_a_config_without_the_language_models_type_says_what_to_give():
    lm = {k: v for k, v in LLAMA.items() if k != "model_type"}
    with pytest.raises(ValueError, match=r"cfg.json: language_model .* model_type"):
        tiny(lm)


def test_loading_a_folder_whose_frozen_weights_are_missing_names_the_file(tmp_path):
    folder, frozen = folder_with_frozen_weights(tmp_path)
    frozen.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{folder}: .*{frozen}, which is missing"):
        mmcl.load(folder)


def test_loading_a_folder_whose_frozen_weights_changed_names_the_file(tmp_path):
    folder, frozen = folder_with_frozen_weights(tmp_path)
    frozen.write_bytes(frozen.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(CheckpointError, match=rf"{frozen}, but that file has changed"):
        mmcl.load(folder)


def test_an_image_mask_for_other_inputs_than_the_lm_runs_is_an_error_not_a_misroute():
    model = tiny().eval()
    model.route.set_next(torch.ones(1, 5, dtype=torch.bool))  # armed for 5 tokens...
    with pytest.raises(ValueError, match=r"mask is \(1, 5\) but the language model runs \(1, 3\)"):
        model.language_model(input_ids=torch.tensor([[1, 2, 3]]))  # ...3 run


def test_recipe_trainable_parts_outside_the_list_are_named(tmp_path):
    recipe = load_recipe(
        "cogvlm-scenes",
        [
            "model.init=null",
            "model.trainable=[projector, expert]",
            f"train.output_dir={tmp_path}",
            "model.tokenizer_text_size=10",
            "model.vocab_size=120",
        ],
    )
    with pytest.raises(ValueError, match=r"model.trainable must list some of .*visual_expert"):
        run_recipe(recipe)


def test_recipe_init_from_a_model_that_is_neither_llava_nor_cogvlm_says_what_to_give(tmp_path):
    save_safetensors(mmcl.create_model("tiny-vit"), tmp_path / "clip.safetensors")
    recipe = load_recipe(
        "cogvlm-scenes",
        [f"model.init={tmp_path / 'clip.safetensors'}", f"train.output_dir={tmp_path / 'run'}"],
    )
    with pytest.raises(ValueError, match=r"holds a CLIP model; give a LLaVA or CogVLM folder"):
        run_recipe(recipe)


def test_export_to_hugging_face_says_there_is_no_cogvlm_class_and_what_to_use(tmp_path):
    from mmcl.io.checkpoints import save_huggingface

    with pytest.raises(CheckpointError, match=r"no CogVLM model class.*--to mmcl"):
        save_huggingface(tiny(), tmp_path / "hf")


def test_recipe_started_before_the_llava_it_starts_from_says_which_runs_come_first(tmp_path):
    recipe = load_recipe(
        "cogvlm-scenes",
        [f"model.init={tmp_path / 'none'}", f"train.output_dir={tmp_path / 'run'}"],
    )
    with pytest.raises(FileNotFoundError, match=r"does not exist; .*--config llava-scenes-stage1"):
        run_recipe(recipe)


def test_saving_a_folder_that_refers_to_frozen_weights_the_model_no_longer_holds_is_refused(
    tmp_path,
):
    folder, frozen = folder_with_frozen_weights(tmp_path)
    model = mmcl.load(folder)[0]
    with torch.no_grad():
        model.language_model.model.norm.weight.add_(1.0)
    with pytest.raises(CheckpointError, match=r"model.norm.weight'\] differ from the file's"):
        save_cogvlm_folder(model, tmp_path / "again", frozen)
