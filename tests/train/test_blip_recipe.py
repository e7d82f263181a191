"""`mmcl train --config blip-scenes`: BLIP trains on the one engine from the command line, is
evaluated as a captioner beside the nearest-neighbour baseline, and its folder loads with its
vocabulary."""

import json

import pytest
import torch

import mmcl
from mmcl.cli import main
from mmcl.models.blip import Blip

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def test_blip_scenes_recipe_trains_from_the_cli(tmp_path, capsys):
    overrides = [
        "data.size=16",
        "eval.caption_size=4",
        "eval.caption_train_size=8",
        "train.steps=2",
        "train.batch_size=8",
        "train.workers=0",
        "train.warmup_steps=1",
        "train.log_every=1",
        "train.checkpoint_every=null",
        "train.tensorboard=false",
        "model.blip_vision={width: 32, layers: 1, mlp_width: 64, conv_stem: [8, 16, 16]}",
        "model.blip_text={width: 32, layers: 1, mlp_width: 64}",
    ]
    args = ["train", "--config", "blip-scenes", "--output-dir", str(tmp_path), "--quiet"]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0
    out = capsys.readouterr().out
    for name in ("captions/colour", "captions/cider_d", "nearest_neighbour/bleu4"):
        assert name in out
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"itc", "itm", "lm"} <= set(logged[0])
    model, _ = mmcl.load(tmp_path)
    assert isinstance(model, Blip) and model.config.blip_vision.width == 32
    assert model.config.blip_vision.conv_stem == (8, 16, 16)
    assert (tmp_path / "vocab.txt").is_file() and model.tokenizer.vocab_size == 164
    captions = model.generate(torch.randn(2, 3, 32, 32), max_new_tokens=3)
    assert captions.tokens.shape[0] == 2
