"""Shared test helpers: reference models from open_clip built on the same random weights."""

from __future__ import annotations

import os
import socket

import open_clip
import pytest
import torch

from mmcl.models import get_model_config

# Under pytest-xdist each worker gets one intra-op thread: the workers share the cores, and
# one thread per worker keeps them from waiting on each other's threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


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


def tiny_blip_config(**text) -> dict:
    """An mmcl BLIP config dict that builds in milliseconds (head dim 16, the decoding
    attention kernel's smallest); `text` overrides its text options (e.g. ``sep_id``)."""
    return {
        "blip_vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
        "blip_text": {
            "vocab_size": 50,
            "width": 32,
            "layers": 2,
            "heads": 2,
            "max_positions": 24,
            "dec_id": 48,
            "enc_id": 49,
            **text,
        },
        "embed_dim": 16,
    }


def tiny_coca_config(attentional_pool: bool = True, **text) -> dict:
    """An open_clip CoCa config dict small enough to build in milliseconds. With the pooler,
    its 24-wide queries read 48-wide tokens (open_clip's separate q/k/v weights, as in
    coca_ViT-B-32); without it, the patch tokens are the caption context (coca_base)."""
    width = 24 if attentional_pool else 32
    vision = {"image_size": 32, "layers": 2, "width": 48 if attentional_pool else width}
    vision |= {"patch_size": 8, "head_width": 8, "output_tokens": True}
    if attentional_pool:
        vision |= {"attentional_pool": True, "attn_pooler_heads": 4, "attn_pooler_queries": 6}
    text_cfg = {"context_length": 10, "vocab_size": 50, "width": width, "heads": 4, "layers": 2}
    text_cfg |= {"embed_cls": True, "output_tokens": True, **text}
    multimodal = {"context_length": 10, "vocab_size": 50, "width": width, "heads": 2, "layers": 2}
    return {
        "embed_dim": width,
        "vision_cfg": vision,
        "text_cfg": text_cfg,
        "multimodal_cfg": multimodal,
        "custom_text": True,
    }


def open_clip_coca(config: dict, seed: int = 0) -> torch.nn.Module:
    """open_clip's CoCa on `config`, every parameter drawn at random (LayerNorms too, so a
    swapped pair would show; open_clip leaves its decoder's weights at PyTorch's defaults)."""
    from open_clip.coca_model import CoCa

    torch.manual_seed(seed)
    model = CoCa(**{k: v for k, v in config.items() if k != "custom_text"})
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.2)
    return model.eval()


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of tiny models: a second thread only adds waiting there,
    the more so on a shared CPU (`pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
