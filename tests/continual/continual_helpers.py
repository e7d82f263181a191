"""Small shared pieces of the continual-learning tests: a tiny model, stream and settings."""

import torch

import mmcl
from mmcl.continual.experiments import build_scenario
from mmcl.train import TrainConfig


def small_scenario(train_size: int = 32, test_size: int = 16):
    """Class-incremental built-in scenes, 4 tasks x 2 shapes, a few items each."""
    return build_scenario("scenes-cil", train_size=train_size, test_size=test_size)


def small_config(tmp_path, lr: float = 1e-4, **overrides) -> TrainConfig:
    """Two steps of batch 8 per task, quiet, no warm-up."""
    values = dict(
        steps=2,
        batch_size=8,
        lr=lr,
        warmup_steps=0,
        progress=False,
        tensorboard=False,
        output_dir=str(tmp_path / "unused"),
    )
    values.update(overrides)
    return TrainConfig(**values)


def tiny_clip() -> torch.nn.Module:
    """A randomly initialised tiny ViT CLIP, the same weights on every call."""
    torch.manual_seed(0)
    return mmcl.create_model("tiny-vit")
