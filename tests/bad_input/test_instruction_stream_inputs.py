"""Promises about instruction streams (continual learning of LLaVA-style bridges): what is
refused before anything trains, and how the error says so."""

import json

import pytest
from PIL import Image

import mmcl
from mmcl.continual.instruction_streams import (
    instruction_sequence,
    llava_json_stream,
    vqa_functions,
    vqa_scenes,
)
from mmcl.continual.methods import build_method
from mmcl.continual.runner import run_continual
from mmcl.train import TrainConfig
from tiny_bridge import tiny_bridge


@pytest.fixture(scope="module")
def bridge():
    return tiny_bridge()


@pytest.fixture(scope="module")
def stream():
    return vqa_functions(["shape"], train_size=4, test_size=2, general_size=0)


def config(tmp_path):
    return TrainConfig(
        steps=1, batch_size=2, progress=False, tensorboard=False, output_dir=tmp_path
    )


def test_methods_without_instructions_support_are_refused_by_name(bridge, stream, tmp_path):
    model, tokenizer = bridge
    with pytest.raises(ValueError, match=r"\['icarl'\] do not train on instructions.*finetune"):
        run_continual(
            model, stream, build_method("icarl"), config(tmp_path), tmp_path, tokenizer=tokenizer
        )
    assert not (tmp_path / "progress.json").exists()


def test_a_clip_model_is_refused_on_an_instruction_stream(stream, tmp_path):
    clip = mmcl.create_model("tiny-vit")
    with pytest.raises(ValueError, match="bridge into a language model.*LLaVA folder or recipe"):
        run_continual(
            clip, stream, build_method("finetune"), config(tmp_path), tmp_path, tokenizer=object()
        )


def test_an_instruction_stream_needs_the_bridges_tokenizer(bridge, stream, tmp_path):
    model, _ = bridge
    with pytest.raises(ValueError, match="needs the bridge's tokenizer"):
        run_continual(model, stream, build_method("finetune"), config(tmp_path), tmp_path)


def test_unknown_functions_and_styles_name_the_valid_ones():
    with pytest.raises(ValueError, match="functions must be among .*'compare'"):
        vqa_functions(["shape", "size"])
    with pytest.raises(ValueError, match="unknown scene style 'tilted'.*background-black"):
        vqa_scenes(["tilted"])


def test_the_instruction_sequence_without_cifar10_names_the_data_root_and_the_way_out(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar10-objects.*--data-root.*--tasks"):
        instruction_sequence(train_size=2, test_size=2, general_size=0, data_root=tmp_path)


def test_a_user_task_file_too_small_to_split_is_named(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    sample = {
        "image": "a.png",
        "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
    }
    (tmp_path / "tiny.json").write_text(json.dumps([sample]))
    with pytest.raises(ValueError, match=r"tiny.json: 1 samples cannot be split"):
        llava_json_stream([tmp_path / "tiny.json"], tmp_path)


def test_the_cli_refuses_a_clip_model_for_an_instruction_stream(tmp_path, capsys):
    from mmcl.cli import main

    code = main(
        [
            "continual",
            "--scenario",
            "vqa-functions",
            "--model",
            "tiny-vit",
            "--method",
            "finetune",
            "--output-dir",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert code != 0
    assert (
        "mmcl continual: error: --model tiny-vit: an instruction stream needs a bridge"
        in capsys.readouterr().err
    )
