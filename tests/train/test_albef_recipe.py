"""`mmcl train --config albef-scenes`: ALBEF trains on the one engine with its three losses,
and the run folder holds a model that loads as an ALBEF and the vocabulary it reads."""

import json

import torch

import mmcl
from mmcl.cli import main
from mmcl.data.scene_wordpiece import scene_wordpiece
from mmcl.io.wordpiece import load_wordpiece
from mmcl.models.albef import Albef


def test_albef_scenes_recipe_trains_from_the_cli(tmp_path, capsys):
    overrides = [
        "data.size=8",
        "eval.size=4",
        "eval.retrieval_size=4",
        "eval.scene_views=[colour]",
        "train.steps=2",
        "train.batch_size=4",
        "train.albef_queue_size=8",
        "train.workers=0",
        "train.warmup_steps=1",
        "train.log_every=1",
        "train.eval_every=null",
        "train.checkpoint_every=null",
        "train.tensorboard=false",
    ]
    args = ["train", "--config", "albef-scenes", "--output-dir", str(tmp_path), "--quiet"]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0
    out = capsys.readouterr().out
    assert "zeroshot/scenes-colour" in out and "retrieval/scenes/image_to_text_R@1" in out
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in logged if "itc" in json.dumps(r)]
    assert train_records and all(
        term in json.dumps(train_records[0]) for term in ('"itm"', '"mlm"')
    )
    model, _ = mmcl.load(tmp_path / "model.safetensors")
    assert isinstance(model, Albef)
    saved = load_wordpiece(tmp_path)
    caption = ["three small red stars on the left"]
    assert torch.equal(saved(caption).input_ids, scene_wordpiece()(caption).input_ids)
    assert model.encode_text(saved(caption).input_ids).shape == (1, model.config.embed_dim)
