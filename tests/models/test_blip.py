"""BLIP's own properties: cached decoding equals the full decoder, parts are named."""

from __future__ import annotations

import doctest

import pytest
import torch

import mmcl.eval.rerank
import mmcl.models.blip
from mmcl.models.blip import Blip
from mmcl.models.blip_config import BlipConfig

CONFIG = {
    "blip_vision": {
        "image_size": 16,
        "patch_size": 8,
        "width": 16,
        "layers": 1,
        "heads": 2,
        "mlp_width": 32,
    },
    "blip_text": {
        "vocab_size": 30,
        "width": 16,
        "layers": 2,
        "heads": 2,
        "mlp_width": 32,
        "max_positions": 10,
        "dec_id": 28,
        "enc_id": 29,
    },
    "embed_dim": 8,
}


@pytest.mark.parametrize("module", [mmcl.models.blip, mmcl.eval.rerank])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0


def test_cached_steps_equal_the_full_decoder():
    torch.manual_seed(0)
    model = Blip(BlipConfig.from_dict(CONFIG)).eval()
    images, tokens = torch.randn(2, 3, 16, 16), torch.tensor([[28, 5, 6, 7], [28, 8, 9, 10]])
    with torch.no_grad():
        full = model.caption_logits(model.encode_image_tokens(images), tokens)
        cache = model.start_captions(images)
        first = model.caption_step(tokens[:, :2], cache)  # a two-token prompt, then one by one
        rest = [model.caption_step(tokens[:, i : i + 1], cache) for i in (2, 3)]
    torch.testing.assert_close(torch.stack([first, *rest], 1), full[:, 1:], atol=1e-5, rtol=0)


def test_a_missing_part_is_named():
    model = Blip(BlipConfig.from_dict({**CONFIG, "parts": ["text_decoder"]}))
    with pytest.raises(ValueError, match="this BLIP has no text_encoder"):
        model.itm_logits(torch.zeros(1, 5, 16), torch.tensor([[2, 3]]))


def test_unknown_parts_are_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown BLIP parts \['captioner'\]"):
        BlipConfig.from_dict({**CONFIG, "parts": ["captioner"]})
