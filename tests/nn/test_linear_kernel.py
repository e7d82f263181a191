"""mmcl's native bf16 linear kernel (`mmcl.nn.kernels.linear`) against float64 linear algebra
and PyTorch's activations, and its place in accelerated models (`mmcl.nn.accelerate`). Tests that run the kernel
need a CPU with AMX (the `amx` fixture); the rest run everywhere."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mmcl
from mmcl.nn import accelerate, kernels
from mmcl.nn.fast_linear import PackedLinear

ACTIVATIONS = {"none": lambda z: z, "gelu": F.gelu, "swish": F.silu}


def bf16(*shape, scale=1.0, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=generator)).to(torch.bfloat16)


def pytorch_bf16(x, weight, bias, activation, residual):
    """The same layer the plain way in bf16: a rounding after each operation."""
    out = ACTIVATIONS[activation](F.linear(x, weight, bias))
    return out if residual is None else out + residual


@pytest.mark.usefixtures("amx")
def test_the_kernel_builds_on_a_cpu_with_amx():
    assert kernels.linear_op() is not None


@pytest.mark.usefixtures("amx")
@pytest.mark.parametrize("activation", ["none", "gelu", "swish"])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize(
    "rows, in_features, out_features",
    [
        ((1,), 32, 32),  # one tile of everything
        ((37,), 96, 64),  # a partial row block
        ((70,), 64, 32),  # one column pair: threads split the rows
        ((2, 50), 768, 2304),  # ViT-B/32's QKV, batch of 2
        ((3, 77), 512, 2048),  # captions' MLP
        ((33,), 3072, 768),  # a long sum (ViT-B/32's second MLP layer)
    ],
)
def test_kernel_matches_float64_as_closely_as_pytorchs_bf16_path(
    rows, in_features, out_features, activation, with_residual
):
    x = bf16(*rows, in_features, seed=1)
    weight = bf16(out_features, in_features, scale=in_features**-0.5, seed=2)
    bias = bf16(out_features, seed=3)
    residual = bf16(*rows, out_features, seed=4) if with_residual else None
    ours = kernels.linear(x, kernels.pack_linear_weight(weight), bias, activation, residual)
    assert ours is not None and ours.dtype == torch.bfloat16
    assert ours.shape == (*rows, out_features)
    double = [t if t is None else t.double() for t in (x, weight, bias, residual)]
    exact = pytorch_bf16(*double[:3], activation, double[3])
    pytorch_error = (pytorch_bf16(x, weight, bias, activation, residual).double() - exact).abs()
    our_error = (ours.double() - exact).abs()
    # one rounding at the end, where PyTorch rounds after every operation
    assert our_error.max() <= pytorch_error.max() + 1e-6, (our_error.max(), pytorch_error.max())
    assert our_error.mean() <= pytorch_error.mean() + 1e-6


@pytest.mark.usefixtures("amx")
@pytest.mark.parametrize("activation", ["gelu", "swish"])
def test_activations_are_correctly_rounded_bf16_of_the_exact_function(activation):
    # An identity weight makes the sums exact, so the output is the epilogue alone: each value
    # must be the exact activation rounded to bf16, or its neighbour at a near-tie.
    x = torch.linspace(-12, 12, 64 * 257).to(torch.bfloat16).view(257, 64)
    identity = torch.eye(64, dtype=torch.bfloat16)
    ours = kernels.linear(x, kernels.pack_linear_weight(identity), None, activation).double()
    z = x.double()
    if activation == "gelu":  # x Phi(x) by erfc: accurate in the far tail, where F.gelu's
        exact = z * 0.5 * torch.special.erfc(-z / math.sqrt(2))  # 1 + erf(x) cancels to 0
    else:
        exact = F.silu(z)
    rounded = exact.to(torch.bfloat16).double()
    within_an_ulp = (ours - exact).abs() <= rounded.abs() * 2.0**-7
    # The kernel's GELU is accurate relative to bf16's precision down to x = -4 (|GELU| >=
    # 1.3e-4); beyond, where it drops values below 1.1e-7, it is checked absolutely
    tail = (z < -4) if activation == "gelu" else torch.zeros_like(z, dtype=torch.bool)
    assert within_an_ulp[~tail].all()
    assert ((ours - exact).abs()[tail] < 2.2e-7 + rounded.abs()[tail] * 2.0**-8).all()
    assert (ours == rounded)[~tail].double().mean() > 0.99


@pytest.mark.usefixtures("amx")
def test_swish_is_correctly_rounded_over_every_bf16_down_to_float32s_normal_range():
    # Every bf16 in [-88, 88] (at -88, x e^x is near float32's smallest normal) through an
    # identity weight, so that the output is the epilogue alone; judged where input and
    # result are normal numbers (the tile unit and the bf16 conversion flush subnormals). The
    # kernel's error is a few 1e-6 relative, far below bf16's 2^-9: a coarser approximation
    # (a degree-4 exp, or rcp14 without a Newton step) rounds 3 to 5 times as many of these
    # values the wrong way as this allows.
    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    x = every[every.float().abs() <= 88]
    x = torch.cat([x, x.new_zeros(-len(x) % 64)]).view(-1, 64)
    identity = torch.eye(64, dtype=torch.bfloat16)
    ours = kernels.linear(x, kernels.pack_linear_weight(identity), None, "swish").double()
    exact = F.silu(x.double())
    tiny = torch.finfo(torch.bfloat16).tiny
    normal = (x.double().abs() >= tiny) & (exact.abs() >= tiny)
    ours, exact = ours[normal], exact[normal]
    rounded = exact.to(torch.bfloat16).double()
    assert len(exact) > 33_000
    assert ((ours - exact).abs() <= rounded.abs() * 2.0**-7).all()
    assert (ours == rounded).double().mean() > 0.9999


@pytest.mark.usefixtures("amx")
@pytest.mark.parametrize("activation", ["gelu", "swish"])
def test_activations_propagate_nan_and_keep_their_limits_at_infinity(activation):
    # The values come in through the bias (the sums are 0): inf times a weight of 0 would be
    # NaN before the epilogue. PyTorch's x * sigmoid(x) gives NaN at -inf; the limit is 0.
    special = [float("nan"), float("inf"), 1e30, 100.0, float("-inf"), -1e30, -100.0, -89.0]
    bias = torch.tensor(special + [0.0] * 24, dtype=torch.bfloat16)
    packed = kernels.pack_linear_weight(bf16(32, 32))
    out = kernels.linear(torch.zeros(1, 32, dtype=torch.bfloat16), packed, bias, activation)
    out = out[0, : len(special)].double()
    assert out[0].isnan()
    assert out[1] == float("inf")
    assert torch.equal(out[2:4], bias[2:4].double())  # x itself, to bf16
    assert (out[4:].abs() < 1e-36).all()


@pytest.mark.usefixtures("amx")
def test_result_is_independent_of_the_thread_count():
    x, weight, bias = bf16(200, 256, seed=5), bf16(96, 256, scale=0.06, seed=6), bf16(96, seed=7)
    packed = kernels.pack_linear_weight(weight)
    threads = torch.get_num_threads()
    many = kernels.linear(x, packed, bias, "gelu")
    try:
        torch.set_num_threads(1)
        one = kernels.linear(x, packed, bias, "gelu")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)  # each output block is summed by one thread, in one order


@pytest.mark.usefixtures("amx")
def test_empty_inputs_give_empty_results():
    packed = kernels.pack_linear_weight(bf16(64, 32))
    assert kernels.linear(bf16(0, 32), packed).shape == (0, 64)
    assert kernels.linear(bf16(3, 0, 32), packed).shape == (3, 0, 64)


@pytest.mark.usefixtures("amx")
def test_the_op_called_directly_names_what_is_wrong_with_its_input():
    op = kernels.linear_op()
    x, packed = bf16(4, 64), kernels.pack_linear_weight(bf16(32, 64))
    with pytest.raises(RuntimeError, match="contiguous CPU bf16"):
        op(x.float(), packed.tiles, None, None, "none")
    with pytest.raises(RuntimeError, match="must come from pack_linear_weight"):
        op(x, bf16(32, 64), None, None, "none")
    with pytest.raises(RuntimeError, match="x has 32 input features, the packed weight 64"):
        op(bf16(4, 32), packed.tiles, None, None, "none")
    with pytest.raises(RuntimeError, match="bias must be a CPU vector of 32"):
        op(x, packed.tiles, bf16(31), None, "none")
    with pytest.raises(RuntimeError, match="residual must be .* shaped like the output"):
        op(x, packed.tiles, None, bf16(4, 31), "none")
    with pytest.raises(RuntimeError, match="activation must be 'none', 'gelu' or 'swish'"):
        op(x, packed.tiles, None, None, "relu")


def test_packing_is_a_lossless_relayout():
    weight = bf16(96, 64, seed=8)
    packed = kernels.pack_linear_weight(weight)
    assert packed.tiles.shape == (3, 2, 2, 16, 16, 2)
    # tiles[p, s, t, r, c, e] = weight[32p + 16t + c, 32s + 2r + e]
    assert packed.tiles[2, 1, 1, 5, 3, 1] == weight[32 * 2 + 16 + 3, 32 + 2 * 5 + 1]
    assert torch.equal(kernels.unpack_linear_weight(packed), weight)


def test_packing_refuses_weights_it_cannot_tile():
    with pytest.raises(ValueError, match=r"multiples of 32, got torch.bfloat16 \(48, 64\)"):
        kernels.pack_linear_weight(bf16(48, 64))
    with pytest.raises(ValueError, match="got torch.float32"):
        kernels.pack_linear_weight(torch.zeros(32, 32))
    assert not kernels.linear_fits(bf16(32, 588))  # ViT-L/14's patch embedding: oneDNN's


def test_inputs_the_kernel_does_not_take_are_left_to_the_caller(fresh_kernels, monkeypatch):
    monkeypatch.setattr(kernels, "_compiled", lambda *a: pytest.fail("must not build"))
    x, packed = bf16(4, 64), kernels.pack_linear_weight(bf16(32, 64))
    assert kernels.linear(x.float(), packed) is None  # float32
    assert kernels.linear(bf16(4, 32), packed) is None  # the wrong width
    assert kernels.linear(x, packed, bias=bf16(31)) is None
    assert kernels.linear(x, packed, residual=bf16(4, 32).float()) is None
    with pytest.raises(ValueError, match="activation must be"):
        kernels.linear(x, packed, activation="tanh")


def test_a_disagreeing_linear_kernel_is_not_used_and_models_still_run(fresh_kernels, monkeypatch):
    monkeypatch.setattr(kernels, "amx_available", lambda: True)
    zeros = lambda x, tiles, *rest: x.new_zeros(*x.shape[:-1], 32 * len(tiles))  # noqa: E731
    monkeypatch.setattr(kernels, "_agrees_with_sdpa", lambda op: True)
    monkeypatch.setattr(kernels, "_agrees_with_attend", lambda op: True)
    ops = {"short_attention": None, "linear": zeros, "decode_attention": None}
    monkeypatch.setattr(kernels, "_compiled", lambda timeout: ops)
    plain = mmcl.create_model("tiny-vit", precision="bf16").requires_grad_(False)
    model = mmcl.create_model("tiny-vit", precision="bf16").requires_grad_(False)
    model.load_state_dict(plain.state_dict())
    with pytest.warns(RuntimeWarning, match="linear is unavailable.*disagrees"):
        accelerate(model)
    assert kernels.linear_op() is None
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast = model.encode_image(images, normalize=True).float()  # oneDNN's linear
        reference = plain.encode_image(images, normalize=True).float()
    assert F.cosine_similarity(fast, reference).min() > 0.999


@pytest.mark.usefixtures("amx")
@pytest.mark.parametrize("quick_gelu", [False, True])
def test_accelerated_towers_run_their_linear_layers_on_the_kernel(quick_gelu, monkeypatch):
    plain = mmcl.create_model("tiny-vit", precision="bf16", quick_gelu=quick_gelu)
    plain.requires_grad_(False)
    model = accelerate(copy.deepcopy(plain))
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = mmcl.tokenize(["a photo of a cat", "", "two blue squares above a red circle"])
    calls = []
    op = kernels.linear_op()
    monkeypatch.setitem(kernels._ops, "linear", lambda *a: calls.append(a[-1]) or op(*a))
    with torch.no_grad():
        fast = [model.encode_image(images).float(), model.encode_text(texts).float()]
        reference = [plain.encode_image(images).float(), plain.encode_text(texts).float()]
    # Per tower: the first block's QKV, output projection and two MLP layers; the last
    # block's query (for the token read) and keys and values apart, then the same three; and
    # the image tower's patch embedding.
    assert len(calls) == 2 * (4 + 5) + 1
    assert calls.count("swish" if quick_gelu else "gelu") == 4
    for ours, theirs in zip(fast, reference, strict=True):
        assert F.cosine_similarity(ours, theirs).min() > 0.999


def packed_layer(in_features: int, out_features: int) -> PackedLinear:
    layer = nn.Linear(in_features, out_features).to(torch.bfloat16).requires_grad_(False)
    return accelerate(nn.Sequential(layer).eval())[0]


@pytest.mark.usefixtures("amx")
def test_a_layer_updated_in_place_is_repacked():
    layer = packed_layer(64, 32)
    x = bf16(5, 64)
    with torch.no_grad():
        before = layer(x)
        assert isinstance(layer.packed(), kernels.PackedLinearWeight)  # the kernel's layout
        layer.weight.mul_(2)
        after = layer(x)
        expected = F.linear(x, layer.weight, layer.bias)
    assert not torch.equal(before, after)
    assert (after.float() - expected.float()).abs().max() <= 0.05 * expected.abs().max()


@pytest.mark.usefixtures("amx")
def test_an_input_of_the_wrong_width_gets_pytorchs_own_error():
    layer = packed_layer(64, 32)
    with torch.no_grad():
        layer(bf16(5, 64))  # packed for the kernel
        with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
            layer(bf16(5, 48))
