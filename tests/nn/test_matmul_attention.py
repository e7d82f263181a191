"""Training in bf16 on a CPU: `attend` computes attention through matmuls (PyTorch's fused CPU
kernel is slow to differentiate there); everywhere else it keeps the fused kernel.

The reference is the same attention in float64 on the same (bf16) inputs, outputs and
gradients; the tolerance is a few bf16 roundings (the scores, the probabilities and the
output are each rounded once, u/2 = 2^-9 relative), not one machine's figures.
"""

import pytest
import torch

from bf16_error import UNIT_ROUNDOFF, relative_error
from mmcl.nn import attention
from mmcl.nn.attention import MATMUL_ATTENTION_MAX_KEYS, attend
from mmcl.nn.masks import causal_mask


def inputs(rows=3, heads=2, queries=5, keys=5, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = ((rows, heads, queries, dim), (rows, heads, keys, dim), (rows, heads, keys, dim))
    return [
        torch.randn(s, generator=generator).to(torch.bfloat16).requires_grad_(True) for s in shapes
    ]


def float64_attention(query, key, value, mask):
    scores = query.double() @ key.double().transpose(-1, -2) / query.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probabilities = torch.softmax(scores, dim=-1)
    if mask is not None:  # rows with no key allowed: zeros, as attend gives
        probabilities = probabilities.nan_to_num(0.0)
    return probabilities @ value.double()


def padding_mask(rows=3, keys=5):
    mask = torch.ones(rows, 1, 1, keys, dtype=torch.bool)
    mask[1, ..., :2] = False  # row 1: its first two keys are padding
    mask[2] = False  # row 2: no key at all (a fully padded row)
    return mask


@pytest.mark.parametrize("case", ["plain", "causal", "padding"])
def test_bf16_training_attention_matches_float64_with_its_gradients(case, monkeypatch):
    used = []
    real = attention._matmul_attention
    monkeypatch.setattr(attention, "_matmul_attention", lambda *a: used.append(1) or real(*a))
    query, key, value = inputs()
    mask = {"plain": None, "causal": None, "padding": padding_mask()}[case]
    out = attend(query, key, value, mask=mask, causal=case == "causal")
    assert used, "bf16 training on a CPU should take the matmul path"
    full = causal_mask(5, 5) if case == "causal" else mask
    wanted = float64_attention(query, key, value, full)
    assert relative_error(out[:2], wanted[:2]) <= 4 * UNIT_ROUNDOFF
    if case == "padding":
        assert torch.equal(out[2], torch.zeros_like(out[2]))

    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    gradients = torch.autograd.grad((out.float() * weights).sum(), (query, key, value))
    references = [t.detach().double().requires_grad_(True) for t in (query, key, value)]
    wanted = torch.autograd.grad(
        (float64_attention(*references, full) * weights.double()).sum(), references
    )
    for name, got, expected in zip("qkv", gradients, wanted, strict=True):
        assert torch.isfinite(got).all(), name
        # Row 2 has no key: nothing reaches its inputs, in both computations.
        assert relative_error(got[:2], expected[:2]) <= 8 * UNIT_ROUNDOFF, name


def test_inference_float32_and_long_contexts_keep_the_fused_kernel(monkeypatch):
    def refuse(*_):
        raise AssertionError("the matmul path is for bf16 training up to its key count")

    monkeypatch.setattr(attention, "_matmul_attention", refuse)
    query, key, value = inputs()
    with torch.no_grad():
        attend(query, key, value)  # inference
    attend(*(t.detach().float().requires_grad_(True) for t in (query, key, value)))  # float32
    long = inputs(rows=1, heads=1, queries=2, keys=MATMUL_ATTENTION_MAX_KEYS + 1, dim=8)
    attend(*long)
