"""Bad input to the blip-vqa-scenes recipe and to `mmcl ask` with a BLIP: what mmcl promises.

- `model.init` that does not exist is a FileNotFoundError naming it and the recipe that
  trains it (blip-scenes); a folder of another model, or of a BLIP without a text encoder or
  decoder, is a ValueError naming what it holds.
- `model.init` with config entries, or `model.parts` / `model.share_text_weights` at all, is
  a ValueError saying which entry to drop; a model name that is no BLIP, or a text width
  other than the image tower's (the decoder reads the question's states), is a ValueError
  naming them.
- `data.max_turns` other than 1, unknown data or eval entries, and an `eval.vqa_size` that
  is not a positive int are ValueErrors naming the entry.
- A conversation of more than one turn, or a question or answer longer than the model's
  positions, is a ValueError naming the sample (never cut silently).
- `mmcl ask --system` with a BLIP, or a BLIP without its answer decoder, is refused.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import mmcl
from mmcl.cli import main
from mmcl.data.conversations import Conversation
from mmcl.data.vqa_pairs import VQAPairs
from mmcl.io.checkpoints import save_safetensors
from mmcl.recipe import load_recipe, run_recipe

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

TINY = ["model.init=null", "model.blip_text={width: 32}", "model.blip_vision={width: 32}"]


def run(tmp_path, *overrides):
    return run_recipe(
        load_recipe("blip-vqa-scenes", [f"train.output_dir={tmp_path / 'run'}", *overrides])
    )


def test_a_missing_init_folder_names_it_and_the_recipe_that_trains_it(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"model.init .*nowhere does not exist.*blip-scenes"
    ):
        run(tmp_path, f"model.init={tmp_path / 'nowhere'}")


def test_an_init_folder_of_another_model_is_refused(tmp_path):
    save_safetensors(mmcl.create_model("tiny-vit"), tmp_path / "clip" / "model.safetensors")
    with pytest.raises(ValueError, match=r"holds a CLIP model; give a BLIP folder"):
        run(tmp_path, f"model.init={tmp_path / 'clip'}")


def test_an_init_blip_without_a_decoder_is_refused(tmp_path):
    retrieval = mmcl.create_model("tiny-blip", parts=["text_encoder", "itc", "itm"])
    save_safetensors(retrieval, tmp_path / "blip" / "model.safetensors")
    retrieval.tokenizer.save(tmp_path / "blip")
    with pytest.raises(ValueError, match=r"without \['text_decoder'\]"):
        run(tmp_path, f"model.init={tmp_path / 'blip'}")


def test_config_entries_beside_init_are_refused(tmp_path):
    with pytest.raises(
        ValueError, match=r"model.init loads the BLIP as it is; drop \['blip_text'\]"
    ):
        run(tmp_path, "model.blip_text={width: 32}")


@pytest.mark.parametrize("entry", ["parts=[text_decoder]", "share_text_weights=true"])
def test_the_vqa_models_parts_are_fixed(tmp_path, entry):
    with pytest.raises(ValueError, match=rf"drop model.{entry.split('=')[0]}"):
        run(tmp_path, "model.init=null", f"model.{entry}")


def test_a_model_name_that_is_no_blip_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"model.name 'tiny-vit' is not a BLIP"):
        run(tmp_path, "model.init=null", "model.name=tiny-vit")


def test_a_text_width_unlike_the_towers_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"blip_text.width 32.*blip_vision.width 64"):
        run(tmp_path, "model.init=null", "model.blip_text={width: 32}")


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.max_turns=3", r"data.max_turns must be 1 for BLIP.*got 3"),
        ("data.system=''", r"unknown data entries \['system'\]"),
        ("eval.vqa_size=0", r"eval.vqa_size must be a positive int, got 0"),
        ("eval.caption_size=5", r"unknown eval entries \['caption_size'\]"),
    ],
)
def test_bad_data_and_eval_entries_are_named(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, *TINY, "data.size=4", override)


def conversations(*turns):
    return [(torch.zeros(3, 32, 32), Conversation("s0", None, tuple(turns)))]


def test_a_conversation_of_several_turns_is_refused_naming_it():
    tokenizer = mmcl.create_model("tiny-blip").tokenizer
    data = VQAPairs(conversations(("what shape?", "star"), ("what colour?", "red")), tokenizer, 32)
    with pytest.raises(ValueError, match=r"sample 0 \(s0\): 2 turns; BLIP answers one question"):
        data[0]


@pytest.mark.parametrize(
    "turn, name", [(("what shape?", "star " * 40), "answer"), (("", "red"), "question")]
)
def test_a_text_that_does_not_fit_is_refused_not_cut(turn, name):
    tokenizer = mmcl.create_model("tiny-blip").tokenizer
    with pytest.raises(ValueError, match=rf"sample 0 \(s0\): the {name} .* it needs 1 to 30"):
        VQAPairs(conversations(turn), tokenizer, 32)[0]


def test_ask_refuses_system_text_and_a_blip_without_its_answer_decoder(tmp_path, capsys):
    Image.new("RGB", (32, 32), "red").save(tmp_path / "scene.png")
    for parts, folder in (
        (["text_encoder", "text_decoder"], "vqa"),
        (["text_decoder"], "captioner"),
    ):
        model = mmcl.create_model("tiny-blip", parts=parts, share_text_weights=False)
        save_safetensors(model, tmp_path / folder / "model.safetensors")
        model.tokenizer.save(tmp_path / folder)
    ask = ["ask", "--image", str(tmp_path / "scene.png"), "what colour?", "--model"]
    assert main(ask + [str(tmp_path / "vqa"), "--system", "hi"]) == 2
    assert "--system: a BLIP answers without a chat template" in capsys.readouterr().err
    assert main(ask + [str(tmp_path / "captioner")]) == 2
    assert "a BLIP without ['text_encoder']" in capsys.readouterr().err
