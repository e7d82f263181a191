"""`mmcl train --config coca-scenes`: CoCa trains on the one engine, and the saved model is a
CoCa that loads and captions."""

import json

import pytest
import torch

import mmcl
from mmcl.cli import main
from mmcl.models import CoCa
from mmcl.train import TrainConfig, Trainer


def test_coca_scenes_recipe_trains_from_the_cli(tmp_path, capsys):
    overrides = [
        "data.size=8",
        "eval.size=4",
        "eval.retrieval_size=4",
        "eval.scene_views=[shape]",
        "eval.caption_size=3",
        "eval.caption_train_size=4",
        "train.steps=2",
        "train.batch_size=4",
        "train.workers=0",
        "train.warmup_steps=1",
        "train.log_every=1",
        "train.eval_every=null",
        "train.checkpoint_every=null",
        "train.tensorboard=false",
    ]
    args = ["train", "--config", "coca-scenes", "--output-dir", str(tmp_path), "--quiet"]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0
    out = capsys.readouterr().out
    assert "zeroshot/scenes-shape" in out and "retrieval/scenes/image_to_text_R@1" in out
    # Greedy captions of held-out scenes beside copying the nearest training image's.
    assert "captions/colour" in out and "nearest_neighbour/cider_d" in out
    logged = (tmp_path / "metrics.jsonl").read_text().splitlines()
    terms = {key for line in logged for key in _flat_keys(json.loads(line))}
    assert {"contrastive", "caption"} <= terms
    model, _ = mmcl.load(tmp_path / "model.safetensors")
    assert isinstance(model, CoCa)
    captions = model.generate(torch.randn(2, 3, 32, 32), max_new_tokens=3)
    assert captions.tokens.shape[0] == 2


def test_loss_coca_on_a_model_without_a_caption_decoder_is_refused():
    pairs = [(torch.randn(3, 32, 32), mmcl.tokenize(["a red circle"])[0])] * 4
    config = TrainConfig(loss="coca", steps=1, batch_size=2, progress=False, tensorboard=False)
    trainer = Trainer(mmcl.create_model("tiny-vit"), pairs, config)
    with pytest.raises(ValueError, match="loss 'coca' needs a captioning model"):
        trainer.fit()


def _flat_keys(record: dict) -> set[str]:
    keys = set()
    for key, value in record.items():
        keys |= _flat_keys(value) if isinstance(value, dict) else {key.split("/")[-1]}
    return keys
