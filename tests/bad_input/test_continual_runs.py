"""What `mmcl continual` promises about runs, resumes, comparisons and method arguments.

Promises checked here, one a line:
- `--resume` with nothing to resume is an error naming the folder, not a silent fresh start.
- `--resume` with changed settings is refused, naming each changed setting (old -> new) and the
  way out (a new --output-dir); the finished run's report is left as it was.
- The report records the settings of the run (scenario and its arguments, model, method,
  training), the same for every task.
- The report records every argument of the method, defaults included (er: buffer_size=500).
- `compare` reuses a finished method's run only if it was made with the same settings;
  otherwise nothing runs and the error names the run's folder and each setting that differs.
- `compare` saves its table beside the runs as comparison.md and comparison.csv.
- An unknown method argument is an error that suggests the close name and lists the valid ones.
- A method argument of the wrong type is an error naming it and the type expected.
- The old `METHOD:KEY=VALUE` form is refused with the `METHOD.KEY=VALUE` form to use.
- `compare --seeds` takes a count or a list of distinct seeds; with `--seed` as well it is
  refused (--seeds sets every run's seed), before anything runs.
- `--held-out` on a stream without held-out sets is refused, naming the stream that has them.
- `--shuffle-order` on a stream without a task order to draw is refused, naming mini-mtil.
- `mmcl continual describe METHOD` shows the arguments with types and defaults, and the paper.
- The state saved after each task (state_after_task.pt) does not grow with the number of tasks
  (EWC merges its tasks' penalties; teachers are never saved), and a run resumed from it ends
  exactly as an uninterrupted one.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from mmcl.cli import main
from mmcl.continual import runner
from mmcl.continual.heads import ImageClassifier
from mmcl.continual.methods import build_method
from mmcl.continual.runner import run_continual
from mmcl.continual.scenarios import class_incremental
from mmcl.train import TrainConfig

SMALL = [
    "--scenario", "scenes-cil", "--model", "tiny-vit", "--steps", "1", "--batch-size", "4",
    "--train-size", "16", "--test-size", "8", "--quiet",
]  # fmt: skip


def continual(*arguments) -> int:
    return main(["continual", *map(str, arguments)])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished `frozen` run (no training: only the evaluations) and a finished comparison."""
    folder = tmp_path_factory.mktemp("continual")
    assert continual(*SMALL, "--method", "frozen", "--output-dir", folder / "run") == 0
    assert continual("compare", *SMALL, "--methods", "frozen", "--output-dir", folder / "cmp") == 0
    return folder


# --- resume -----------------------------------------------------------------------------------


def test_resume_with_nothing_to_resume_is_an_error_naming_the_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    assert continual(*SMALL, "--method", "frozen", "--output-dir", empty, "--resume") == 2
    error = capsys.readouterr().err
    assert f"{empty}: nothing to resume" in error and "without --resume" in error
    assert not (empty / "progress.json").exists()


def test_resume_with_changed_settings_is_refused_naming_each_change(finished, capsys):
    run = finished / "run"
    before = (run / "report.json").read_bytes()
    changed = [*SMALL, "--lr", "0.05", "--batch-size", "2"]  # was lr 1e-4 and batch size 4
    assert continual(*changed, "--method", "frozen", "--output-dir", run, "--resume") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "training.lr 0.0001 -> 0.05" in error and "training.batch_size 4 -> 2" in error
    assert "new --output-dir" in error and str(run) in error
    assert (run / "report.json").read_bytes() == before
    # The same settings resume (here: a finished run, read back as it is).
    assert continual(*SMALL, "--method", "frozen", "--output-dir", run, "--resume") == 0
    assert (run / "report.json").read_bytes() == before


def test_the_report_records_the_settings_of_the_run(finished):
    extra = json.loads((finished / "run" / "report.json").read_text())["extra"]
    assert (extra["scenario"], extra["model"], extra["method"]) == (
        "scenes-cil",
        "tiny-vit",
        "frozen",
    )
    assert extra["scenario_args"] == {"seed": 0, "train_size": 16, "test_size": 8}
    training = extra["training"]
    assert (training["steps"], training["batch_size"], training["lr"]) == (1, 4, 1e-4)
    assert (training["seed"], training["precision"]) == (0, "fp32")
    assert "output_dir" not in training and "progress" not in training  # bookkeeping only


def test_every_method_argument_is_recorded_defaults_included(tmp_path):
    method = build_method("er+ewc", **{"ewc.lambda_": 100, "fisher_samples": 4})
    run_continual(classifier(), stream(tasks=2), method, config(tmp_path), tmp_path / "run",
                  progress=False)  # fmt: skip
    recorded = json.loads((tmp_path / "run" / "report.json").read_text())["extra"]["method_args"]
    assert recorded == {
        "er": {"buffer_size": 500},  # the defaults of the constructors, as written there
        "ewc": {"lambda_": 100.0, "fisher_samples": 4, "fisher": "sample", "fisher_batch_size": None},
    }  # fmt: skip


# --- compare ----------------------------------------------------------------------------------


def test_compare_refuses_a_finished_run_made_with_other_settings(finished, capsys):
    folder = finished / "cmp"
    before = (folder / "frozen" / "report.json").read_bytes()
    command = ["compare", *SMALL, "--steps", "3", "--methods", "frozen", "--output-dir", folder]
    assert continual(*command) == 2
    error = capsys.readouterr().err
    assert f"{folder / 'frozen'} holds a frozen run made with other settings" in error
    assert "training.steps 1 -> 3" in error and "new --output-dir" in error
    assert (folder / "frozen" / "report.json").read_bytes() == before


def test_compare_saves_its_table_as_markdown_and_csv(finished):
    folder = finished / "cmp"
    table = (folder / "comparison.md").read_text()
    assert table.startswith("| Method | Transfer | Avg | Last |") and "| frozen |" in table
    rows = list(csv.DictReader((folder / "comparison.csv").open()))
    assert [row["method"] for row in rows] == ["frozen"]
    matrix = json.loads((folder / "frozen" / "report.json").read_text())["accuracy_matrix"]
    last_row = matrix[-1]
    assert float(rows[0]["last_accuracy"]) == pytest.approx(sum(last_row) / len(last_row))
    assert not list(folder.glob("*.tmp*"))  # written through temporary files, renamed


# --- method arguments -------------------------------------------------------------------------


def test_an_unknown_method_argument_lists_the_valid_ones(tmp_path, capsys):
    output = tmp_path / "x"
    assert (
        continual(*SMALL, "--method", "ewc", "--method-args", "lamda=1", "--output-dir", output)
        == 2
    )
    error = capsys.readouterr().err
    assert "takes no argument 'lamda' (did you mean lambda_?)" in error
    assert "lambda_, fisher_samples, fisher, fisher_batch_size" in error
    assert not output.exists()


def test_a_method_argument_of_the_wrong_type_is_refused(tmp_path, capsys):
    arguments = ["--method", "lwf+ewc", "--method-args", "ewc.fisher_samples=2.5"]
    assert continual(*SMALL, *arguments, "--output-dir", tmp_path / "x") == 2
    assert "ewc.fisher_samples: expected int, got 2.5" in capsys.readouterr().err


def test_a_bare_argument_that_several_parts_take_is_refused_not_guessed(tmp_path, capsys):
    arguments = ["--method", "lwf+ewc", "--method-args", "lambda_=5"]
    assert continual(*SMALL, *arguments, "--output-dir", tmp_path / "x") == 2
    assert "write lwf.lambda_ or ewc.lambda_" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", [["compare", "--methods", "ewc"], ["--method", "ewc"]])
def test_the_old_colon_syntax_is_refused_with_the_new_form(tmp_path, capsys, command):
    arguments = [*command, "--method-args", "ewc:lambda_=100", "--output-dir", tmp_path / "x"]
    assert continual(*SMALL, *arguments) == 2
    assert "write it as ewc.lambda_=100 (METHOD.KEY=VALUE)" in capsys.readouterr().err


def test_describe_shows_the_arguments_their_defaults_and_the_paper(capsys):
    assert continual("describe", "er") == 0
    out = capsys.readouterr().out
    assert "paper: Chaudhry et al. 2019" in out
    assert [line.split() for line in out.splitlines() if "buffer_size" in line] == [
        ["buffer_size", "int", "500"]
    ]
    assert continual("describe", "ewcc") == 2
    assert "Did you mean ewc" in capsys.readouterr().err


# --- disk use ---------------------------------------------------------------------------------


def test_the_state_file_does_not_grow_with_the_tasks_and_resume_stays_exact(tmp_path, monkeypatch):
    def method():  # LwF's teacher and EWC's anchors are the disk hogs this guards against
        return build_method("lwf+ewc", fisher_samples=8)

    sizes, original = [], runner._record

    def measured(saved, row, seconds, peak):  # called just after the state file is written
        sizes.append((tmp_path / "whole" / runner.STATE_FILE).stat().st_size)
        original(saved, row, seconds, peak)

    monkeypatch.setattr(runner, "_record", measured)
    whole_model = classifier()
    whole = run_continual(whole_model, stream(), method(), config(tmp_path), tmp_path / "whole",
                          progress=False)  # fmt: skip
    monkeypatch.setattr(runner, "_record", original)
    weights = sum(p.numel() * p.element_size() for p in whole_model.parameters())
    assert len(sizes) == 4 and max(sizes) - min(sizes) < 0.01 * max(sizes)
    # model + one importance + one anchor, each the size of the weights (plus file overhead)
    assert max(sizes) < 3 * weights + 64_000

    stopping = method()
    stopping.after_task = stop_after(stopping.after_task, task=2)
    with pytest.raises(KeyboardInterrupt):
        run_continual(classifier(), stream(), stopping, config(tmp_path), tmp_path / "cut",
                      progress=False)  # fmt: skip
    resumed_model = classifier()
    resumed = run_continual(resumed_model, stream(), method(), config(tmp_path), tmp_path / "cut",
                            resume=True, progress=False)  # fmt: skip
    assert resumed.matrix == whole.matrix
    for name, value in whole_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[name], value), name


# --- a tiny stream and classifier -------------------------------------------------------------


def stream(tasks: int = 4, per_class: int = 8):
    """Class-incremental 3x8x8 images, 2 classes a task; class k = a bright pixel at row k."""
    classes = 2 * tasks
    generator = torch.Generator().manual_seed(0)

    def split(count):
        labels = torch.arange(classes).repeat_interleave(count)
        images = 0.1 * torch.randn(len(labels), 3, 8, 8, generator=generator)
        images[torch.arange(len(labels)), :, labels % 8, labels // 8] += 2.0
        return TensorDataset(images, labels), labels.tolist()

    (train, train_targets), (test, test_targets) = split(per_class), split(per_class // 2)
    names = [f"class {k}" for k in range(classes)]
    return class_incremental(train, test, names, n_tasks=tasks, seed=0,
                             train_targets=train_targets, test_targets=test_targets)  # fmt: skip


def classifier() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(nn.Flatten(), 3 * 8 * 8, 8, image_size=8)


def config(tmp_path) -> TrainConfig:
    return TrainConfig(steps=2, batch_size=4, lr=0.05, optimizer="sgd", warmup_steps=0,
                       progress=False, tensorboard=False, output_dir=str(tmp_path / "unused"))  # fmt: skip


def stop_after(after_task, task: int):
    def stopping(current, model, run):
        after_task(current, model, run)
        if current.index == task:
            raise KeyboardInterrupt  # dies after the task's penalty, before its state is saved

    return stopping


# --- seeds and held-out sets ------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--seeds", "0"], "at least 1"),
        (["--seeds", "1,1"], "distinct"),
        (["--seeds", "2", "--seed", "3"], "--seeds sets the seed of every run"),
    ],
)
def test_compare_seeds_are_checked_before_anything_runs(tmp_path, capsys, arguments, message):
    out = tmp_path / "cmp"
    assert continual("compare", *SMALL, "--methods", "frozen", *arguments, "--output-dir", out) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_held_out_sets_only_for_the_captioned_stream(tmp_path, capsys):
    out = tmp_path / "run"
    assert continual(*SMALL, "--method", "frozen", "--held-out", "shape", "--output-dir", out) == 2
    assert "applies to the captioned stream scene-styles" in capsys.readouterr().err


def test_shuffle_order_only_for_mini_mtil(tmp_path, capsys):
    out = tmp_path / "run"
    assert continual(*SMALL, "--method", "frozen", "--shuffle-order", "--output-dir", out) == 2
    assert "--shuffle-order: scenario 'scenes-cil'" in capsys.readouterr().err
    assert not out.exists()
