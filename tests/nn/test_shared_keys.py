"""Cross-attention over keys and values with fewer rows than the queries: during beam search
the beams of an image share its one copy of the image's keys and values (`KVCache.repeat_rows`),
and query row ``r`` attends to key row ``r // group``.

The reference is the same layer given the context repeated for every row
(`repeat_interleave`), without a cache: the old path, which copied the keys to every beam."""

import pytest
import torch
from torch import nn

from mmcl.nn import KVCache, MultiheadAttention, accelerate
from mmcl.nn.fast_blocks import FastAttention

IMAGES, GROUP, KEYS = 3, 3, 7


def layer(dtype: torch.dtype, fast: bool) -> nn.Module:
    """A 32-wide, 2-head cross-attention (head dim 16, a context 24 wide), random biases;
    accelerated (float32 packed) when `fast`."""
    torch.manual_seed(0)
    attention = MultiheadAttention(32, 2, context_width=24)
    with torch.no_grad():
        for parameter in attention.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    attention = attention.to(dtype).eval().requires_grad_(False)
    if not fast:
        return attention
    fast_layer = accelerate(nn.Sequential(attention).eval(), pack_fp32=True)[0]
    assert type(fast_layer) is FastAttention
    return fast_layer


def masks(queries: int) -> dict[str, torch.Tensor | None]:
    """Masks of every shape a caller may give: per image (image 1 blind, as a padded
    question's keys), per query row, one for all, and a 2-D (queries, keys) one."""
    generator = torch.Generator().manual_seed(queries)
    per_image = torch.rand(IMAGES, 1, 1, KEYS, generator=generator) > 0.3
    per_image[:, ..., 0] = True
    per_image[1] = False
    per_row = torch.rand(IMAGES * GROUP, 1, queries, KEYS, generator=generator) > 0.3
    per_row[..., -1] = True
    everyone = torch.ones(1, 1, 1, KEYS, dtype=torch.bool)
    everyone[..., 2] = False
    square = torch.rand(queries, KEYS, generator=generator) > 0.2
    square[:, 0] = True
    return {"none": None, "image": per_image, "row": per_row, "all": everyone, "2d": square}


def shared_and_repeated(attention: nn.Module, dtype: torch.dtype, queries: int, mask):
    """The layer's output over keys shared by groups of `GROUP` rows, and over the context
    repeated for every row."""
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(IMAGES * GROUP, queries, 32, generator=generator).to(dtype)
    context = torch.randn(IMAGES, KEYS, 24, generator=generator).to(dtype)
    cache = KVCache()
    attention(x[::GROUP], context=context, cache=cache)  # the keys, once per image
    cache.repeat_rows(GROUP)
    key, _ = cache.constant(attention, lambda: None)
    assert key.shape[0] == IMAGES  # not copied to the rows
    shared = attention(x, context=context, mask=mask, cache=cache)
    row_mask = mask
    if mask is not None and mask.dim() == 4 and mask.shape[0] == IMAGES:
        row_mask = mask.repeat_interleave(GROUP, 0)
    repeated = attention(x, context=context.repeat_interleave(GROUP, 0), mask=row_mask)
    return shared.float(), repeated.float()


@pytest.mark.parametrize("queries", [1, 2])
@pytest.mark.parametrize("dtype, fast", [(torch.float32, False), (torch.float32, True)])
def test_rows_sharing_keys_equal_rows_with_their_own_copy(queries, dtype, fast):
    attention = layer(dtype, fast)
    for name, mask in masks(queries).items():
        with torch.no_grad():
            shared, repeated = shared_and_repeated(attention, dtype, queries, mask)
        torch.testing.assert_close(shared, repeated, atol=2e-6, rtol=2e-6, msg=name)
        if name == "image":  # the blind image's rows get zeros: out_proj's bias
            bias = attention.out_proj.bias.float()
            blind = shared[GROUP : 2 * GROUP]
            torch.testing.assert_close(blind, bias.expand_as(blind), msg=name)


@pytest.mark.parametrize("queries", [1, 2])
def test_bf16_rows_sharing_keys_equal_rows_with_their_own_copy_to_bf16_rounding(queries):
    attention = layer(torch.bfloat16, fast=True)
    for name, mask in masks(queries).items():
        with torch.no_grad():
            shared, repeated = shared_and_repeated(attention, torch.bfloat16, queries, mask)
        torch.testing.assert_close(shared, repeated, atol=1e-2, rtol=1e-2, msg=name)


def test_keys_that_no_grouping_of_the_rows_fits_are_refused():
    attention = layer(torch.float32, fast=False)
    context = torch.randn(2, KEYS, 24)
    with pytest.raises(ValueError, match="5 rows of queries cannot share 2 rows of keys"):
        attention(torch.randn(5, 1, 32), context=context)
    cache = KVCache()
    attention(torch.randn(2, 1, 32), context=context, cache=cache)
    cache.repeat_rows(2)
    with pytest.raises(ValueError, match="causal attention needs keys for every row"):
        attention(torch.randn(4, 1, 32), context=context, causal=True, cache=cache)
