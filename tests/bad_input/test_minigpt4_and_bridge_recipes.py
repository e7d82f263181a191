"""Promises about MiniGPT-4 folders and the bridges recipes (blip2, minigpt4) given input that
does not fit: one line naming the file or entry and the way out."""

from __future__ import annotations

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

import mmcl
from mmcl.cli import main
from mmcl.io.checkpoints import CheckpointError, save_safetensors
from mmcl.io.checkpoints.minigpt4 import save_minigpt4_folder
from mmcl.models.bridges.minigpt4 import MiniGPT4, MiniGPT4Config
from mmcl.recipe import load_recipe, run_recipe
from tiny_llava import image_file
from word_tokenizer import word_tokenizer

LM = {
    "model_type": "llama",
    "vocab_size": 20,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}
CONFIG = {
    "blip_vision": {
        "image_size": 32,
        "patch_size": 16,
        "width": 16,
        "layers": 1,
        "heads": 2,
        "mlp_width": 32,
    },
    "qformer": {"width": 16, "layers": 1, "heads": 2, "mlp_width": 32, "queries": 2},
    "text_config": LM,
    "image_token_id": 19,
}
NEW = ["model.vocab_size=200", "model.tokenizer_text_size=40", "data.size=2"]


def minigpt4_folder(folder, without: str | None = None):
    """A tiny MiniGPT-4 folder; `without`: a part's prefix whose tensors are left out."""
    save_minigpt4_folder(MiniGPT4(MiniGPT4Config.from_dict(CONFIG)), word_tokenizer(["a"]), folder)
    if without is not None:
        path = str(folder / "model.safetensors")
        with safe_open(path, "pt") as handle:
            metadata = handle.metadata()
            kept = {k: handle.get_tensor(k) for k in handle.keys() if not k.startswith(without)}
        save_file(kept, path, metadata=metadata)
    return folder


def test_a_minigpt4_folder_without_its_projection_is_refused_naming_the_part(tmp_path):
    folder = minigpt4_folder(tmp_path / "minigpt4", without="language_projection.")
    with pytest.raises(CheckpointError) as error:
        mmcl.load(folder)
    message = str(error.value)
    assert "a MiniGPT-4 without its projection" in message and "no language_projection.*" in message
    assert "save_minigpt4_folder" in message and "\n" not in message


def test_ask_with_a_minigpt4_folder_without_its_projection_says_so_in_one_line(tmp_path, capsys):
    folder = minigpt4_folder(tmp_path / "minigpt4", without="language_projection.")
    image = image_file(tmp_path / "x.png")
    assert main(["ask", "--model", str(folder), "--image", str(image), "how many?"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("mmcl ask: error: ") and "without its projection" in error


def test_a_minigpt4_config_with_a_qformer_text_part_or_instructions_is_refused():
    for change in ({"instruct": True}, {"qformer": {**CONFIG["qformer"], "vocab_size": 30}}):
        with pytest.raises(ValueError, match="MiniGPT-4's Q-Former is BLIP-2's stage-2 one"):
            MiniGPT4Config.from_dict({**CONFIG, **change})


def test_a_minigpt4_recipe_whose_blip2_init_is_not_a_blip2_names_what_it_holds(tmp_path):
    clip = save_safetensors(mmcl.create_model("tiny-vit"), tmp_path / "clip.safetensors")
    recipe = load_recipe(
        "minigpt4-scenes-stage1",
        [*NEW, f"model.blip2_init={clip}", f"train.output_dir={tmp_path / 'run'}"],
    )
    with pytest.raises(ValueError, match=r"model.blip2_init .*clip.safetensors holds a CLIP, not"):
        run_recipe(recipe)


def test_a_bridge_recipe_whose_init_is_another_kind_of_model_is_refused(tmp_path):
    folder = minigpt4_folder(tmp_path / "minigpt4")
    recipe = load_recipe(
        "blip2-scenes", [f"model.init={folder}", f"train.output_dir={tmp_path / 'run'}"]
    )
    with pytest.raises(ValueError, match=r"holds a MiniGPT4, not a Blip2 \(model.kind\)"):
        run_recipe(recipe)


def test_a_blip2_recipe_training_a_part_it_lacks_lists_its_parts(tmp_path):
    recipe = load_recipe(
        "blip2-scenes-stage1",
        [*NEW, "model.trainable=[projector]", f"train.output_dir={tmp_path / 'run'}"],
    )
    expected = "model.trainable must list some of ['visual', 'qformer', 'language_projection'"
    with pytest.raises(ValueError, match=expected.replace("[", r"\[")):
        run_recipe(recipe)


def test_a_bridge_recipe_whose_system_text_is_empty_null_says_to_give_a_text(tmp_path):
    # `--set data.system=` once failed deep in the tokenizer ("text input must be of type str")
    recipe = load_recipe(
        "llava-scenes-stage1", ["data.system=", f"train.output_dir={tmp_path / 'run'}"]
    )
    with pytest.raises(ValueError, match=r"data.system must be a text \(\"\" for none\), got None"):
        run_recipe(recipe)


def test_ask_with_a_blip2_folder_without_an_image_token_says_the_chat_needs_one(tmp_path, capsys):
    import transformers

    from blip2_configs import LMS, QFORMER, VISION

    config = transformers.Blip2Config(
        vision_config=VISION,
        qformer_config=QFORMER,
        text_config=LMS["llama"]().to_dict(),
        num_query_tokens=2,
        image_token_index=None,
    )
    transformers.Blip2ForConditionalGeneration(config).save_pretrained(tmp_path / "hf")
    image = image_file(tmp_path / "x.png")
    capsys.readouterr()  # save_pretrained's progress bar
    assert main(["ask", "--model", str(tmp_path / "hf"), "--image", str(image), "q?"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("mmcl ask: error: ") and "without an image_token_index" in error
