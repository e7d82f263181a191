"""Bad input when a run keeps its frozen weights out of its checkpoints
(`train.checkpoint_frozen: false`): what mmcl promises.

- Resuming when the frozen-weights file a checkpoint refers to is missing is an error naming
  that file and the checkpoint, not a model with random frozen parts.
- Resuming when that file has changed since (another SHA-256) is an error naming it.
- Loading such a run's model.safetensors (trainable weights only) is an error naming the
  frozen file and saying what to load instead.
"""

from __future__ import annotations

import pytest
import torch

import mmcl
from mmcl.train import ResumeError, TrainConfig, Trainer


def pairs():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 32, 32, generator=generator)
    tokens = mmcl.tokenize([f"item {i}" for i in range(8)])
    return list(zip(images, tokens, strict=True))


def config(tmp_path, **overrides):
    values = dict(
        steps=1,
        batch_size=4,
        lock_image=True,
        checkpoint_frozen=False,
        progress=False,
        tensorboard=False,
        output_dir=str(tmp_path / "run"),
    )
    return TrainConfig(**{**values, **overrides})


def trained_run(tmp_path):
    torch.manual_seed(0)
    Trainer(mmcl.create_model("tiny-vit"), pairs(), config(tmp_path)).fit()
    return tmp_path / "run" / "frozen.safetensors"


def test_resume_names_a_missing_frozen_weights_file(tmp_path):
    frozen = trained_run(tmp_path)
    frozen.unlink()
    with pytest.raises(FileNotFoundError, match=rf"step_00000001.pt.*{frozen}.*missing"):
        Trainer(mmcl.create_model("tiny-vit"), pairs(), config(tmp_path, resume="latest")).fit()


def test_resume_names_a_changed_frozen_weights_file(tmp_path):
    frozen = trained_run(tmp_path)
    frozen.write_bytes(frozen.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(ResumeError, match=rf"{frozen}.*has changed"):
        Trainer(mmcl.create_model("tiny-vit"), pairs(), config(tmp_path, resume="latest")).fit()


def test_loading_a_runs_trainable_only_model_file_names_the_frozen_file_and_the_way_out(tmp_path):
    frozen = trained_run(tmp_path)
    with pytest.raises(mmcl.io.checkpoints.CheckpointError, match=rf"trainable.*{frozen}.*whole"):
        mmcl.load(tmp_path / "run" / "model.safetensors")
