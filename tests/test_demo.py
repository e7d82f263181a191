"""`make demo` starts afresh each time without touching anything but its own earlier output."""

from mmcl.demo import clear_previous_demo
from mmcl.train.run_folder import run_in


def test_a_second_demo_clears_only_what_the_first_one_wrote(tmp_path):
    ours = [
        "checkpoints/step_00000500.pt",
        "checkpoints/step_00001000.pt",
        "model.safetensors",
        "metrics.jsonl",
        "tensorboard/events.out.tfevents.1.host",
    ]
    theirs = ["notes.txt", "checkpoints/step_best.pt", "tensorboard/README"]
    for name in ours + theirs:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert run_in(tmp_path) is not None  # a new run would refuse this folder
    clear_previous_demo(tmp_path)
    assert not any((tmp_path / name).exists() for name in ours)
    assert all((tmp_path / name).read_text() == "x" for name in theirs)
    assert run_in(tmp_path) is None
