"""`mmcl.nn.accelerate`: a finished model's modules swapped for fast ones, for inference.

Promises checked here:
- the accelerated model computes the plain model's function: in bf16, cosine >= 0.999 to the
  plain bf16 model, and at most twice as far from float32 as PyTorch's own bf16 computation;
- `state_dict` keys and values are unchanged, and weights loaded afterwards take effect;
- modules carrying hooks, wrapped layers (a peft-style LoRA wrapper) and a user's subclasses are
  left alone, listed in `model.acceleration_skipped` and in one warning, and their hooks fire;
- a model in training mode, or whose weights require gradients, is refused with a clear error
  and left unchanged; ``trainable=True`` accelerates it, and it then trains exactly as before;
- ``model.train()`` after acceleration raises and leaves the whole model in eval mode;
- accelerating twice changes nothing; deep copies and pickles compute the same.
"""

import copy
import doctest
import io
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mmcl
from bf16_error import assert_as_close_as_pytorch_bf16
from mmcl.nn import accelerate, acceleration, is_accelerated
from mmcl.nn.fast_blocks import FastResidualAttentionBlock, FastSelfAttention, FoldedConv2d
from mmcl.nn.fast_linear import FusedMlp, PackedLinear, PatchConv2d

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def randomise_batchnorms(model: nn.Module) -> None:
    # CLIP's init zeroes bn3 and leaves the statistics at 0/1: nothing to fold. Make them real.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                count = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(count, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(count, generator=generator))
                module.weight.copy_(0.2 + 0.3 * torch.rand(count, generator=generator))
                module.bias.copy_(0.05 * torch.randn(count, generator=generator))


def plain_model(name: str = "tiny-vit", precision: str = "bf16", **overrides) -> nn.Module:
    torch.manual_seed(0)
    model = mmcl.create_model(name, **overrides)
    randomise_batchnorms(model)
    return model.to(DTYPES[precision]).requires_grad_(False)


def inputs(model, count: int = 3):
    size = model.image_size
    images = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(2))
    captions = ["a photo of a cat", "", "a red circle above two blue squares on grey"]
    return images, mmcl.tokenize(captions[:count])


def encode(model, images, tokens) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model.encode_image(images).float(), model.encode_text(tokens).float()]


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float(), b.float()).min())


@pytest.mark.parametrize(
    "name, overrides",
    [("tiny-vit", {}), ("tiny-vit", {"quick_gelu": True}), ("tiny-rn", {})],
)
def test_accelerated_bf16_model_computes_the_plain_models_function(name, overrides):
    reference = plain_model(name, "fp32", **overrides)
    plain = copy.deepcopy(reference).to(torch.bfloat16)
    fast = accelerate(copy.deepcopy(plain))
    assert is_accelerated(fast) and not is_accelerated(plain)
    images, tokens = inputs(reference)
    for ours, theirs, exact in zip(
        encode(fast, images, tokens),
        encode(plain, images, tokens),
        encode(reference, images, tokens),
        strict=True,
    ):
        assert min_cosine(ours, theirs) >= 0.999
        assert_as_close_as_pytorch_bf16(ours, exact, theirs)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_state_dict_is_unchanged_and_weights_loaded_later_take_effect(name):
    model = plain_model(name)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    fast = accelerate(model)
    after = fast.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[key], value) for key, value in before.items())
    images, tokens = inputs(fast)
    encode(fast, images, tokens)  # packs and folds the current weights
    other = plain_model(name)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.mul_(-0.5)
        for module in other.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.mul_(2.0)
    fast.load_state_dict(other.state_dict())  # in place: the same tensors, new values
    expected = encode(accelerate(other), images, tokens)
    for got, wanted in zip(encode(fast, images, tokens), expected, strict=True):
        assert torch.equal(got, wanted)


def test_hooked_modules_are_left_alone_reported_and_their_hooks_fire():
    model = plain_model("tiny-vit")
    calls = []
    hooked_linear = model.visual.transformer.resblocks[0].mlp.c_fc
    hooked_block = model.text.transformer.resblocks[1]
    for module in (hooked_linear, hooked_block):
        module.register_forward_hook(lambda m, args, out: calls.append(type(m).__name__))
    with pytest.warns(UserWarning, match="left 2 module.*has hooks") as caught:
        accelerate(model)
    assert len(caught) == 1
    assert model.acceleration_skipped == {
        "visual.transformer.resblocks.0.mlp.c_fc": "has hooks",
        "text.transformer.resblocks.1": "has hooks",
    }
    assert model.visual.transformer.resblocks[0].mlp.c_fc is hooked_linear
    assert type(hooked_linear) is nn.Linear
    assert model.text.transformer.resblocks[1] is hooked_block
    # Around them, the rest is accelerated, inside the hooked block too.
    assert type(hooked_block.attn) is FastSelfAttention
    assert type(model.visual.transformer.resblocks[0].attn) is FastSelfAttention
    assert type(model.visual.transformer.resblocks[0].mlp.c_proj) is PackedLinear
    assert type(model.text.transformer.resblocks[0]) is FastResidualAttentionBlock
    images, tokens = inputs(model)
    encode(model, images, tokens)
    assert sorted(calls) == ["Linear", "ResidualAttentionBlock"]


def test_hooked_batchnorm_keeps_its_chain_plain_and_the_others_fold():
    model = plain_model("tiny-rn")
    seen = []
    norm = model.visual.layer1[0].bn2
    norm.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    with pytest.warns(UserWarning, match="layer1.0.bn2: has hooks"):
        accelerate(model)
    unit = model.visual.layer1[0]
    assert type(unit.conv2) is nn.Conv2d and unit.bn2 is norm and type(unit.act2) is nn.ReLU
    assert type(unit.conv1) is FoldedConv2d and type(unit.conv3) is FoldedConv2d
    assert type(model.visual.conv1) is FoldedConv2d
    encode(model, *inputs(model))
    assert seen == [torch.bfloat16]


class LoraLinear(nn.Module):
    """A LoRA wrapper as peft builds one: the base layer inside, a low-rank update beside."""

    def __init__(self, base: nn.Linear, rank: int = 4):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.normal_(self.lora_B.weight, std=0.02)

    def forward(self, x):
        return self.base_layer(x) + self.lora_B(self.lora_A(x))


class ScaledLinear(nn.Linear):
    """A user's subclass with a forward of its own."""

    def forward(self, x):
        return 0.5 * super().forward(x)


def test_wrapped_and_subclassed_layers_are_left_alone_with_their_submodules():
    model = plain_model("tiny-vit", "fp32")
    first, second = model.visual.transformer.resblocks
    first.attn.out_proj = LoraLinear(first.attn.out_proj)
    second.mlp.c_proj = ScaledLinear(second.mlp.c_proj.in_features, 128)
    model = model.to(torch.bfloat16).requires_grad_(False).eval()
    plain = copy.deepcopy(model)
    with pytest.warns(UserWarning, match="LoraLinear is not a class accelerate knows"):
        accelerate(model)
    assert set(model.acceleration_skipped) == {
        "visual.transformer.resblocks.0.attn.out_proj",
        "visual.transformer.resblocks.1.mlp.c_proj",
    }
    assert type(first.attn.out_proj.base_layer) is nn.Linear  # not entered
    assert type(second.mlp.c_proj) is ScaledLinear
    assert type(second.mlp) is not FusedMlp  # it would not call the subclass
    assert type(second.attn) is FastSelfAttention
    images, tokens = inputs(model)
    for ours, theirs in zip(
        encode(model, images, tokens), encode(plain, images, tokens), strict=True
    ):
        assert min_cosine(ours, theirs) >= 0.999


def test_models_that_train_or_need_gradients_are_refused_and_left_unchanged():
    model = mmcl.create_model("tiny-vit", precision="bf16")  # weights require gradients
    with pytest.raises(ValueError, match=r"require gradients \(e.g. .*\).*requires_grad_\(False\)"):
        accelerate(model)
    model.requires_grad_(False).visual.train()
    with pytest.raises(ValueError, match=r"training mode \(visual\).*model.eval\(\)"):
        accelerate(model)
    assert not is_accelerated(model)


def test_train_after_acceleration_raises_and_leaves_the_model_in_eval_mode():
    model = accelerate(plain_model("tiny-rn"))
    images, tokens = inputs(model)
    before = encode(model, images, tokens)
    for part in (model, model.visual, model.text.transformer):
        with pytest.raises(RuntimeError, match="accelerated for inference.*trainable=True"):
            part.train()
        assert not any(module.training for module in model.modules())
    model.eval()  # eval mode is always fine
    for got, wanted in zip(encode(model, images, tokens), before, strict=True):
        assert torch.equal(got, wanted)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_trainable_acceleration_trains_exactly_as_the_plain_model(name):
    # With trainable=True the fast modules compute the plain way while training or recording
    # gradients: the same operations, so in float32 the same bits (BatchNorm statistics too).
    plain = plain_model(name, "fp32").requires_grad_(True).train()
    fast = accelerate(copy.deepcopy(plain), trainable=True)
    assert is_accelerated(fast)
    images, tokens = inputs(plain)
    results = []
    for model in (plain, fast):
        model.zero_grad()
        image_features, text_features, scale = model(images, tokens)
        (scale * image_features @ text_features.T).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        results.append((image_features, text_features, grads, model.state_dict()))
    (plain_image, plain_text, plain_grads, plain_state) = results[0]
    (fast_image, fast_text, fast_grads, fast_state) = results[1]
    assert torch.equal(plain_image, fast_image) and torch.equal(plain_text, fast_text)
    assert all(torch.equal(plain_grads[n], fast_grads[n]) for n in plain_grads)
    assert all(torch.equal(plain_state[k], fast_state[k]) for k in plain_state)  # running stats


def test_accelerating_twice_changes_nothing_and_copies_compute_the_same():
    model = accelerate(plain_model("tiny-rn"))
    modules = list(model.modules())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert accelerate(model) is model
    assert list(model.modules()) == modules
    images, tokens = inputs(model)
    expected = encode(model, images, tokens)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for copied in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        for got, wanted in zip(encode(copied, images, tokens), expected, strict=True):
            assert torch.equal(got, wanted)
        with pytest.raises(RuntimeError, match="accelerated for inference"):
            copied.train()


def test_patch_embedding_matmul_equals_the_convolution_even_with_leftover_pixels():
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 64, kernel_size=8, stride=8, bias=False).requires_grad_(False)
    images = torch.randn(2, 3, 35, 37)  # 4x4 whole 8-pixel patches and a few pixels more
    exact = conv(images)
    plain = conv.to(torch.bfloat16)(images.bfloat16())
    fast = accelerate(nn.Sequential(conv).eval())[0]
    assert type(fast) is PatchConv2d
    ours = fast(images.bfloat16())
    assert ours.shape == exact.shape == (2, 64, 4, 4)

    def pixels(t):  # one row per output pixel
        return t.permute(0, 2, 3, 1).flatten(0, 2)

    assert_as_close_as_pytorch_bf16(pixels(ours), pixels(exact), pixels(plain))


def test_the_documented_example_runs():
    assert doctest.testmod(acceleration).failed == 0
