"""The fast modules `mmcl.nn.accelerate` swaps in, each against the plain module it replaces:
float32-parameter LayerNorms (the same bits), the one-query attention of a transformer's last
block, the fused MLP (QuickGELU as a rescaled silu), and hooks added after acceleration."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bf16_error import assert_as_close_as_pytorch_bf16
from mmcl.nn import LayerNorm, MultiheadSelfAttention, QuickGELU, accelerate
from mmcl.nn.fast_blocks import FastLayerNorm, FastSelfAttention
from mmcl.nn.fast_linear import FusedMlp
from mmcl.nn.transformer import Mlp


def accelerated(module: nn.Module) -> nn.Module:
    """`module` swapped by `accelerate` (it swaps children: wrap it in a Sequential)."""
    return accelerate(nn.Sequential(module).requires_grad_(False).eval())[0]


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
def test_layer_norm_gives_the_plain_modules_bits(rows):
    norm, x = bf16_norm(), activations(rows)
    fast = accelerated(copy.deepcopy(norm))
    assert type(fast) is FastLayerNorm
    with torch.no_grad():
        assert torch.equal(fast(x), norm(x))


def test_layer_norm_follows_in_place_updates_and_calls_hooks_added_later():
    norm, x = bf16_norm(), activations(2048)
    fast = accelerated(norm)
    with torch.no_grad():
        first = fast(x)
        norm.weight.mul_(2)  # the same parameter: the fast module's too
        assert torch.equal(fast(x), LayerNorm.forward(fast, x))
        assert not torch.equal(fast(x), first)
    calls = []
    fast.register_forward_hook(lambda module, args, output: calls.append(output.shape))
    with torch.no_grad():
        fast(x)
    assert calls == [x.shape]


def test_layer_norm_leaves_float32_and_gradients_to_the_plain_computation():
    norm = LayerNorm(256)
    fast = accelerate(nn.Sequential(copy.deepcopy(norm)).eval(), trainable=True)[0]
    x = activations(2048).float().requires_grad_(True)
    assert torch.equal(fast(x), norm(x))
    fast(x).sum().backward()
    assert x.grad is not None and fast.weight.grad is not None
    x16 = activations(2048).requires_grad_(True)
    fast.to(torch.bfloat16)(x16).float().sum().backward()
    assert x16.grad is not None


@pytest.mark.parametrize("causal", [False, True])
def test_one_query_attention_matches_the_full_attention_at_that_token(causal):
    torch.manual_seed(4)
    attention = MultiheadSelfAttention(128, 4).eval()
    x = torch.randn(3, 9, 128)
    positions = torch.tensor([0, 8, 4])
    rows = torch.arange(3)
    with torch.no_grad():
        exact = attention(x, causal=causal)[rows, positions]  # float32, every token
        plain = copy.deepcopy(attention).to(torch.bfloat16)
        fast = accelerated(copy.deepcopy(plain))
        assert type(fast) is FastSelfAttention
        x16 = x.bfloat16()
        pooled = fast(x16, causal=causal, query_positions=positions)
        full = fast(x16, causal=causal)[rows, positions]  # the fused QKV, then that token
        plain_pooled = plain(x16, causal=causal, query_positions=positions)
    assert pooled.shape == (3, 1, 128)
    assert_as_close_as_pytorch_bf16(pooled.squeeze(1), exact, plain_pooled.squeeze(1))
    assert_as_close_as_pytorch_bf16(full, exact, plain_pooled.squeeze(1))


@pytest.mark.parametrize("activation", [QuickGELU, torch.nn.GELU])
def test_fused_mlp_computes_the_float32_function_as_closely_as_pytorchs_bf16(activation):
    # QuickGELU runs as silu(1.702 z) / 1.702 with rescaled packed weights: the same function.
    generator = torch.Generator().manual_seed(5)
    mlp = Mlp(64, 256, quick_gelu=activation is QuickGELU)
    with torch.no_grad():
        for layer in (mlp.c_fc, mlp.c_proj):
            layer.weight.copy_(0.1 * torch.randn(layer.weight.shape, generator=generator))
            layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=generator))
    x = torch.randn(4, 9, 64, generator=generator)
    residual = torch.randn(4, 9, 64, generator=generator)
    with torch.no_grad():
        exact = residual + mlp(x)  # float32, plain modules
        plain = copy.deepcopy(mlp).to(torch.bfloat16)
        fast = accelerated(copy.deepcopy(plain))
        assert type(fast) is FusedMlp
        ours = fast(x.bfloat16(), residual.bfloat16())
        without_residual = fast(x.bfloat16())
        pytorch = residual.bfloat16() + plain(x.bfloat16())
    assert ours.dtype == torch.bfloat16
    rows = (4 * 9, 64)
    assert_as_close_as_pytorch_bf16(ours.view(rows), exact.view(rows), pytorch.view(rows))
    assert_as_close_as_pytorch_bf16(
        without_residual.view(rows), (exact - residual).view(rows), plain(x.bfloat16()).view(rows)
    )


@pytest.mark.parametrize("activation", [QuickGELU, torch.nn.GELU])
def test_fused_mlp_calls_hooks_added_to_its_children_after_acceleration(activation):
    mlp = Mlp(64, 256, quick_gelu=activation is QuickGELU).to(torch.bfloat16)
    plain = copy.deepcopy(mlp)
    fast = accelerated(mlp)
    seen = []
    for child in (fast.c_fc, fast.gelu):
        child.register_forward_hook(lambda m, args, output: seen.append(type(m).__name__))
    x = torch.randn(3, 64).bfloat16()
    with torch.no_grad():
        out = fast(x)
        expected = plain(x)
    assert seen == ["PackedLinear", activation.__name__]
    assert F.cosine_similarity(out.float(), expected.float()).min() > 0.999
