"""Masks and attention against hand-worked masks, a brute-force softmax, and torch's own
`nn.MultiheadAttention` on the same weights."""

import doctest
import math

import pytest
import torch
from torch import nn

from mmcl.nn import (
    MultiheadAttention,
    MultiheadSelfAttention,
    attend,
    causal_mask,
    key_padding_mask,
    masks,
    merge_masks,
    prefix_causal_mask,
)
from mmcl.nn import attention as attention_module


def brute_force_attention(query, key, value, allowed):
    """softmax(q k^T / sqrt(d) with -inf where not allowed) v, written out."""
    scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ value


def test_causal_mask_by_hand():
    assert causal_mask(3).tolist() == [
        [True, False, False],
        [True, True, False],
        [True, True, True],
    ]
    # Two new queries after three cached keys: positions 3 and 4 of five.
    assert causal_mask(2, keys=5).tolist() == [
        [True, True, True, True, False],
        [True, True, True, True, True],
    ]


def test_prefix_causal_mask_by_hand():
    assert prefix_causal_mask(2, 4).int().tolist() == [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 0],
        [1, 1, 1, 1],
    ]


def test_key_padding_mask_marks_pad_tokens_and_merges():
    tokens = torch.tensor([[4, 5, 0], [4, 0, 0]])
    padding = key_padding_mask(tokens, pad_id=0)
    assert padding.shape == (2, 1, 1, 3)
    assert padding[:, 0, 0].tolist() == [[True, True, False], [True, False, False]]
    assert torch.equal(padding, key_padding_mask(tokens == 0))
    merged = merge_masks(causal_mask(3), None, padding)
    assert merged[1, 0].int().tolist() == [[1, 0, 0], [1, 0, 0], [1, 0, 0]]
    assert merge_masks(None, None) is None


def test_attend_with_any_boolean_mask_equals_brute_force_softmax():
    torch.manual_seed(0)
    query, key, value = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
    allowed = torch.rand(2, 3, 4, 6) > 0.4
    allowed[..., 0] = True  # every query keeps at least one key
    expected = brute_force_attention(query, key, value, allowed)
    assert torch.allclose(attend(query, key, value, allowed), expected, atol=1e-6)


def test_attend_causal_after_a_cache_equals_brute_force_bottom_right_mask():
    torch.manual_seed(1)
    query, key, value = torch.randn(1, 2, 2, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    allowed = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    expected = brute_force_attention(query, key, value, allowed)
    assert torch.allclose(attend(query, key, value, causal=True), expected, atol=1e-6)


def test_a_query_with_no_allowed_key_gives_zeros_not_nan():
    query, key, value = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    allowed = torch.tensor([[True, False, True], [False, False, False]])
    out = attend(query, key, value, allowed)
    assert torch.equal(out[0, 0, 1], torch.zeros(4))
    assert torch.allclose(out[0, 0, 0], brute_force_attention(query, key, value, allowed)[0, 0, 0])


@pytest.mark.parametrize("context_width", [None, 16, 12])
def test_layout_and_outputs_are_torch_multihead_attention(context_width):
    torch.manual_seed(2)
    ours = MultiheadAttention(16, 4, context_width=context_width)
    kdim = context_width or 16
    reference = nn.MultiheadAttention(16, 4, kdim=kdim, vdim=kdim, batch_first=True)
    reference.load_state_dict(ours.state_dict())  # the same names and shapes
    x = torch.randn(2, 5, 16)
    context = x if context_width is None else torch.randn(2, 7, kdim)
    allowed = torch.rand(2, 1, 5, context.shape[1]) > 0.3
    allowed[..., 0] = True
    # torch's boolean attn_mask means "ignore" where True: the complement of ours.
    expected = reference(
        x, context, context, attn_mask=(~allowed).expand(2, 4, -1, -1).reshape(8, 5, -1)
    )[0]
    given = None if context_width is None else context
    assert torch.allclose(ours(x, context=given, mask=allowed), expected, atol=1e-5)


def test_cross_attention_ignores_padded_keys():
    torch.manual_seed(3)
    attention = MultiheadAttention(8, 2, context_width=6)
    x, context = torch.randn(2, 3, 8), torch.randn(2, 5, 6)
    padding = torch.tensor([[False, False, False, True, True], [False, True, True, True, True]])
    mask = key_padding_mask(padding)
    before = attention(x, context=context, mask=mask)
    changed = context.clone()
    changed[padding] = torch.randn(int(padding.sum()), 6) * 100
    assert torch.equal(attention(x, context=changed, mask=mask), before)
    # ...and the padding is what is ignored: unmasked, the change shows.
    assert not torch.allclose(attention(x, context=changed), attention(x, context=context))


def test_self_attention_keeps_its_behaviour_and_takes_masks():
    torch.manual_seed(4)
    ours = MultiheadSelfAttention(8, 2)
    reference = nn.MultiheadAttention(8, 2, batch_first=True)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 8)
    upper = torch.triu(torch.ones(4, 4, dtype=torch.bool), 1)
    assert torch.allclose(ours(x, causal=True), reference(x, x, x, attn_mask=upper)[0], atol=1e-6)
    padding = torch.tensor([[False, False, False, True], [False, False, True, True]])
    expected = reference(x, x, x, attn_mask=upper, key_padding_mask=padding)[0]
    got = ours(x, causal=True, mask=key_padding_mask(padding))
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("module", [masks, attention_module])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0
