"""Frozen parts out of checkpoints (`checkpoint_frozen=False`): checkpoints and the final
model hold the trainable weights and a reference to the frozen ones, and resume exactly."""

from __future__ import annotations

import hashlib

import torch
from safetensors.torch import load_file
from test_engine import RandomPairs, losses, settings, tiny_model

from mmcl.train import Trainer
from training_runs import Stop, StopAfter


def frozen_run(tmp_path, **overrides):
    values = dict(lock_image=True, checkpoint_frozen=False, batch_size=4)
    return settings(tmp_path, **{**values, **overrides})


def test_checkpoints_hold_the_trainable_weights_and_a_reference_to_the_frozen_ones(tmp_path):
    model = tiny_model()
    tower = {f"visual.{k}": v.clone() for k, v in model.visual.state_dict().items()}
    Trainer(model, RandomPairs(size=8), frozen_run(tmp_path, steps=2)).fit()
    run = tmp_path / "run"
    checkpoint = torch.load(run / "checkpoints" / "step_00000002.pt", weights_only=True)
    assert not [k for k in checkpoint["model"] if k.startswith("visual.")]
    assert set(checkpoint["model"]) | set(tower) == set(model.state_dict())
    frozen = load_file(run / "frozen.safetensors")
    assert set(frozen) == set(tower) and all(torch.equal(frozen[k], tower[k]) for k in tower)
    reference = checkpoint["frozen"]
    expected = hashlib.sha256((run / "frozen.safetensors").read_bytes()).hexdigest()
    assert reference["path"] == str((run / "frozen.safetensors").resolve())
    assert reference["sha256"] == expected
    final = load_file(run / "model.safetensors")
    assert set(final) == set(checkpoint["model"])
    assert all(torch.equal(final[k], checkpoint["model"][k]) for k in final)


def test_resume_restores_the_frozen_weights_from_their_file_exactly(tmp_path):
    data = RandomPairs(size=16)
    Trainer(tiny_model(), data, frozen_run(tmp_path, steps=3, checkpoint_every=1)).fit()
    uninterrupted = losses(tmp_path)
    config = frozen_run(tmp_path, steps=3, checkpoint_every=1, output_dir=str(tmp_path / "cut"))

    try:
        Trainer(tiny_model(), data, config, plugins=[StopAfter(2)]).fit()
    except Stop:
        pass
    config.resume = "latest"
    # Another seed: the frozen tower differs unless the resume loads it from frozen.safetensors.
    Trainer(tiny_model(seed=123), data, config, plugins=[StopAfter()]).fit()
    assert losses(tmp_path, "cut") == uninterrupted
