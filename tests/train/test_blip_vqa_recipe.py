"""`mmcl train --config blip-vqa-scenes`: BLIP's VQA fine-tuning trains from the command line,
from a blip-scenes folder or from scratch, is scored on held-out scene questions as the LLaVA
recipes are, and its folder answers through `mmcl ask`."""

import json

import pytest
import torch
from PIL import Image

import mmcl
from mmcl.cli import main
from mmcl.models.blip import Blip
from mmcl.recipe_blip_vqa import build_vqa_blip

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

TINY = [
    "model.blip_vision={width: 32, layers: 1, mlp_width: 64, conv_stem: [8, 16, 16]}",
    "model.blip_text={width: 32, layers: 1, mlp_width: 64}",
]
FEW_STEPS = [
    "data.size=16",
    "eval.vqa_size=10",
    "train.steps=2",
    "train.batch_size=8",
    "train.workers=0",
    "train.warmup_steps=1",
    "train.log_every=1",
    "train.eval_every=null",
    "train.checkpoint_every=null",
    "train.tensorboard=false",
]


def train(config, folder, overrides):
    args = ["train", "--config", config, "--output-dir", str(folder), "--quiet"]
    return main(args + [a for o in overrides for a in ("--set", o)])


def test_blip_vqa_recipe_trains_from_scratch_and_answers(tmp_path, capsys):
    overrides = ["model.init=null"] + TINY + FEW_STEPS
    assert train("blip-vqa-scenes", tmp_path / "vqa", overrides) == 0
    out = capsys.readouterr().out
    for kind in ("overall", "shape", "colour", "count", "where", "yes/no"):
        assert f"vqa/{kind}" in out
    logged = [
        json.loads(line) for line in (tmp_path / "vqa" / "metrics.jsonl").read_text().splitlines()
    ]
    assert logged[0]["loss"] > 0  # one term ("vqa"): logged as the loss
    model, _ = mmcl.load(tmp_path / "vqa")
    assert isinstance(model, Blip) and model.config.parts == ("text_encoder", "text_decoder")
    assert not model.config.share_text_weights and model.tokenizer is not None
    Image.new("RGB", (32, 32), "red").save(tmp_path / "scene.png")
    ask = ["ask", "--model", str(tmp_path / "vqa"), "--image", str(tmp_path / "scene.png")]
    assert main(ask + ["what colour is the star?", "--max-new-tokens", "3"]) == 0
    answer = capsys.readouterr().out.strip()
    question = model.tokenizer(["what colour is the star?"], first_token="[ENC]").input_ids
    image = mmcl.load(tmp_path / "vqa")[1](Image.open(tmp_path / "scene.png")).unsqueeze(0)
    expected = model.tokenizer.decode(model.answer(image, question, 3).tokens[0, 1:])
    assert answer == expected.strip()


def test_blip_vqa_recipe_starts_from_a_blip_scenes_folder(tmp_path):
    blip_scenes = [
        "data.size=16",
        "eval.caption_size=4",
        "eval.caption_train_size=8",
        "train.steps=1",
        "train.batch_size=8",
        "train.workers=0",
        "train.warmup_steps=1",
        "train.checkpoint_every=null",
        "train.tensorboard=false",
    ]
    assert train("blip-scenes", tmp_path / "blip", TINY + blip_scenes) == 0
    start, _ = mmcl.load(tmp_path / "blip")
    model = build_vqa_blip({"init": str(tmp_path / "blip")}, "test")
    # The tower, the encoder, and the decoder as a copy of the weights it shared (its own
    # self-attention and LM head); no ITC or ITM parts.
    ours, theirs = model.state_dict(), start.state_dict()
    kept = ("visual.", "text_encoder.", "text_decoder.")
    assert set(ours) == {name for name in theirs if name.startswith(kept)}
    assert any(name.startswith("itm_head.") for name in theirs)
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name
    assert model.text_decoder.embeddings is not model.text_encoder.embeddings
    assert model.tokenizer.vocab_size == start.tokenizer.vocab_size
    overrides = [f"model.init={tmp_path / 'blip'}"] + FEW_STEPS + ["train.steps=1"]
    assert train("blip-vqa-scenes", tmp_path / "vqa", overrides) == 0
    trained, _ = mmcl.load(tmp_path / "vqa")
    assert trained.config.blip_vision.conv_stem == (8, 16, 16)  # the start's architecture
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, ours[k])]
    assert any(k.startswith("text_decoder.") for k in changed)
