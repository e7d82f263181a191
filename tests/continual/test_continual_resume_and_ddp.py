"""Integration: a continual run killed with SIGKILL inside a task resumes exactly; two torchrun
ranks keep identical method state (replay buffer, Fisher) and match one process."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from continual_helpers import flatten, losses

MMCL = [sys.executable, "-m", "mmcl.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
RUN = [
    "continual",
    "--scenario",
    "scenes-cil",
    "--model",
    "tiny-vit",
    "--method",
    "er+lwf",
    "--method-args",
    "buffer_size=16",
    "--steps",
    "5",
    "--batch-size",
    "8",
    "--train-size",
    "64",
    "--test-size",
    "32",
    "--checkpoint-every",
    "1",
    "--log-every",
    "1",
    "--quiet",
]


@pytest.mark.slow
def test_sigkill_inside_a_task_then_resume_gives_the_same_run(tmp_path):
    subprocess.run(
        [*MMCL, *RUN, "--output-dir", str(tmp_path / "whole")],
        check=True,
        env=ENV,
        capture_output=True,
        timeout=300,
    )
    expected = losses(tmp_path / "whole")
    matrix = json.loads((tmp_path / "whole" / "report.json").read_text())["accuracy_matrix"]
    assert len(expected) == 4 and all(len(curve) == 5 for curve in expected.values())

    # Kill at a random step of a random task after the first (replay and distillation active).
    task, step = random.Random().randint(1, 3), random.Random().randint(1, 4)
    output = tmp_path / "killed"
    process = subprocess.Popen(
        [*MMCL, *RUN, "--output-dir", str(output)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        logs = sorted(output.glob(f"task_{task:02d}_*/metrics.jsonl"))
        if logs and len(logs[0].read_text().splitlines()) >= step:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (output / "report.json").exists(), "the run finished before it could be killed"

    subprocess.run(
        [*MMCL, *RUN, "--output-dir", str(output), "--resume"],
        check=True,
        env=ENV,
        capture_output=True,
        timeout=300,
    )
    assert losses(output) == expected  # bit for bit: model, optimiser, buffer, RNG, teacher
    assert json.loads((output / "report.json").read_text())["accuracy_matrix"] == matrix


WORKER = """
import sys, torch
import mmcl
from mmcl.continual.experiments import build_scenario
from mmcl.continual.methods import build_method
from mmcl.continual.runner import run_continual
from mmcl.train import TrainConfig, distributed

output, batch_size = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
model = mmcl.create_model("tiny-vit")
method = build_method("er+ewc", buffer_size=24, fisher_samples=8, lambda_=100.0)
config = TrainConfig(steps=4, batch_size=batch_size, lr=1e-4, progress=False,
                     tensorboard=False, output_dir=output)
stream = build_scenario("scenes-cil", train_size=96, test_size=64)
run_continual(model, stream, method, config, output, progress=False)
rank = distributed.rank()
torch.save(method.state_dict(), f"{output}/method_rank{rank}.pt")
distributed.cleanup()
"""


@pytest.mark.slow
def test_two_ranks_share_method_state_and_match_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one"), "16"],
        check=True,
        env=ENV,
        capture_output=True,
        timeout=300,
    )
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
    ]
    subprocess.run(
        [*torchrun, str(script), str(tmp_path / "two"), "8"],
        check=True,
        env=ENV,
        capture_output=True,
        timeout=300,
    )

    ranks = [dict(flatten(torch.load(tmp_path / "two" / f"method_rank{r}.pt"))) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and any("fisher" in k for k in ranks[0])
    for key, value in ranks[0].items():  # buffer, Fisher and anchors identical on both ranks
        other = ranks[1][key]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other

    one = json.loads((tmp_path / "one" / "report.json").read_text())["accuracy_matrix"]
    two = json.loads((tmp_path / "two" / "report.json").read_text())["accuracy_matrix"]
    np.testing.assert_allclose(two, one, atol=0.01)  # within 1 point
