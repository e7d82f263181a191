"""The run folder: which files are the run's checkpoints, which one resumes, what is pruned."""

import pytest

from mmcl.train.run_folder import (
    LATEST,
    LATEST_IF_ANY,
    checkpoint_path,
    list_checkpoints,
    prune_checkpoints,
    resume_checkpoint,
    run_in,
)


def touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(name)


def test_checkpoint_names_have_eight_digits_or_more():
    assert checkpoint_path("c", 12).name == "step_00000012.pt"
    assert checkpoint_path("c", 123_456_789).name == "step_123456789.pt"


def test_only_exact_names_are_listed_in_step_order(tmp_path):
    touch(tmp_path, "step_00000010.pt", "step_100000000.pt", "step_00000002.pt")
    touch(tmp_path, "step_2.pt", "step_best.pt", "step_00000003.pt.tmp", "xstep_00000004.pt")
    (tmp_path / "step_00000005.pt").mkdir()  # a folder is not a checkpoint
    names = [p.name for p in list_checkpoints(tmp_path)]
    # by step number: a ninth digit sorts after 10, not between 1 and 2 as text would
    assert names == ["step_00000002.pt", "step_00000010.pt", "step_100000000.pt"]
    assert list_checkpoints(tmp_path / "missing") == []


def test_pruning_keeps_the_newest_steps_and_every_other_file(tmp_path):
    touch(tmp_path, "step_00000001.pt", "step_00000009.pt", "step_00000010.pt", "step_9.pt")
    deleted = prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in deleted] == ["step_00000001.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_00000009.pt",
        "step_00000010.pt",
        "step_9.pt",
    ]


def test_what_counts_as_holding_a_run(tmp_path):
    assert run_in(tmp_path / "new") is None
    touch(tmp_path / "log_only", "metrics.jsonl")
    touch(tmp_path / "log_only" / "checkpoints", "step_best.pt")
    assert run_in(tmp_path / "log_only") is None
    touch(tmp_path / "trained", "model.safetensors")
    assert "model.safetensors" in run_in(tmp_path / "trained")
    touch(tmp_path / "stopped" / "checkpoints", "step_00000004.pt", "step_00000008.pt")
    assert run_in(tmp_path / "stopped") == "2 checkpoint(s), the latest step_00000008.pt"


def test_which_checkpoint_a_run_starts_from(tmp_path):
    empty, held = tmp_path / "empty", tmp_path / "held"
    touch(held / "checkpoints", "step_00000004.pt", "step_00000008.pt")
    own, other = held / "checkpoints" / "step_00000004.pt", tmp_path / "elsewhere.pt"
    assert resume_checkpoint(None, empty) is None
    assert resume_checkpoint(LATEST_IF_ANY, empty) is None
    assert resume_checkpoint(LATEST, held) == held / "checkpoints" / "step_00000008.pt"
    assert resume_checkpoint(LATEST_IF_ANY, held) == held / "checkpoints" / "step_00000008.pt"
    assert resume_checkpoint(str(own), held) == own  # the folder's own run, from an older step
    assert resume_checkpoint(str(other), empty) == other  # another run's weights, a new folder
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        resume_checkpoint(LATEST, empty)
    for resume in (None, str(other)):
        with pytest.raises(ValueError, match=r"held already holds a training run \(2 checkpoint"):
            resume_checkpoint(resume, held)
