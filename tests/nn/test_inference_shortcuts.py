"""The building blocks of the fast inference path (`mmcl.nn.inference`) against plain PyTorch:
row blocks of a packed linear, float32-parameter LayerNorms, and the one-query attention of a
transformer's last block."""

import pytest
import torch
from torch.nn import functional as F

from mmcl.nn import LayerNorm, MultiheadSelfAttention, QuickGELU, inference


def bf16_norm(width: int = 256) -> LayerNorm:
    norm = LayerNorm(width)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.2 * torch.randn(width, generator=torch.Generator().manual_seed(0)))
        norm.bias.copy_(0.1 * torch.randn(width, generator=torch.Generator().manual_seed(1)))
    return norm.to(torch.bfloat16)


def activations(rows: int, width: int = 256) -> torch.Tensor:
    # An offset and a spread per channel, like a residual stream: the variance must be exact.
    generator = torch.Generator().manual_seed(2)
    x = 3 * torch.randn(rows, width, generator=generator) + 5 * torch.randn(
        width, generator=generator
    )
    return x.to(torch.bfloat16)


@pytest.mark.parametrize("rows", [4, 2048])  # below and above the size where the shortcut starts
def test_layer_norm_gives_the_modules_bits(rows):
    norm, x = bf16_norm(), activations(rows)
    with torch.no_grad():
        assert torch.equal(inference.layer_norm(norm, x), norm(x))


def test_layer_norm_cache_follows_in_place_updates_and_hooks_are_called():
    norm, x = bf16_norm(), activations(2048)
    with torch.no_grad():
        inference.layer_norm(norm, x)  # fills the cache
        assert norm.weight in inference._FLOAT_NORM  # the shortcut was taken
        norm.weight.mul_(2)
        assert torch.equal(inference.layer_norm(norm, x), norm(x))
    calls = []
    norm.register_forward_hook(lambda module, args, output: calls.append(output.shape))
    with torch.no_grad():
        inference.layer_norm(norm, x)
    assert calls == [x.shape]


def test_layer_norm_leaves_float32_and_gradients_to_the_module():
    norm = LayerNorm(256)
    x = activations(2048).float().requires_grad_(True)
    assert torch.equal(inference.layer_norm(norm, x), norm(x))
    inference.layer_norm(norm, x).sum().backward()
    assert x.grad is not None and norm.weight.grad is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_linear_row_block_is_that_block_of_the_full_product(dtype):
    generator = torch.Generator().manual_seed(3)
    weight = (0.05 * torch.randn(96, 64, generator=generator)).to(dtype)
    bias = (0.1 * torch.randn(96, generator=generator)).to(dtype)
    x = torch.randn(5, 7, 64, generator=generator).to(dtype)
    with torch.no_grad():
        full = inference.linear(x, weight, bias)
        for rows in [(0, 32), (32, 96), (0, 32)]:  # the second (0, 32) comes from the cache
            block = inference.linear(x, weight, bias, rows=rows)
            assert block.shape == (5, 7, rows[1] - rows[0])
            assert torch.allclose(block.float(), full[..., rows[0] : rows[1]].float(), atol=1e-2)
        weight.mul_(-1)  # in place: every cached block must be rebuilt
        flipped = inference.linear(x, weight, bias, rows=(32, 96))
        expected = F.linear(x.float(), weight[32:].float(), bias[32:].float())
    assert torch.allclose(flipped.float(), expected, atol=2e-2)


@pytest.mark.parametrize("causal", [False, True])
def test_one_query_attention_matches_the_full_attention_at_that_token(causal):
    torch.manual_seed(4)
    attention = MultiheadSelfAttention(128, 4).eval()
    x = torch.randn(3, 9, 128)
    positions = torch.tensor([0, 8, 4])
    rows = torch.arange(3)
    with torch.no_grad():
        full = attention(x, causal=causal)[rows, positions]  # float32: no shortcuts
        fast_attention = attention.to(torch.bfloat16)
        pooled = fast_attention(x.bfloat16(), causal=causal, query_positions=positions)
        with inference.reference_mode():
            plain = fast_attention(x.bfloat16(), causal=causal, query_positions=positions)
    assert pooled.shape == (3, 1, 128)
    assert F.cosine_similarity(pooled.squeeze(1).float(), full).min() > 0.9999
    assert F.cosine_similarity(pooled.float(), plain.float(), dim=-1).min() > 0.9999


@pytest.mark.parametrize("activation", [QuickGELU, torch.nn.GELU])
def test_mlp_with_fused_activation_computes_the_float32_function(activation):
    # QuickGELU runs as silu(1.702 z) / 1.702 with rescaled cached weights: the same function.
    generator = torch.Generator().manual_seed(5)
    fc, proj = torch.nn.Linear(64, 256), torch.nn.Linear(256, 64)
    with torch.no_grad():
        for layer in (fc, proj):
            layer.weight.copy_(0.1 * torch.randn(layer.weight.shape, generator=generator))
            layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=generator))
    x = torch.randn(4, 9, 64, generator=generator)
    residual = torch.randn(4, 9, 64, generator=generator)
    expected = residual + proj(activation()(fc(x)))  # float32, plain modules
    fc, proj = fc.to(torch.bfloat16), proj.to(torch.bfloat16)
    with torch.no_grad():
        fast = inference.mlp(x.bfloat16(), fc, activation(), proj, residual.bfloat16())
        without_residual = inference.mlp(x.bfloat16(), fc, activation(), proj)
    assert fast.dtype == torch.bfloat16
    assert F.cosine_similarity(fast.float(), expected.detach(), dim=-1).min() > 0.9999
    assert (fast.float() - expected).abs().max() < 0.05 * expected.abs().max()
    unfused = (expected - residual).detach()
    assert F.cosine_similarity(without_residual.float(), unfused, dim=-1).min() > 0.9999
    if activation is QuickGELU and inference.onednn_bf16():  # the fused path was taken
        scales = {scale for _, scale in inference._PACKED_LINEAR[fc.weight][1]}
        assert scales == {inference.QUICK_GELU_SLOPE}


@pytest.mark.parametrize("activation", [QuickGELU, torch.nn.GELU])
def test_mlp_calls_hooks_on_its_activation(activation):
    fc, proj = torch.nn.Linear(64, 256).bfloat16(), torch.nn.Linear(256, 64).bfloat16()
    module, seen = activation(), []
    module.register_forward_hook(lambda m, args, output: seen.append(output.shape))
    x = torch.randn(3, 64).bfloat16()
    with torch.no_grad():
        out = inference.mlp(x, fc, module, proj)
        expected = proj(module(fc(x)))
    assert seen == [(3, 256), (3, 256)]
    assert F.cosine_similarity(out.float(), expected.float()).min() > 0.9999
