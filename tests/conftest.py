"""Shared test helpers: reference models from open_clip built on the same random weights."""

from __future__ import annotations

import os
import socket

import open_clip
import pytest
import torch

from mmcl.models import get_model_config


def open_clip_reference(name: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised open_clip CLIP with the architecture of our config `name`."""
    torch.manual_seed(seed)
    return open_clip.model.CLIP(**get_model_config(name)).eval()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def join_cpu_process_group(rank: int, world_size: int, port: int):
    """What torchrun would set for this rank (CPU and gloo even on a GPU machine), one intra-op
    thread a process so the ranks do not fight over the cores; then the group is joined (its
    `distributed.init_from_env` info is returned)."""
    from mmcl.train import distributed

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        CUDA_VISIBLE_DEVICES="",
    )
    torch.set_num_threads(1)
    return distributed.init_from_env()


def free_port() -> int:
    """A TCP port nobody listens on now, for a multi-process test's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def captions() -> list[str]:
    return [
        "a photo of a cat",
        "A red circle above two blue squares, on a grey background!",
        "",
        "emoji 😀 and 中文 and accents: café naïve",
    ]


@pytest.fixture
def amx():
    """Skips where mmcl's native kernels cannot run (no AMX); on a CPU with AMX they must
    build, so a failed build fails the test rather than falling back silently."""
    from mmcl.nn import kernels

    if not kernels.amx_available():
        pytest.skip("mmcl's native kernels run on CPUs with AMX only")
    if os.environ.get("MMCL_NATIVE_KERNELS") == "0":
        pytest.skip("MMCL_NATIVE_KERNELS=0 switches mmcl's native kernels off")
    assert kernels.build(), "the native kernels did not build on this CPU with AMX"


@pytest.fixture
def fresh_kernels(monkeypatch):
    """A process that has not tried to build mmcl's native kernels yet."""
    from mmcl.nn import kernels

    monkeypatch.setattr(kernels, "_ops", {})
    monkeypatch.setattr(kernels, "_build_failed", [])
    monkeypatch.delenv("MMCL_NATIVE_KERNELS", raising=False)
