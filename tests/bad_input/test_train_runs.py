"""Bad input to `mmcl train` (and the training engine): what mmcl promises.

- A fresh run into a folder that holds another run (its checkpoints/step_NNNNNNNN.pt, or a
  trained model.safetensors) is refused in one line naming the folder and the ways out
  (`--resume latest`, a new `--output-dir`); nothing in the folder changes.
- A folder holding only the log of a run stopped before its first checkpoint (which cannot be
  resumed) may be reused by a fresh run.
- Pruning old checkpoints (keep_checkpoints) deletes only the run's own step_NNNNNNNN.pt files:
  a user's `step_best.pt`, `step_1.pt` or notes in checkpoints/ are kept.
- `--resume latest` with no checkpoint to resume is a one-line error, not a fresh start, and
  writes nothing.
- A continual run killed inside a task before the task's first checkpoint resumes that task
  from its start, and ends as the uninterrupted run does.
- A wrong type for a training setting (`--set train.lr=abc`, or in a YAML recipe) fails when the
  recipe is read, in one line naming the key, the value and the type it needs.
- An unknown training setting names the nearest valid ones (or lists them all).
- `train.loss: albef` with a model that is not an ALBEF is refused in one line naming the model
  kind and a model that fits, before any step.
- A recipe whose model reads WordPiece ids (tiny-albef) with CLIP's tokenizer, or an unknown
  `data.tokenizer`, is one line naming the setting and what to write there.
- Training progress written to a log (stderr not a terminal) is whole lines, without
  carriage returns.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from mmcl.cli import main
from mmcl.continual.heads import ImageClassifier
from mmcl.continual.methods import build_method
from mmcl.continual.runner import run_continual
from mmcl.continual.scenarios import class_incremental
from mmcl.train import TrainConfig, Trainer

RECIPE = (
    "model: {name: tiny-vit}\n"
    "data: {kind: scenes, size: 32}\n"
    "train:\n"
    "  batch_size: 4\n  progress: false\n  tensorboard: false\n  log_every: 1\n"
    "  checkpoint_every: 4\n  keep_checkpoints: 2\n  warmup_steps: 0\n"
)


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE)
    return path


def run(args, capsys) -> tuple[int, str]:
    """Runs `mmcl ARGS`; returns its exit status and what it wrote to stderr."""
    status = main([str(arg) for arg in args])
    return status, capsys.readouterr().err


def contents(folder) -> dict[str, str]:
    """Every file under `folder` by relative path, with a digest of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_fresh_run_into_another_runs_folder_is_refused_and_the_folder_kept(
    recipe, tmp_path, capsys
):
    folder = tmp_path / "R"
    assert run(["train", "--config", recipe, "--steps", 12, "--output-dir", folder], capsys)[0] == 0
    first_run = contents(folder)
    assert sorted(p for p in first_run if p.startswith("checkpoints/")) == [
        "checkpoints/step_00000008.pt",
        "checkpoints/step_00000012.pt",
    ]
    status, err = run(
        ["train", "--config", recipe, "--steps", 6, "--output-dir", folder]
        + ["--set", "train.lr=0.001"],
        capsys,
    )
    assert status == 2
    assert len(err.strip().splitlines()) == 1
    assert str(folder) in err and "--resume latest" in err and "--output-dir" in err
    assert contents(folder) == first_run  # checkpoints, model and log untouched


def test_a_folder_holding_a_trained_model_is_refused(recipe, tmp_path, capsys):
    folder = tmp_path / "R"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights of an earlier run")
    status, err = run(["train", "--config", recipe, "--steps", 1, "--output-dir", folder], capsys)
    assert status == 2 and str(folder) in err and "model.safetensors" in err
    assert (folder / "model.safetensors").read_bytes() == b"weights of an earlier run"
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"]


def test_a_folder_with_only_a_stopped_runs_log_may_be_reused(recipe, tmp_path, capsys):
    folder = tmp_path / "R"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text('{"step": 1, "kind": "train", "loss": 9.0}\n')
    status, _ = run(["train", "--config", recipe, "--steps", 2, "--output-dir", folder], capsys)
    assert status == 0
    steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").open()]
    assert steps == [1, 2]  # the new run's log, from its own step 1


def test_pruning_deletes_only_the_runs_own_checkpoints(recipe, tmp_path, capsys):
    folder = tmp_path / "R"
    mine = ["step_best.pt", "step_1.pt", "step_00000004.pt.bak", "notes.txt"]
    (folder / "checkpoints").mkdir(parents=True)
    for name in mine:
        (folder / "checkpoints" / name).write_text(f"a user's {name}")
    assert run(["train", "--config", recipe, "--steps", 12, "--output-dir", folder], capsys)[0] == 0
    names = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert names == sorted([*mine, "step_00000008.pt", "step_00000012.pt"])
    for name in mine:
        assert (folder / "checkpoints" / name).read_text() == f"a user's {name}"


def test_resume_latest_with_nothing_to_resume_is_an_error(recipe, tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    status, err = run(
        ["train", "--config", recipe, "--steps", 2, "--output-dir", folder, "--resume", "latest"],
        capsys,
    )
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "latest" in err and str(folder / "checkpoints") in err and "no checkpoint" in err
    assert list(folder.iterdir()) == []


def _stream():
    """Two class-incremental tasks of 3x8x8 images whose class is a bright pixel's place."""
    generator = torch.Generator().manual_seed(0)

    def split(count):
        labels = torch.arange(4).repeat_interleave(count)
        images = 0.1 * torch.randn(len(labels), 3, 8, 8, generator=generator)
        images[torch.arange(len(labels)), 0, labels, labels] += 3.0
        return TensorDataset(images, labels), labels.tolist()

    (train, train_targets), (test, test_targets) = split(16), split(8)
    names = [f"class {k}" for k in range(4)]
    return class_incremental(
        train, test, names, n_tasks=2, seed=0, train_targets=train_targets,
        test_targets=test_targets, name="bright-pixel",
    )  # fmt: skip


def test_a_continual_task_killed_before_its_first_checkpoint_resumes_from_its_start(tmp_path):
    def continual(output, method, resume=False):
        torch.manual_seed(0)
        model = ImageClassifier(nn.Flatten(), 3 * 8 * 8, 4, image_size=8)
        config = TrainConfig(
            steps=3, batch_size=8, lr=0.05, optimizer="sgd", warmup_steps=0, progress=False,
            tensorboard=False, output_dir=str(output),
        )  # fmt: skip
        return run_continual(model, _stream(), method, config, output, resume, progress=False)

    whole = continual(tmp_path / "whole", build_method("finetune"))
    dying, calls = build_method("finetune"), []

    def die_in_the_second_task(model, batch, outputs):
        calls.append(1)
        if len(calls) == 4:  # task 1's first step: 3 steps a task, one batch each
            raise KeyboardInterrupt
        return {}

    dying.extra_losses = die_in_the_second_task
    with pytest.raises(KeyboardInterrupt):
        continual(tmp_path / "cut", dying)
    assert not list((tmp_path / "cut").glob("task_01_*/checkpoints/*"))
    resumed = continual(tmp_path / "cut", build_method("finetune"), resume=True)
    assert resumed.matrix == whole.matrix


@pytest.mark.parametrize(
    "setting, message",
    [
        ("train.lr=abc", "lr='abc' is not a number"),
        ("train.steps=1.5", "steps=1.5 is not an integer or null"),
        ("train.tensorboard=maybe", "tensorboard='maybe' is not true or false"),
        ("train.precision=fp64", "precision='fp64' is not one of 'fp32', 'bf16', 'fp16'"),
        ("train.lr_decay_at=0.5", "lr_decay_at=0.5 is not a list of numbers"),
    ],
)
def test_a_wrong_type_in_set_is_one_line_naming_key_value_and_type(
    recipe, tmp_path, capsys, setting, message
):
    folder = tmp_path / "R"
    status, err = run(
        ["train", "--config", recipe, "--output-dir", folder, "--set", setting], capsys
    )
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("mmcl train: error: ") and message in err
    assert not folder.exists()  # refused when the recipe was read, before any work


def test_a_wrong_type_in_a_yaml_recipe_names_the_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.replace("batch_size: 4", "batch_size: four"))
    status, err = run(["train", "--config", bad, "--output-dir", tmp_path / "R"], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert str(bad) in err and "batch_size='four' is not an integer" in err


@pytest.mark.parametrize(
    "setting, hint",
    [
        ("train.warmup=5", "did you mean ['warmup_steps']"),
        ("train.xyz=5", "valid settings: ['epochs', 'steps', 'batch_size'"),
    ],
)
def test_an_unknown_setting_names_the_nearest_valid_ones(recipe, tmp_path, capsys, setting, hint):
    status, err = run(["train", "--config", recipe, "--set", setting], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "unknown setting(s)" in err and hint in err


def test_training_progress_in_a_log_is_whole_lines(recipe, tmp_path, capsys):
    folder = tmp_path / "R"
    args = ["train", "--config", recipe, "--steps", 3, "--output-dir", folder]
    status, err = run([*args, "--set", "train.progress=true"], capsys)  # stderr: not a terminal
    assert status == 0
    assert "\r" not in err
    assert err.splitlines()[-1].startswith("training: 100% 3/3")


def test_loss_albef_on_a_model_that_is_not_albef_is_refused(tmp_path):
    import mmcl

    pairs = [(torch.randn(3, 32, 32), mmcl.tokenize(["a red circle"])[0])] * 4
    config = TrainConfig(
        loss="albef",
        steps=1,
        batch_size=2,
        progress=False,
        tensorboard=False,
        output_dir=str(tmp_path),
    )
    trainer = Trainer(mmcl.create_model("tiny-vit"), pairs, config)
    with pytest.raises(ValueError, match="loss 'albef' needs an ALBEF model .*tiny-albef.*CLIP"):
        trainer.fit()


def test_an_albef_recipe_without_its_wordpiece_tokenizer_names_the_setting(tmp_path, capsys):
    overrides = ["data.tokenizer=clip", "train.steps=1", "train.batch_size=2", "data.size=4"]
    args = ["train", "--config", "albef-scenes", "--output-dir", str(tmp_path), "--quiet"]
    assert main(args + [a for o in overrides for a in ("--set", o)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "mmcl train: error: recipe 'albef-scenes': tiny-albef reads BERT WordPiece ids, not "
        "CLIP's: set data.tokenizer: scenes-wordpiece"
    ]


def test_an_unknown_data_tokenizer_lists_the_known_ones(tmp_path, capsys):
    args = ["train", "--config", "demo", "--output-dir", str(tmp_path), "--quiet"]
    assert main(args + ["--set", "data.tokenizer=bert"]) != 0
    err = capsys.readouterr().err
    assert "data.tokenizer must be one of ('clip', 'scenes-wordpiece'), got 'bert'" in err
