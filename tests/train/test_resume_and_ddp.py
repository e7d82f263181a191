"""Integration: a run killed with SIGKILL resumes exactly; torchrun with 2 ranks equals 1 rank."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

RECIPE = """
model:
  name: tiny-vit
data:
  kind: scenes
  size: 4096
train:
  steps: {steps}
  batch_size: {batch_size}
  lr: 0.0005
  warmup_steps: 2
  checkpoint_every: {checkpoint_every}
  log_every: 1
  tensorboard: false
  progress: false
"""
MMCL = [sys.executable, "-m", "mmcl.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def write_recipe(tmp_path, steps=12, batch_size=16, checkpoint_every=1):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        RECIPE.format(steps=steps, batch_size=batch_size, checkpoint_every=checkpoint_every)
    )
    return path


def train_losses(output_dir: Path) -> list[float]:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


def train(recipe, output_dir, *extra, launcher=MMCL):
    command = [*launcher, "train", "--config", str(recipe), "--output-dir", str(output_dir), *extra]
    subprocess.run(command, check=True, env=ENV, capture_output=True, timeout=300)


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_gives_the_same_loss_curve(tmp_path):
    recipe = write_recipe(tmp_path)
    train(recipe, tmp_path / "whole")
    expected = train_losses(tmp_path / "whole")
    assert len(expected) == 12

    kill_after = random.Random().randint(2, 9)  # a different step on every run of the suite
    output = tmp_path / "killed"
    process = subprocess.Popen(
        [*MMCL, "train", "--config", str(recipe), "--output-dir", str(output)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        log = output / "metrics.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= kill_after:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(train_losses(output)) < 12, "the run finished before it could be killed"

    train(recipe, output, "--resume", "latest")
    assert train_losses(output) == expected  # bit-for-bit: same data, RNG, optimizer state


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process_with_the_same_global_batch(tmp_path):
    recipe = write_recipe(tmp_path, steps=4, batch_size=16, checkpoint_every=100)
    train(recipe, tmp_path / "one")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "mmcl.cli",
    ]
    train(recipe, tmp_path / "two", "--set", "train.batch_size=8", launcher=torchrun)
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert len(one) == len(two) == 4
    assert two == pytest.approx(one, abs=1e-5)
