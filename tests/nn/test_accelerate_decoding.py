"""`accelerate` on decoders: `FastAttention` (packed projections; plain matmuls for a decoding
step's few queries) and ``pack_fp32``.

Promises checked here, each against the plain (un-accelerated) computation:
- the attention of masks, contexts and a KV cache computes the plain layer's function, blind
  rows (no key allowed) included: to float32 rounding with ``pack_fp32``, to bf16 rounding in
  bf16;
- by default a float32 model stays bit-equal to the plain one (nothing packed);
- with ``pack_fp32`` a BLIP's captions (greedy and beam) are the plain model's, token for token;
- a packed float32 linear layer leaves calls of fewer than 4 rows to `F.linear` (bit-equal).
"""

import copy

import torch
from torch import nn

from accelerated_copy import plain_and_fast
from conftest import tiny_blip_config
from mmcl.models.blip import Blip
from mmcl.models.blip_config import BlipConfig
from mmcl.nn import KVCache, MultiheadAttention, accelerate, fast_linear
from mmcl.nn.cpu_support import onednn_bf16, onednn_fp32
from mmcl.nn.fast_blocks import FastAttention
from mmcl.nn.fast_linear import PackedLinear
from mmcl.nn.generation import generate


def attention_outputs(attention: nn.Module, dtype: torch.dtype, context_width: int):
    """Self-attention over a cache (a two-token prompt, then one token; row 1 padded at its
    first position), where the layer has one; cross-attention over a context whose mask
    leaves row 2 blind."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, 16, generator=generator).to(dtype)
    context = torch.randn(3, 5, context_width, generator=generator).to(dtype)
    outputs = []
    if context_width == 16:
        padding = torch.ones(3, 1, 1, 3, dtype=torch.bool)
        padding[1, ..., 0] = False
        cache = KVCache()
        outputs.append(attention(x[:, :2], mask=padding[..., :2], causal=True, cache=cache))
        outputs.append(attention(x[:, 2:], mask=padding, causal=True, cache=cache))
    context_mask = torch.ones(3, 1, 1, 5, dtype=torch.bool)
    context_mask[2] = False
    context_mask[0, ..., 3:] = False
    outputs.append(attention(x[:, 2:], context=context, mask=context_mask))
    return [out.float() for out in outputs]


def test_packed_fp32_attention_with_cache_masks_and_blind_rows_equals_the_plain_layer():
    # context as wide as the layer: one fused in_proj; narrower: separate q/k/v weights
    for context_width in (16, 12):
        layer = MultiheadAttention(16, 2, context_width=context_width)
        plain, fast = plain_and_fast(layer, torch.float32, pack_fp32=True)
        assert type(fast) is FastAttention
        with torch.no_grad():
            wanted = attention_outputs(plain, torch.float32, context_width)
            got = attention_outputs(fast, torch.float32, context_width)
        for a, b in zip(got, wanted, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        blind = got[-1][2]  # row 2 of the cross-attention: zeros (the bias of out_proj)
        torch.testing.assert_close(blind, plain.out_proj.bias.expand_as(blind))


def test_bf16_attention_is_within_bf16_rounding_of_the_plain_float32_layer():
    layer = MultiheadAttention(16, 2)
    plain, fast = plain_and_fast(layer, torch.bfloat16, pack_fp32=False)
    with torch.no_grad():
        wanted = attention_outputs(plain, torch.float32, 16)
        got = attention_outputs(fast, torch.bfloat16, 16)
    for a, b in zip(got, wanted, strict=True):
        torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)


def tiny_blip() -> Blip:
    torch.manual_seed(0)
    model = Blip(BlipConfig.from_dict(tiny_blip_config()))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval().requires_grad_(False)


def test_default_acceleration_leaves_a_float32_blip_bit_equal():
    plain = tiny_blip()
    fast = accelerate(tiny_blip())
    assert type(fast.text_decoder.encoder.blocks[0].cross_attn) is FastAttention
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([[48, 5, 6, 7, 3], [48, 8, 3, 0, 0]])
    with torch.no_grad():
        wanted = plain.caption_logits(plain.encode_image_tokens(images), tokens)
        got = fast.caption_logits(fast.encode_image_tokens(images), tokens)
    assert torch.equal(got, wanted)
    captions = fast.generate(images, max_new_tokens=6).tokens
    assert torch.equal(captions, plain.generate(images, max_new_tokens=6).tokens)


def test_pack_fp32_blip_captions_equal_the_plain_models_greedy_and_beam():
    plain = tiny_blip()
    fast = accelerate(tiny_blip(), pack_fp32=True)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for beams in (1, 3):
        wanted = plain.generate(images, max_new_tokens=8, beams=beams)
        got = fast.generate(images, max_new_tokens=8, beams=beams)
        assert torch.equal(got.tokens, wanted.tokens)
        torch.testing.assert_close(got.scores, wanted.scores, atol=1e-4, rtol=0)


def packed_calls(monkeypatch) -> list[int]:
    """The rows of every call that takes a packed weight, as they happen."""
    rows = []
    real = fast_linear.packed_linear

    def counted(x, *rest):
        rows.append(x.numel() // x.shape[-1])
        return real(x, *rest)

    monkeypatch.setattr(fast_linear, "packed_linear", counted)
    return rows


def test_packed_fp32_linear_leaves_calls_of_few_rows_to_pytorch(monkeypatch):
    # oneDNN's packed float32 matmul of one or two rows is slower than F.linear: below
    # FP32_PACKED_MIN_ROWS rows the layer computes exactly what nn.Linear does.
    torch.manual_seed(0)
    layer = nn.Linear(32, 64).eval().requires_grad_(False)
    plain = copy.deepcopy(layer)
    fast = accelerate(nn.Sequential(layer).eval(), pack_fp32=True)[0]
    assert type(fast) is PackedLinear
    packed_rows = packed_calls(monkeypatch)
    assert fast_linear.FP32_PACKED_MIN_ROWS == 4
    with torch.no_grad():
        for shape in ((1, 32), (3, 32), (1, 3, 32), (4, 32), (2, 5, 32)):
            x = torch.randn(shape)
            got, wanted = fast(x), plain(x)
            if x.numel() < 4 * 32:
                assert torch.equal(got, wanted)
            else:
                torch.testing.assert_close(got, wanted, atol=1e-5, rtol=1e-5)
        bf16 = copy.deepcopy(fast).to(torch.bfloat16)
        bf16(torch.randn(1, 32).to(torch.bfloat16))  # bf16: packed whatever the rows
    # float32 calls of 4 and 10 rows where oneDNN packs float32; the bf16 call where it has bf16
    # (not on CPUs without bf16 instructions)
    wanted = ([4, 10] if onednn_fp32() else []) + ([1] if onednn_bf16() else [])
    assert packed_rows == wanted


def test_generation_with_fewer_than_4_rows_packs_no_float32_call(monkeypatch):
    # A decoding step of 1-3 rows runs F.linear on the plain weights; packing the prompt's call
    # would bring the packed copy through the caches as well. So the loop turns float32
    # packing off for the whole generation there, and leaves it on from 4 rows.
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(8, 8)).eval().requires_grad_(False)
    layer = accelerate(plain, pack_fp32=True)[0]
    packed_rows = packed_calls(monkeypatch)
    embeddings = torch.randn(20, 8)

    def step(tokens, cache):
        cache.advance(tokens)
        return layer(embeddings[tokens])[:, -1]  # the 8 outputs serve as logits

    for rows in (1, 3, 4):
        packed_rows.clear()
        prompt = torch.arange(6).repeat(rows, 1)
        with torch.no_grad():
            generate(step, prompt, KVCache(), max_new_tokens=3, end_token=-1)
        outside = layer(torch.randn(rows, 6, 8))  # the switch is back on after generation
        assert outside.shape == (rows, 6, 8)
        if not onednn_fp32():
            assert packed_rows == []
        elif rows < 4:
            assert packed_rows == [rows * 6]  # the call outside generation only
        else:
            assert packed_rows == [rows * 6, rows, rows, rows * 6]
