"""`mmcl continual`: one method, compare, list, and bad input reported before training."""

import json

import pytest

from mmcl.cli import main
from mmcl.continual.experiments import parse_method_args

SMALL = [
    "--scenario",
    "scenes-cil",
    "--model",
    "tiny-vit",
    "--steps",
    "1",
    "--batch-size",
    "8",
    "--train-size",
    "32",
    "--test-size",
    "8",
    "--quiet",
]


def test_one_method_writes_its_report(tmp_path, capsys):
    assert (
        main(
            [
                "continual",
                *SMALL,
                "--method",
                "wise_ft",
                "--method-args",
                "alpha=0.25",
                "--output-dir",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["method"] == "wise_ft" and len(report["accuracy_matrix"]) == 4
    assert report["extra"]["method_args"] == {"wise_ft": {"alpha": 0.25}}
    assert "| Transfer |" in capsys.readouterr().out or (tmp_path / "run" / "report.md").exists()


def test_compare_prints_one_row_per_method_and_reuses_finished_runs(tmp_path, capsys):
    command = [
        "continual",
        "compare",
        *SMALL,
        "--methods",
        "frozen,finetune",
        "--output-dir",
        str(tmp_path),
    ]
    assert main(command) == 0
    table = capsys.readouterr().out
    rows = [
        line
        for line in table.splitlines()
        if line.startswith("| frozen") or line.startswith("| finetune")
    ]
    assert len(rows) == 2
    stamp = (tmp_path / "finetune" / "report.json").stat().st_mtime_ns
    assert main(command) == 0  # read back, not rerun
    assert (tmp_path / "finetune" / "report.json").stat().st_mtime_ns == stamp


def test_options_before_compare_are_honoured_as_after_it(tmp_path, capsys):
    # argparse would reset them to the subcommand's defaults: mini-MTIL, silently
    command = ["continual", *SMALL, "--method-args", "wise_ft.alpha=0.25", "compare"]
    command += ["--methods", "wise_ft", "--output-dir", str(tmp_path)]
    assert main(command) == 0
    report = json.loads((tmp_path / "wise_ft" / "report.json").read_text())
    assert report["extra"]["scenario"] == "scenes-cil" and report["extra"]["training"]["steps"] == 1
    assert report["extra"]["method_args"] == {"wise_ft": {"alpha": 0.25}}
    command = ["continual", "--scenario", "nope", "compare", "--methods", "frozen"]
    assert main([*command, "--output-dir", str(tmp_path / "x")]) == 2
    assert "Valid scenarios" in capsys.readouterr().err
    command = ["continual", "--method", "lwf", "compare", "--methods", "frozen"]
    assert main([*command, "--output-dir", str(tmp_path / "y")]) == 2
    assert "compare runs the methods of --methods" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_list_names_every_scenario_and_method(capsys):
    from mmcl.continual.experiments import SCENARIOS
    from mmcl.continual.methods import METHODS

    assert main(["continual", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in [*SCENARIOS, *METHODS])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--method", "finetuen"], "Did you mean finetune"),
        (["--method", "wise_ft", "--method-args", "alpha=3"], "alpha must be in"),
        (["--method", "finetune", "--method-args", "gamma"], "is not KEY=VALUE"),
        (["--scenario", "nope", "--method", "finetune"], "Valid scenarios"),
        ([], "give --method"),
    ],
)
def test_bad_input_is_a_clear_error_before_training(tmp_path, capsys, arguments, message):
    small = [a for a in SMALL if a != "scenes-cil" and a != "--scenario"]
    if "--scenario" not in arguments:
        small = SMALL
    assert main(["continual", *small, *arguments, "--output-dir", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x" / "progress.json").exists()


def test_method_arguments_are_read_as_yaml_values():
    assert parse_method_args("lambda_=100, online=true,name=abc,frac=1e-3") == {
        "lambda_": 100,
        "online": True,
        "name": "abc",
        "frac": 0.001,
    }
    assert parse_method_args("") == {}


def test_the_classic_protocol_runs_a_plain_classifier_from_the_command_line(tmp_path):
    from mmcl.continual.builtin import MissingDataError, shared_data_root

    if not (shared_data_root() / "cifar10").is_dir():
        pytest.skip(f"shared data not available, skipping: {MissingDataError.__name__}")
    command = [
        "continual",
        "--scenario",
        "seq-cifar10",
        "--model",
        "cifar-resnet18-reduced",
        "--method",
        "derpp",
        "--method-args",
        "buffer_size=20,minibatch_size=4",
        "--optimizer",
        "sgd",
        "--momentum",
        "0.9",
        "--weight-decay",
        "0",
        "--lr",
        "0.03",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--train-size",
        "40",
        "--test-size",
        "20",
        "--quiet",
        "--output-dir",
        str(tmp_path / "run"),
    ]
    assert main(command) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["method"] == "derpp" and len(report["accuracy_matrix"]) == 5
    training = report["extra"]["training"]
    assert (training["optimizer"], training["momentum"], training["weight_decay"]) == (
        "sgd",
        0.9,
        0,
    )
    # A text-tower method on the classifier is refused with the reason, before training.
    command[command.index("derpp")] = "zscl"
    command[command.index("buffer_size=20,minibatch_size=4")] = ""
    command[-1] = str(tmp_path / "zscl")
    assert main(command) == 2
    assert not (tmp_path / "zscl" / "progress.json").exists()
