"""mmcl's decoding attention kernel (`mmcl.nn.kernels.decode_attention`: a few queries a row
over cached keys and values) against attention in float64, and its use by an accelerated
decoder layer (`FastAttention`).

The kernel is built with the AMX kernels, so it runs on CPUs with AMX only; there it must
build, elsewhere those tests are skipped. What the caller gets where the kernel does not
apply (None, and the plain computation) is checked everywhere."""

import pytest
import torch
from torch import nn

from accelerated_copy import plain_and_fast
from bf16_error import assert_as_close_as_pytorch_bf16
from mmcl.nn import KVCache, MultiheadAttention, kernels
from mmcl.nn.attention import attend
from mmcl.nn.fast_blocks import FastAttention

needs_amx = pytest.mark.usefixtures("amx")


def cache_like(batch, heads, keys, dim, dtype, seed):
    """Query, and keys and values as a KV cache holds them: views of a buffer with room for
    more positions (strided rows and heads, the last dimension contiguous)."""
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, heads, 4, dim, generator=generator)
    room = torch.randn(2, batch, heads, keys + 5, dim, generator=generator)
    key, value = room[0, :, :, :keys], room[1, :, :, :keys]
    return query.to(dtype), key.to(dtype), value.to(dtype)


def padding_mask(batch, keys, seed):
    """(batch, 1, 1, keys) True where a key may be attended; row 0 blind when batch > 1."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, 1, 1, keys, generator=generator) > 0.25
    mask[:, ..., -1] = True
    if batch > 1:
        mask[0] = False
    return mask


@needs_amx
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "batch, heads, keys, dim, queries",
    [
        (8, 12, 197, 64, 1),  # BLIP's cross-attention over a 224 px image's tokens
        (8, 12, 9, 64, 1),  # a caption's self-attention cache
        (3, 2, 1, 16, 1),
        (2, 3, 33, 80, 2),
        (1, 1, 300, 256, 3),  # the widest head it takes
    ],
)
@pytest.mark.parametrize("masked", [False, True])
def test_kernel_matches_float64_attention(batch, heads, keys, dim, queries, dtype, masked):
    query, key, value = cache_like(batch, heads, keys, dim, dtype, seed=keys)
    query = query[:, :, :queries]
    mask = padding_mask(batch, keys, seed=dim) if masked else None
    exact = attend(query.double(), key.double(), value.double(), mask)
    ours = kernels.decode_attention(query, key, value, mask)
    assert ours is not None and ours.dtype == dtype
    assert ours.shape == (batch, heads, queries, dim)
    # the heads side by side are a view: what the output projection reads, without a copy
    assert ours.transpose(1, 2).is_contiguous()
    if masked and batch > 1:
        assert not ours[0].any()  # blind row: zeros
    if dtype == torch.float32:
        torch.testing.assert_close(ours.double(), exact, atol=2e-6, rtol=2e-6)
    else:
        seen = slice(1 if masked and batch > 1 else 0, None)  # rows with a key to attend to
        pytorch = attend(query, key, value, mask)
        assert_as_close_as_pytorch_bf16(*(t[seen].flatten(0, 1) for t in (ours, exact, pytorch)))


@needs_amx
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_queries_attend_in_blocks_of_four_each_with_its_own_mask(dtype):
    # 7 queries a row: a block of four and one of three, in one pass over the keys each; a
    # mask per query, with query 5 blind (inside the second block) and query 1 seeing one key
    generator = torch.Generator().manual_seed(11)
    query = torch.randn(3, 2, 7, 32, generator=generator).to(dtype)
    key, value = (torch.randn(3, 2, 45, 32, generator=generator).to(dtype) for _ in range(2))
    mask = torch.rand(3, 1, 7, 45, generator=generator) > 0.4
    mask[:, :, 5] = False
    mask[:, :, 1] = False
    mask[:, :, 1, 44] = True
    ours = kernels.decode_attention(query, key, value, mask)
    exact = attend(query.double(), key.double(), value.double(), mask)
    assert not ours[:, :, 5].any()
    tolerance = 2e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(ours.double(), exact, atol=tolerance, rtol=tolerance)


@needs_amx
def test_large_scores_stay_finite_and_the_result_is_independent_of_the_thread_count():
    query, key, value = cache_like(4, 6, 50, 64, torch.float32, seed=1)
    query = 30 * query  # scores in the hundreds: exp must not overflow
    exact = attend(query.double(), key.double(), value.double())
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.decode_attention(query, key, value)
        torch.set_num_threads(2)
        two = kernels.decode_attention(query, key, value)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    torch.testing.assert_close(one.double(), exact, atol=1e-5, rtol=1e-5)


@needs_amx
def test_the_op_called_directly_names_what_is_wrong_with_its_input():
    op = kernels.decode_attention_op()
    query, key, value = cache_like(2, 2, 5, 16, torch.float32, seed=0)
    with pytest.raises(RuntimeError, match="head dim must be a positive multiple of 16"):
        op(query[..., :8], key[..., :8], value[..., :8], None)
    with pytest.raises(RuntimeError, match="one dtype"):
        op(query, key.bfloat16(), value, None)
    with pytest.raises(RuntimeError, match="mask must be a CPU bool tensor expanded"):
        op(query, key, value, torch.ones(2, 1, 2, 5, dtype=torch.bool))


@needs_amx
def test_inputs_the_kernel_does_not_take_are_left_to_the_caller():
    query, key, value = cache_like(2, 2, 5, 16, torch.float32, seed=0)
    assert kernels.decode_attention(query[..., :8], key[..., :8], value[..., :8]) is None
    assert kernels.decode_attention(query.half(), key.half(), value.half()) is None
    assert kernels.decode_attention(query, key.bfloat16(), value) is None
    across = key.transpose(-1, -2).contiguous().transpose(-1, -2)  # last dim strided
    assert kernels.decode_attention(query, across, value) is None
    assert kernels.decode_attention(query, key, value, torch.ones(2, 5)) is None  # not bool
    unbroadcastable = torch.ones(3, 1, 1, 5, dtype=torch.bool)
    assert kernels.decode_attention(query, key, value, unbroadcastable) is None


def test_without_the_kernel_the_caller_gets_none(fresh_kernels, monkeypatch):
    monkeypatch.setenv("MMCL_NATIVE_KERNELS", "0")
    kernels.build()
    query, key, value = cache_like(2, 2, 5, 16, torch.float32, seed=0)
    assert kernels.decode_attention(query, key, value) is None


def test_a_disagreeing_kernel_is_not_used_and_decoders_compute_the_plain_way(
    fresh_kernels, monkeypatch
):
    monkeypatch.setattr(kernels, "amx_available", lambda: True)
    wrong = lambda query, key, value, mask: torch.zeros_like(query.transpose(1, 2))  # noqa: E731
    monkeypatch.setattr(kernels, "_agrees_with_sdpa", lambda op: True)
    monkeypatch.setattr(kernels, "_agrees_with_linear", lambda op: True)
    ops = {"short_attention": None, "linear": None, "decode_attention": wrong}
    monkeypatch.setattr(kernels, "_compiled", lambda timeout: ops)
    with pytest.warns(RuntimeWarning, match="decode_attention is unavailable.*disagrees"):
        plain, fast = decoder_layer(torch.float32)  # accelerate builds; the check refuses it
    assert kernels.decode_attention_op() is None
    with torch.no_grad():
        for a, b in zip(decode(fast, torch.float32), decode(plain, torch.float32), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def decoder_layer(dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """A 64-wide, 4-head attention layer (head dim 16) with random biases, and an accelerated
    copy in `dtype` (float32 packed too)."""
    return plain_and_fast(MultiheadAttention(64, 4), dtype, pack_fp32=True)


def decode(layer: nn.Module, dtype: torch.dtype) -> list[torch.Tensor]:
    """A three-token prompt (row 1 padded at its first position), then two single tokens,
    through a KV cache; then cross-attention over a context whose mask leaves row 2 blind."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 64, generator=generator).to(dtype)
    context = torch.randn(3, 7, 64, generator=generator).to(dtype)
    padding = torch.ones(3, 1, 1, 5, dtype=torch.bool)
    padding[1, ..., 0] = False
    cache, outputs = KVCache(), []
    cache.reserve(5)
    outputs.append(layer(x[:, :3], mask=padding[..., :3], causal=True, cache=cache))
    for position in (3, 4):
        step = x[:, position : position + 1]
        outputs.append(layer(step, mask=padding[..., : position + 1], causal=True, cache=cache))
    context_mask = torch.ones(3, 1, 1, 7, dtype=torch.bool)
    context_mask[2] = False
    outputs.append(layer(x[:, 4:], context=context, mask=context_mask))
    return [out.float() for out in outputs]


@needs_amx
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_accelerated_decoder_layer_attends_with_the_kernel(dtype, monkeypatch):
    calls = []
    kernel = kernels.decode_attention

    def counted(*args):
        out = kernel(*args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(kernels, "decode_attention", counted)
    plain, fast = decoder_layer(dtype)
    assert type(fast) is FastAttention
    with torch.no_grad():
        wanted = decode(plain, torch.float32)
        got = decode(fast, dtype)
    # the prompt's three queries (with the causal mask merged in), two steps, the context
    assert calls == [True] * 4
    tolerance = 1e-5 if dtype == torch.float32 else 0.05
    for a, b in zip(got, wanted, strict=True):
        torch.testing.assert_close(a, b, atol=tolerance, rtol=tolerance)
    blind = got[-1][2]  # no key allowed: the attention is zeros, the output out_proj's bias
    torch.testing.assert_close(blind, plain.out_proj.bias.expand_as(blind), atol=tolerance, rtol=0)


@needs_amx
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_takes_the_beams_of_an_image_as_one_rows_queries(dtype):
    # Beams sharing their image's keys: (images * beams, heads, 1, dim) queries folded, without
    # a copy, into (images, heads, beams, dim) (strided), against one copy of the keys.
    images, beams, heads, keys, dim = 4, 3, 12, 197, 64
    query, key, value = cache_like(images * beams, heads, keys, dim, dtype, seed=7)
    query = query[:, :, :1]
    folded = (
        query.view(images, beams, heads, 1, dim).transpose(1, 2).reshape(images, heads, beams, dim)
    )
    assert folded.data_ptr() == query.data_ptr()  # a view
    key, value = key[::beams], value[::beams]  # one image's keys for its beams
    mask = padding_mask(images, keys, seed=3)  # image 0 blind
    for m in (None, mask):
        ours = kernels.decode_attention(folded, key, value, m)
        assert ours is not None
        repeated = [t.repeat_interleave(beams, 0).double() for t in (key, value)]
        row_mask = None if m is None else m.repeat_interleave(beams, 0)
        exact = attend(query.double(), *repeated, row_mask)
        ours = ours.transpose(1, 2).reshape(images * beams, 1, heads, dim).transpose(1, 2)
        if dtype == torch.float32:
            torch.testing.assert_close(ours.double(), exact, atol=2e-6, rtol=2e-6)
        else:
            torch.testing.assert_close(ours.double(), exact, atol=2e-2, rtol=2e-2)


@needs_amx
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_accelerated_layer_attends_to_keys_shared_by_beams_with_the_kernel(dtype, monkeypatch):
    calls = []
    kernel = kernels.decode_attention

    def counted(query, key, value, mask):
        out = kernel(query, key, value, mask)
        calls.append((out is not None, query.shape[0], key.shape[0]))
        return out

    monkeypatch.setattr(kernels, "decode_attention", counted)
    plain, fast = decoder_layer(dtype)
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(6, 1, 64, generator=generator)
    context = torch.randn(2, 7, 64, generator=generator)
    context_mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    context_mask[1, ..., 3:] = False
    with torch.no_grad():
        wanted = plain(
            x, context=context.repeat_interleave(3, 0), mask=context_mask.repeat_interleave(3, 0)
        )
        cache = KVCache()
        fast(x[::3].to(dtype), context=context.to(dtype), cache=cache)  # keys once an image
        cache.repeat_rows(3)  # three beams an image
        calls.clear()
        got = fast(x.to(dtype), context=context.to(dtype), mask=context_mask, cache=cache)
    assert calls == [(True, 2, 2)]  # one call: 2 images, each with its 3 beams' queries
    tolerance = 1e-5 if dtype == torch.float32 else 0.05
    torch.testing.assert_close(got.float(), wanted, atol=tolerance, rtol=tolerance)
