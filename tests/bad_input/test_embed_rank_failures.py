"""What `mmcl embed --images` promises when it runs as ranks of a torchrun job and one rank
goes wrong: every rank stops, the same way, saying which rank and why; none waits forever.

- An error on one rank (here: its checkpoint is missing) stops every rank with its message.
- A rank that stops answering stops the others after --rank-timeout, with the timeout named.
- Ranks that see different image files are refused before any work.

Rank 0 is this test process running `mmcl embed` in-process; rank 1 is a forked stand-in that
misbehaves on purpose (torchrun cannot make a rank misbehave; tests/eval/test_embed_ranks.py
runs the real thing under torchrun).
"""

import os
import signal
import time

import pytest
import torch
from PIL import Image

import mmcl
from conftest import free_port
from mmcl.cli import main
from mmcl.io.checkpoints import save_safetensors
from mmcl.train import distributed


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    save_safetensors(mmcl.create_model("tiny-vit"), tmp_path / "tiny.safetensors")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (32, 32), (60 * i, 0, 0)).save(tmp_path / name / f"{i}.png")
    return tmp_path


def command(folder, images="a", pretrained="tiny.safetensors", timeout=30):
    return [
        "embed",
        "--pretrained",
        str(folder / pretrained),
        "--images",
        str(folder / images),
        "--output",
        str(folder / "out.npy"),
        "--quiet",
        "--part-size",
        "1",
        "--rank-timeout",
        str(timeout),
    ]


def as_rank_0_with(monkeypatch, rank_1, args: list[str]) -> int:
    """Run `mmcl embed args` here as rank 0 of 2, with `rank_1()` in a forked process."""
    port = str(free_port())
    rank = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2"}
    pid = os.fork()
    if pid == 0:  # rank 1: no pytest, no cleanup of the parent's things
        try:
            os.environ.update(rank, RANK="1", LOCAL_RANK="1", CUDA_VISIBLE_DEVICES="")
            torch.set_num_threads(1)
            rank_1()
        finally:
            os._exit(0)
    try:
        for key, value in {**rank, "RANK": "0", "LOCAL_RANK": "0"}.items():
            monkeypatch.setenv(key, value)
        return main(args)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert not distributed.is_distributed()  # the command left the group it joined


def test_an_error_on_one_rank_stops_every_rank_with_its_message(folder, monkeypatch, capsys):
    def rank_1():  # its machine lacks the checkpoint
        main(command(folder, pretrained="missing.safetensors"))
        time.sleep(60)

    assert as_rank_0_with(monkeypatch, rank_1, command(folder)) == 1
    error = capsys.readouterr().err
    assert error.startswith("mmcl embed: error: rank 1 failed at loading the model")
    assert "missing.safetensors" in error
    assert not (folder / "out.npy").exists()


def test_a_rank_that_stops_answering_stops_the_others_after_rank_timeout(
    folder, monkeypatch, capsys
):
    def rank_1():  # joins the job, then hangs
        distributed.init_from_env(backend="gloo", timeout=2)
        from mmcl.eval.embed_ranks import Ranks

        Ranks(timeout=2)
        time.sleep(60)

    started = time.time()
    assert as_rank_0_with(monkeypatch, rank_1, command(folder, timeout=2)) == 1
    assert time.time() - started < 30
    error = capsys.readouterr().err
    assert error.startswith("mmcl embed: error: rank 0 of 2: lost the other ranks at loading")
    assert "did not arrive within 2 s" in error and "Ranks 1 failed" in error


def test_ranks_that_see_different_image_files_are_refused(folder, monkeypatch, capsys):
    def rank_1():  # its --images folder holds other files
        main(command(folder, images="b"))
        time.sleep(60)

    assert as_rank_0_with(monkeypatch, rank_1, command(folder)) == 2
    error = capsys.readouterr().err
    assert "rank 1 sees another job than rank 0 (files differ)" in error
    assert "a filesystem that every node shares" in error
    assert not (folder / "out.npy.parts").exists()
