"""The continual runner: the accuracy matrix, baselines, composition, resume and bad input."""

import json

import pytest
import torch
from continual_helpers import small_config, small_scenario, tiny_clip

from mmcl.continual.evaluation import task_accuracy
from mmcl.continual.experiments import build_scenario
from mmcl.continual.methods import available_methods, build_method
from mmcl.continual.runner import ContinualRun, run_continual


def scenario():
    return small_scenario()


def config(tmp_path, **overrides):
    return small_config(tmp_path, lr=0.0001, **overrides)


def model():
    return tiny_clip()


def test_matrix_has_every_task_after_every_task(tmp_path):
    result = run_continual(
        model(),
        scenario(),
        build_method("finetune"),
        config(tmp_path),
        tmp_path / "run",
        progress=False,
    )
    assert len(result.matrix) == 4 and all(len(row) == 4 for row in result.matrix)
    assert all(0.0 <= a <= 1.0 for row in result.matrix for a in row)
    assert len(result.initial) == 4 and len(result.seconds_per_task) == 4
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert progress["completed"] == 4 and progress["matrix"] == result.matrix
    # Finished tasks keep their final model, not their mid-task checkpoints.
    for folder in (tmp_path / "run").glob("task_*"):
        assert (folder / "model.safetensors").is_file() and not (folder / "checkpoints").exists()


def test_frozen_model_rows_equal_its_initial_accuracy(tmp_path):
    result = run_continual(
        model(),
        scenario(),
        build_method("frozen"),
        config(tmp_path),
        tmp_path / "run",
        progress=False,
    )
    # Class-incremental evaluation widens the label space as tasks arrive, so compare the
    # last row with a direct evaluation of the untouched model over all classes.
    fresh = model()
    run = ContinualRun(scenario(), build_method("frozen"), config(tmp_path), tmp_path, {})
    direct = [task_accuracy(fresh, run.method, run.scenario, j, 3, run) for j in range(4)]
    assert result.matrix[-1] == pytest.approx(direct)


def test_wise_ft_alpha_zero_returns_to_the_initial_weights(tmp_path):
    start = model()
    initial = {k: v.clone() for k, v in start.state_dict().items()}
    run_continual(
        start,
        scenario(),
        build_method("wise_ft", alpha=0.0),
        config(tmp_path),
        tmp_path / "run",
        progress=False,
    )
    for key, value in start.state_dict().items():
        assert torch.allclose(value, initial[key]), key


def test_joint_trains_on_all_tasks_so_far(tmp_path):
    seen = []

    class Spy:
        pass

    method = build_method("joint")
    original = method.train_data

    def recording(task, run):
        data = original(task, run)
        seen.append(len(data))
        return data

    method.train_data = recording
    run_continual(model(), scenario(), method, config(tmp_path), tmp_path / "run", progress=False)
    assert seen == [8, 16, 24, 32]


def test_resume_continues_at_the_next_task(tmp_path):
    class StopAfterTask:
        name = "finetune"
        trains = True

    method = build_method("finetune")
    calls = []
    original = method.after_task

    def after_task(task, model_, run):
        original(task, model_, run)
        calls.append(task.index)
        if task.index == 1 and len(calls) == 2:
            raise KeyboardInterrupt  # the run dies after task 1, before its row is saved

    method.after_task = after_task
    with pytest.raises(KeyboardInterrupt):
        run_continual(
            model(), scenario(), method, config(tmp_path), tmp_path / "run", progress=False
        )
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert progress["completed"] == 1
    result = run_continual(
        model(), scenario(), method, config(tmp_path), tmp_path / "run", resume=True, progress=False
    )
    assert calls == [0, 1, 1, 2, 3] and len(result.matrix) == 4
    with pytest.raises(ValueError, match="already holds a continual run"):
        run_continual(model(), scenario(), method, config(tmp_path), tmp_path / "run")


def test_method_names_and_arguments_are_checked():
    assert {"finetune", "frozen", "joint", "wise_ft"} <= set(available_methods())
    with pytest.raises(ValueError, match="Did you mean finetune"):
        build_method("finetuen")
    with pytest.raises(ValueError, match="takes no argument"):
        build_method("finetune", alpha=0.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        build_method("wise_ft", alpha=2.0)
    assert build_method("joint+wise_ft", alpha=0.2).name == "joint+wise_ft"


def test_unknown_scenario_lists_the_valid_ones():
    with pytest.raises(
        ValueError,
        match="Valid scenarios: cifar10-cil, instructions, llava-json, mini-mtil, scene-styles, "
        "scenes-cil, seq-cifar10, vqa-functions, vqa-scenes$",
    ):
        build_scenario("scenes-dil")


def test_a_stop_between_saving_weights_and_the_row_does_not_repeat_the_task(tmp_path, monkeypatch):
    from mmcl.continual import runner

    def finish(folder):
        network = model()
        result = run_continual(
            network,
            scenario(),
            build_method("wise_ft", alpha=0.5),
            config(tmp_path),
            folder,
            resume=(folder / "progress.json").exists(),
            progress=False,
        )
        return result, network.state_dict()

    expected, expected_weights = finish(tmp_path / "whole")
    original, calls = runner._record, []

    def dies_on_the_second_task(saved, row, seconds, peak):
        calls.append(saved["completed"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # after state_after_task.pt of task 1 was written
        original(saved, row, seconds, peak)

    monkeypatch.setattr(runner, "_record", dies_on_the_second_task)
    with pytest.raises(KeyboardInterrupt):
        finish(tmp_path / "cut")
    monkeypatch.setattr(runner, "_record", original)
    result, weights = finish(tmp_path / "cut")
    # WiSE-FT's after_task is not idempotent: running task 1 again would change the weights.
    assert result.matrix == expected.matrix
    assert all(torch.equal(weights[k], expected_weights[k]) for k in expected_weights)
