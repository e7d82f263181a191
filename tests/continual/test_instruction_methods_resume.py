"""Exact resume of the instruction-stream methods that carry state past a task (er's buffer,
ewc's and online_ewc's importance, lwf's previous model, zscl's reference and average, the
LoRA experts and prompts), on a tiny LLaVA-style bridge: a run stopped inside the second
task, after its first checkpoint, and resumed ends as the uninterrupted run does, step for
step. Methods are composed (`+`) so that one run checks several states."""

import pytest
import torch
from continual_helpers import flatten, losses

from mmcl.continual.instruction_streams import vqa_functions
from mmcl.continual.methods import build_method
from mmcl.continual.runner import run_continual
from mmcl.train import TrainConfig
from tiny_bridge import tiny_bridge

STEPS = 2
METHODS = {
    "er+lwf+ewc+task_lora": {"buffer_size": 4, "fisher_samples": 2},
    "online_ewc+zscl+o_lora": {
        "fisher_samples": 2,
        "fisher": "minibatch",
        "reference_pairs": 4,
        "average_every": 1,
    },
    "moe_lora+modal_prompt": {},
}


@pytest.fixture(scope="module")
def stream():
    return vqa_functions(["shape", "count"], train_size=4, test_size=1, general_size=1)


def run(name, stream, output, resume=False, stop_at_step=None):
    """`(result, model, method)` of a run of `name`; `stop_at_step`: the process is
    "killed" (KeyboardInterrupt) as that training step, counted over the tasks, starts."""
    method = build_method(name, **METHODS[name])
    if stop_at_step is not None:
        extra_losses, steps = method.extra_losses, []

        def stopping(model, batch, outputs):  # called once a step
            steps.append(1)
            if len(steps) == stop_at_step:
                raise KeyboardInterrupt
            return extra_losses(model, batch, outputs)

        method.extra_losses = stopping
    model, tokenizer = tiny_bridge()
    config = TrainConfig(
        steps=STEPS,
        batch_size=2,
        lr=1e-3,
        checkpoint_every=1,
        log_every=1,
        progress=False,
        tensorboard=False,
        output_dir=str(output),
    )
    result = run_continual(
        model, stream, method, config, output, resume, progress=False, tokenizer=tokenizer
    )
    return result, model, method


def assert_same(state, expected):
    leaves, wanted = dict(flatten(state)), dict(flatten(expected))
    assert leaves.keys() == wanted.keys()
    for key, value in wanted.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(leaves[key], value), key
        else:
            assert leaves[key] == value, key


@pytest.mark.parametrize("name", METHODS)
def test_a_run_stopped_inside_the_second_task_resumes_to_the_uninterrupted_run(
    stream, tmp_path, name
):
    whole, whole_model, whole_method = run(name, stream, tmp_path / "whole")
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run(name, stream, cut, stop_at_step=STEPS + 2)  # task 2's second step
    assert not (cut / "report.json").exists()
    checkpoints = [path.name for path in cut.glob("task_01_*/checkpoints/step_*.pt")]
    assert checkpoints == ["step_00000001.pt"]  # the resume starts inside the task

    resumed, model, method = run(name, stream, cut, resume=True)
    assert losses(cut) == losses(tmp_path / "whole")  # every step's loss, bit for bit
    assert [len(curve) for curve in losses(cut).values()] == [STEPS, STEPS]
    assert_same(model.state_dict(), whole_model.state_dict())
    assert_same(method.state_dict(), whole_method.state_dict())
    assert resumed.matrix == whole.matrix and resumed.initial == whole.initial
    assert resumed.report["generative"] == whole.report["generative"]
