"""`mmcl embed --images` under torchrun (2 gloo ranks on the CPU): the ranks share the parts,
and what they write is what one process writes, bit for bit, even when a rank is killed
mid-run and the job is resumed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import mmcl
from mmcl.cli import main
from mmcl.io.checkpoints import save_safetensors

# One intra-op thread a process, in the ranks and in the reference: the thread count changes
# the last bits of float sums, the number of ranks must not.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
TORCHRUN += ["--standalone", "-m", "mmcl.cli"]


@pytest.fixture
def job(tmp_path):
    """A checkpoint, 20 small images (20 parts of 1: 10 rounds of the 2 ranks), the command's
    arguments, and what one process writes for them."""
    torch.manual_seed(0)
    save_safetensors(mmcl.create_model("tiny-vit"), tmp_path / "tiny.safetensors")
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for i in range(20):
        folder = images / "sub" if i % 3 == 0 else images
        Image.new("RGB", (32 + i, 30), (12 * i, 255 - 12 * i, 7 * i)).save(folder / f"{i:02d}.png")
    args = ["embed", "--pretrained", str(tmp_path / "tiny.safetensors"), "--images", str(images)]
    args += ["--quiet", "--part-size", "1", "--batch-size", "1"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*args, "--output", str(tmp_path / "one.npy")]) == 0
    finally:
        torch.set_num_threads(threads)
    return args, tmp_path / "one.npy"


def assert_same_output(output: Path, reference: Path):
    assert output.read_bytes() == reference.read_bytes()  # bit for bit, same row order
    index = ".index.txt"
    assert Path(f"{output}{index}").read_text() == Path(f"{reference}{index}").read_text()


@pytest.mark.slow
def test_two_ranks_write_what_one_process_writes(job, tmp_path):
    args, reference = job
    output = tmp_path / "two.npy"
    run = subprocess.run(
        [*TORCHRUN, *args, "--output", str(output)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_output(output, reference)
    assert run.stdout.count("wrote 20 x 64 features") == 1  # rank 0 reports for the job
    assert not Path(f"{output}.parts").exists()


def rank_pid(launcher: subprocess.Popen, rank: int, deadline: float) -> int:
    """The process id of torchrun's worker of this `rank` (a child of the launcher)."""
    while time.time() < deadline:
        for entry in Path("/proc").iterdir():
            try:
                status = (entry / "status").read_text()
                environ = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue
            if f"PPid:\t{launcher.pid}\n" in status and f"RANK={rank}".encode() in environ:
                return int(entry.name)
        time.sleep(0.05)
    raise AssertionError(f"torchrun started no rank {rank}")


@pytest.mark.slow
def test_a_rank_killed_mid_run_then_resumed_writes_what_one_process_writes(job, tmp_path, capsys):
    args, reference = job
    output = tmp_path / "two.npy"
    parts = Path(f"{output}.parts")
    launcher = subprocess.Popen(
        [*TORCHRUN, *args, "--output", str(output)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    rank1 = rank_pid(launcher, 1, deadline)
    # Rank 1 owns the odd parts; kill it once its first one is written. The ranks meet after
    # each round of parts, so the job cannot end before its 10th round.
    while not (parts / "part-000001.safetensors").exists() and time.time() < deadline:
        time.sleep(0.002)
    os.kill(rank1, signal.SIGKILL)
    _, errors = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert not output.exists()
    finished = len(list(parts.glob("part-*.safetensors")))
    assert 2 <= finished < 20, errors[-3000:]

    # Resumed by one process: parts are the job's, whichever rank wrote them.
    capsys.readouterr()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*args, "--output", str(output)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert f"reused {finished} finished part(s)" in capsys.readouterr().out
    assert_same_output(output, reference)
