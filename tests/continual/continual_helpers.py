"""Small shared pieces of the continual-learning tests: a tiny model, stream and settings,
and what the process tests (resume, torchrun) read back from a run."""

import json
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

import mmcl
from mmcl.continual.experiments import build_scenario
from mmcl.continual.scenarios import class_incremental
from mmcl.train import TrainConfig


def small_scenario(train_size: int = 32, test_size: int = 16):
    """Class-incremental built-in scenes, 4 tasks x 2 shapes, a few items each."""
    return build_scenario("scenes-cil", train_size=train_size, test_size=test_size)


def synthetic_class_stream(
    draw, name: str, classes: int = 4, per_class: int = 24, tasks: int = 2, seed: int = 0
):
    """Class-incremental stream of generated images: ``draw(labels, generator)`` makes the
    images of the given labels. The test split holds half as many images per class."""
    generator = torch.Generator().manual_seed(seed)

    def split(count):
        labels = torch.arange(classes).repeat_interleave(count)
        return TensorDataset(draw(labels, generator), labels), labels.tolist()

    (train, train_targets), (test, test_targets) = split(per_class), split(per_class // 2)
    return class_incremental(
        train,
        test,
        [f"class {k}" for k in range(classes)],
        n_tasks=tasks,
        seed=seed,
        train_targets=train_targets,
        test_targets=test_targets,
        name=name,
    )


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


def losses(output: Path) -> dict[str, list[float]]:
    """The training loss of every logged step, by task folder."""
    curves = {}
    for folder in sorted(output.glob("task_*")):
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        curves[folder.name] = [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]
    return curves


def flatten(state, prefix=""):
    """`(dotted key, leaf)` of every leaf of nested dicts, lists and tuples."""
    if isinstance(state, dict):
        for key, value in state.items():
            yield from flatten(value, f"{prefix}{key}.")
    elif isinstance(state, list | tuple):
        for index, value in enumerate(state):
            yield from flatten(value, f"{prefix}{index}.")
    else:
        yield prefix, state
