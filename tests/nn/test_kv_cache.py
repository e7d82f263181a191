"""`KVCache.reserve`: keys and values grow in place inside one buffer, and decoding with it
equals the full causal forward (the reference), row drops and beam reorders included."""

import torch

from mmcl.nn import KVCache, MultiheadAttention, Transformer


def test_reserved_cache_grows_in_one_buffer_and_equals_the_full_forward():
    torch.manual_seed(0)
    stack = Transformer(16, layers=2, heads=4, mlp_width=32).eval()
    x = torch.randn(3, 7, 16)
    full = stack(x, causal=True)
    cache = KVCache()
    cache.reserve(7)
    with torch.no_grad():
        pieces = [stack(x[:, :2], causal=True, cache=cache)]  # a prompt of two tokens
        attention = stack.resblocks[0].attn
        buffer = cache._growing[attention][0]
        pieces += [stack(x[:, i : i + 1], causal=True, cache=cache) for i in range(2, 7)]
    assert cache._growing[attention][0] is buffer  # written in place, never copied whole
    assert buffer.shape[2] == 7 and cache.length(attention) == 7
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=0)


def test_reserved_cache_select_keeps_rows_and_room_and_matches_the_full_forward():
    torch.manual_seed(1)
    attention = MultiheadAttention(8, 2).eval()
    x = torch.randn(3, 5, 8)
    cache = KVCache()
    cache.reserve(5)
    with torch.no_grad():
        attention(x[:, :2], causal=True, cache=cache)
        rows = torch.tensor([2, 0, 0])  # drop row 1, repeat row 0 (as beams do)
        cache.select(rows)
        steps = [attention(x[rows, i : i + 1], causal=True, cache=cache) for i in range(2, 5)]
        full = attention(x[rows], causal=True)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 2:], atol=1e-5, rtol=0)
    assert cache.length(attention) == 5


def test_cache_without_room_or_past_it_concatenates_and_autograd_still_flows():
    torch.manual_seed(2)
    attention = MultiheadAttention(8, 2)
    x = torch.randn(2, 4, 8, requires_grad=True)
    cache = KVCache()
    cache.reserve(2)  # less room than the four positions decoded
    out = torch.cat([attention(x[:, i : i + 1], causal=True, cache=cache) for i in range(4)], 1)
    torch.testing.assert_close(out, attention(x, causal=True), atol=1e-5, rtol=0)
    out.sum().backward()  # nothing the backward pass needs was overwritten in place
    assert x.grad is not None and torch.isfinite(x.grad).all()
    cache = KVCache()
    cache.reserve(2)
    with torch.no_grad():  # past the room: the buffer grows
        steps = [attention(x[:, i : i + 1], causal=True, cache=cache) for i in range(4)]
    torch.testing.assert_close(torch.cat(steps, 1), out.detach(), atol=1e-5, rtol=0)
