"""Integration, for a LLaVA-style bridge on an instruction stream: a run killed with SIGKILL
inside a task resumes exactly; two torchrun ranks end with identical weights, method state
and evaluation rows, for joint and for the stateful methods (er, lwf, ewc, task_lora), and
what the methods gather from the data equals one process's on the same global batches. The
other stateful methods' resume: test_instruction_methods_resume.py (in one process)."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from continual_helpers import flatten, losses

from mmcl.cli import main
from mmcl.continual.instruction_streams import vqa_functions
from mmcl.continual.methods import build_method
from mmcl.continual.runner import run_continual
from mmcl.train import TrainConfig
from tiny_bridge import tiny_bridge, tiny_bridge_folder

MMCL = [sys.executable, "-m", "mmcl.cli"]
TESTS = Path(__file__).parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
STEPS = 4
RUN = ["continual", "--scenario", "vqa-functions", "--tasks", "shape,count", "--method"]
RUN += ["finetune", "--train-size", "16", "--test-size", "2", "--general-size", "2"]
RUN += ["--steps", str(STEPS), "--batch-size", "4", "--lr", "0.001", "--checkpoint-every"]
RUN += ["1", "--log-every", "1", "--quiet"]


@pytest.mark.slow
def test_sigkill_inside_a_bridge_task_then_resume_gives_the_same_run(tmp_path):
    arguments = [*RUN, "--model", str(tiny_bridge_folder(tmp_path / "bridge"))]
    output = tmp_path / "killed"
    killed = subprocess.Popen(
        [*MMCL, *arguments, "--output-dir", str(output)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    step = random.Random().randint(1, STEPS - 1)  # inside the second task
    deadline = time.time() + 240
    while time.time() < deadline and killed.poll() is None:
        logs = sorted(output.glob("task_01_*/metrics.jsonl"))
        if logs and len(logs[0].read_text().splitlines()) >= step:
            break
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (output / "report.json").exists(), "the run finished before it could be killed"
    subprocess.run(
        [*MMCL, *arguments, "--output-dir", str(output), "--resume"],
        check=True,
        env=ENV,
        capture_output=True,
        timeout=300,
    )
    # The uninterrupted run, here (one thread, as the processes ran: the same arithmetic).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*arguments, "--output-dir", str(tmp_path / "whole")]) == 0
    finally:
        torch.set_num_threads(threads)
    expected = losses(tmp_path / "whole")
    assert [len(curve) for curve in expected.values()] == [STEPS, STEPS]
    assert losses(output) == expected  # bit for bit: model, optimiser, sampler, RNG
    reports = [json.loads((f / "report.json").read_text()) for f in (tmp_path / "whole", output)]
    for key in ("accuracy_matrix", "generative"):
        assert reports[1][key] == reports[0][key]


WORKER = """
import sys, torch
sys.path.insert(0, sys.argv[2])
from tiny_bridge import tiny_bridge
from mmcl.continual.instruction_streams import vqa_functions
from mmcl.continual.methods import build_method
from mmcl.continual.runner import run_continual
from mmcl.train import TrainConfig, distributed

stream = vqa_functions(**STREAM)
for name, arguments in METHODS.items():
    output = f"{sys.argv[1]}/{name}"
    model, tokenizer = tiny_bridge()
    config = TrainConfig(steps=STEPS, batch_size=4, lr=1e-3, progress=False,
                         tensorboard=False, output_dir=output)
    method = build_method(name, **arguments)
    result = run_continual(model, stream, method, config, output, progress=False,
                           tokenizer=tokenizer)
    rank = distributed.rank()
    saved = {"model": model.state_dict(), "method": method.state_dict(), "matrix": result.matrix}
    torch.save(saved, f"{output}/rank{rank}.pt")
distributed.cleanup()
"""
# joint mixes every task's data; the composite holds state each rank computes from its own
# share of the data (er's buffer, ewc's importance, task_lora's keys) or adds per task (lwf's
# previous model, task_lora's adapters).
METHODS = {"joint": {}, "er+lwf+ewc+task_lora": {"buffer_size": 4, "fisher_samples": 2}}
STREAM = {"functions": ["shape", "count"], "train_size": 16, "test_size": 2, "general_size": 2}
DDP_STEPS = 3


@pytest.mark.slow
def test_two_ranks_train_a_bridge_in_step_and_evaluate_alike(tmp_path):
    script = tmp_path / "worker.py"
    header = f"METHODS = {METHODS!r}\nSTREAM = {STREAM!r}\nSTEPS = {DDP_STEPS}\n"
    script.write_text(header + textwrap.dedent(WORKER))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    subprocess.run(
        [*torchrun, "--standalone", str(script), str(tmp_path / "two"), str(TESTS)],
        check=True,
        env=ENV,
        capture_output=True,
        timeout=300,
    )
    for name in METHODS:
        ranks = [torch.load(tmp_path / "two" / name / f"rank{r}.pt") for r in (0, 1)]
        # The run's start: the bridge with what the method added (task_lora's adapters).
        start = torch.load(tmp_path / "two" / name / "initial_model.pt")
        assert any(not torch.equal(v, start[k]) for k, v in ranks[0]["model"].items())
        other_rank = dict(flatten(ranks[1]))
        for key, value in flatten(ranks[0]):  # weights, method state and matrix alike
            other = other_rank[key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
        assert other_rank.keys() == dict(flatten(ranks[0])).keys()
        progress = json.loads((tmp_path / "two" / name / "progress.json").read_text())
        assert len(progress["generative"]["rows"]) == 2

    # What the method gathers from the data is what one process gathers from the same global
    # batches (4 a rank, 8 here): er's buffer, and task_lora's keys, all-reduced every step.
    name = "er+lwf+ewc+task_lora"
    model, tokenizer = tiny_bridge()
    method = build_method(name, **METHODS[name])
    one = tmp_path / "one"
    config = TrainConfig(
        steps=DDP_STEPS, batch_size=8, lr=1e-3, progress=False, tensorboard=False, output_dir=one
    )
    stream = vqa_functions(**STREAM)
    run_continual(model, stream, method, config, one, progress=False, tokenizer=tokenizer)
    two = torch.load(tmp_path / "two" / name / "rank0.pt")["method"]
    torch.testing.assert_close(two["er"], method.state_dict()["er"], rtol=0, atol=0)
    keys, expected = two["task_lora"]["keys"], method.state_dict()["task_lora"]["keys"]
    assert keys["counts"] == expected["counts"] == {0: 8 * DDP_STEPS, 1: 8 * DDP_STEPS}
    for task, total in expected["sums"].items():
        torch.testing.assert_close(keys["sums"][task], total)
