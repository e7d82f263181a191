"""`benchmarks/continual_generative.py`: bad arguments fail before anything trains, with one
line naming the argument."""

from __future__ import annotations

import pytest

from benchmark_scripts import import_benchmark


@pytest.fixture(scope="module")
def benchmark():
    continual_generative = import_benchmark("continual_generative")
    return continual_generative


def test_missing_cifar10_and_mnist_are_named_before_the_bridge_is_pretrained(
    benchmark, tmp_path, monkeypatch
):
    monkeypatch.setenv("MMCL_CACHE", str(tmp_path / "cache"))
    arguments = ["--quick", "--streams", "instructions", "--tasks", "scene-vqa,mnist-digits"]
    with pytest.raises(FileNotFoundError, match="mnist-digits.*--data-root"):
        benchmark.main([*arguments, "--data-root", str(tmp_path / "nowhere")])
    assert not (tmp_path / "cache").exists()  # nothing was trained or cached


def test_a_method_that_does_not_train_on_instructions_is_refused_by_name(benchmark, capsys):
    with pytest.raises(SystemExit) as exit_:
        benchmark.main(["--quick", "--methods", "finetune,coop"])
    assert exit_.value.code == 2
    assert "--methods: ['coop'] do not train on instructions" in capsys.readouterr().err


def test_fresh_deletes_only_the_streams_runs_it_wrote_and_keeps_other_files(benchmark, tmp_path):
    # --fresh once removed the whole --output folder: a user's `--output .` would be lost.
    output = tmp_path / "out"
    (output / "vqa-functions").mkdir(parents=True)
    notes = output / "vqa-functions" / "my-notes.txt"
    notes.write_text("keep me")
    beside = output / "results.csv"
    beside.write_text("keep me too")
    arguments = ["--quick", "--streams", "vqa-functions", "--output", str(output), "--fresh"]
    with pytest.raises(SystemExit, match="holds no comparison this script wrote"):
        benchmark.main(arguments)
    assert notes.read_text() == "keep me" and beside.read_text() == "keep me too"


def test_a_bridge_that_is_not_a_llava_folder_is_refused_by_name(benchmark, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        benchmark.main(["--quick", "--bridge", str(tmp_path)])
    assert exit_.value.code == 2
    assert f"--bridge: {tmp_path} is not a LLaVA folder" in capsys.readouterr().err


def test_a_starting_bridge_that_answers_nothing_right_stops_the_run_before_any_method(
    benchmark, tmp_path, monkeypatch
):
    # Last session's 13-minute run trained every method from a bridge that scored 0 on the
    # general sets: a table of zeros. A bridge of 1 + 1 pre-training steps knows nothing.
    monkeypatch.setenv("MMCL_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "runs"
    arguments = ["--streams", "vqa-functions", "--functions", "colour", "--methods", "finetune"]
    arguments += ["--pretrain-steps", "1,1", "--pretrain-batch", "2", "--general-size", "2"]
    with pytest.raises(ValueError, match="scores 0 on the general sets .*--pretrain-steps"):
        benchmark.main([*arguments, "--output", str(output)])
    assert not output.exists()  # no method ran
