"""Shared test helpers: reference models from open_clip built on the same random weights."""

from __future__ import annotations

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


@pytest.fixture
def captions() -> list[str]:
    return [
        "a photo of a cat",
        "A red circle above two blue squares, on a grey background!",
        "",
        "emoji 😀 and 中文 and accents: café naïve",
    ]
