"""Promises of `mmcl ask` about input that does not fit: one line naming the argument or file
and the way out."""

from __future__ import annotations

import io
import json

import mmcl
from mmcl.cli import main as cli_main
from mmcl.io.checkpoints import save_safetensors
from tiny_llava import image_file, llava_folder


def run(capsys, *argv) -> str:
    """The command's one-line error (it must fail with status 2)."""
    code = cli_main(["ask", *map(str, argv)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    return err[-1]


def test_ask_with_a_folder_without_tokenizer_says_how_to_add_one(tmp_path, capsys):
    llava_folder(tmp_path / "hf", tokenizer=False)
    image = image_file(tmp_path / "x.png")
    error = run(capsys, "--model", tmp_path / "hf", "--image", image, "how many?")
    assert error.startswith(f"mmcl ask: error: --model {tmp_path / 'hf'}: no tokenizer")
    assert "tokenizer.save_pretrained(FOLDER)" in error


def test_ask_with_a_clip_model_says_it_needs_a_llava_folder(tmp_path, capsys):
    save_safetensors(mmcl.create_model("tiny-vit"), tmp_path / "clip.safetensors")
    image = image_file(tmp_path / "x.png")
    error = run(capsys, "--model", tmp_path / "clip.safetensors", "--image", image, "how many?")
    assert "a CLIP model, not LLaVA" in error and "LLaVA folders" in error


def test_ask_with_an_unreadable_image_names_it_before_loading_the_model(tmp_path, capsys):
    (tmp_path / "x.png").write_text("not an image")
    error = run(capsys, "--model", tmp_path / "missing", "--image", tmp_path / "x.png", "q?")
    assert error.startswith(f"mmcl ask: error: {tmp_path / 'x.png'}: cannot read image")


def test_ask_refuses_a_question_holding_the_image_placeholder(tmp_path, capsys, monkeypatch):
    llava_folder(tmp_path / "hf")
    image = image_file(tmp_path / "x.png")
    monkeypatch.setattr("sys.stdin", io.StringIO("<image> how many?\n"))
    error = run(capsys, "--model", tmp_path / "hf", "--image", image)
    assert "holds '<image>'" in error and "leave it out" in error


def test_ask_with_a_system_text_the_tokenizer_cannot_spell_points_to_system(tmp_path, capsys):
    llava_folder(tmp_path / "hf")
    image = image_file(tmp_path / "x.png")
    error = run(capsys, "--model", tmp_path / "hf", "--image", image, "--system", "Zebras", "q")
    assert "does not know the template's system text 'Zebras'" in error and "--system" in error


def test_ask_with_a_chat_template_of_another_layout_says_to_give_system(tmp_path, capsys):
    llava_folder(tmp_path / "hf")
    settings = tmp_path / "hf" / "tokenizer_config.json"
    config = json.loads(settings.read_text())
    config["chat_template"] = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    )
    settings.write_text(json.dumps(config))
    image = image_file(tmp_path / "x.png")
    error = run(capsys, "--model", tmp_path / "hf", "--image", image, "q")
    assert "chat template is not LLaVA-1.5's layout" in error
    assert "give the system text the model was trained with as --system" in error


def test_ask_refuses_beams_below_one_and_beams_with_top_p(tmp_path, capsys):
    image = image_file(tmp_path / "x.png")
    error = run(capsys, "--model", tmp_path, "--image", image, "--beams", "0", "q")
    assert error == "mmcl ask: error: --beams must be at least 1, got 0"
    error = run(
        capsys, "--model", tmp_path, "--image", image, "--beams", "2", "--top-p", "0.9", "q"
    )
    assert "--beams and --top-p do not combine" in error
