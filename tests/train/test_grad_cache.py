"""Gradient caching gives the gradients of the plain full-batch step, chunk size regardless."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mmcl
from mmcl.train.grad_cache import grad_cache_step
from mmcl.train.losses import ClipLoss, SigLipLoss, siglip_init

BATCH = 16


def make_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = mmcl.create_model(name)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # non-trivial statistics and affine weights
            nn.init.normal_(module.weight, 1.0, 0.2)
            nn.init.normal_(module.bias, 0.0, 0.2)
            module.running_mean.normal_(0.0, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    # Eval mode: BatchNorm then uses its running statistics, so a chunk's features do not
    # depend on the other examples in the chunk, and chunked equals full batch exactly.
    return model.eval()


def make_batch(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    size = model.image_size
    images = torch.randn(BATCH, 3, size, size, generator=generator)
    tokens = mmcl.tokenize([f"caption number {i} of {'a b c ' * i}" for i in range(BATCH)])
    return images, tokens


def make_loss(name: str):
    """A loss_fn(image, text, scale) and the extra parameters it owns."""
    if name == "clip":
        return ClipLoss(), []
    logit_bias = nn.Parameter(torch.tensor(siglip_init().logit_bias + 7.0))  # away from init
    return (lambda image, text, scale: SigLipLoss()(image, text, scale, logit_bias)), [logit_bias]


def plain_step(model, images, tokens, loss_fn) -> torch.Tensor:
    image_features, text_features, logit_scale = model(images, tokens)
    loss = loss_fn(image_features, text_features, logit_scale)
    loss.backward()
    return loss.detach()


def chunked_step(model, images, tokens, loss_fn, chunk_size) -> torch.Tensor:
    """The graph-keeping computation gradient caching must reproduce, for layers that make
    chunked differ from full batch (dropout's RNG draws, train-mode BatchNorm)."""
    image_features, text_features = [], []
    for image_chunk, token_chunk in zip(
        images.split(chunk_size), tokens.split(chunk_size), strict=True
    ):
        image_features.append(model.encode_image(image_chunk, normalize=True))
        text_features.append(model.encode_text(token_chunk, normalize=True))
    logit_scale = model.logit_scale.exp().clamp(max=100)
    loss = loss_fn(torch.cat(image_features), torch.cat(text_features), logit_scale)
    loss.backward()
    return loss.detach()


def take_grads(parameters: list[nn.Parameter]) -> list[torch.Tensor | None]:
    grads = [p.grad for p in parameters]
    for p in parameters:
        p.grad = None
    return grads


def assert_same_grads(actual, expected, tolerance=1e-5):
    """Max abs difference <= tolerance, relative to the tensor's scale where that exceeds 1:
    SigLIP's summed pairs give float32 gradients of ~10, whose rounding is ~1e-6 each."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert (a is None) == (e is None)
        if e is not None:
            error, scale = float((a - e).abs().max()), max(1.0, float(e.abs().max()))
            assert error <= tolerance * scale, (error, scale)


@pytest.mark.parametrize("chunk_size", [4, 5])
@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
@pytest.mark.parametrize("model_name", ["tiny-vit", "tiny-rn"])
def test_gradients_and_loss_equal_the_plain_step(model_name, loss_name, chunk_size):
    model = make_model(model_name)
    images, tokens = make_batch(model)
    loss_fn, loss_parameters = make_loss(loss_name)
    parameters = list(model.parameters()) + loss_parameters

    expected_loss = plain_step(model, images, tokens, loss_fn)
    expected_grads = take_grads(parameters)
    loss = grad_cache_step(model, images, tokens, loss_fn, chunk_size)
    grads = take_grads(parameters)

    assert not loss.requires_grad
    assert math.isclose(float(loss), float(expected_loss), rel_tol=1e-6)
    assert model.logit_scale in parameters and grads[parameters.index(model.logit_scale)] != 0
    assert_same_grads(grads, expected_grads)


class DropoutDualEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Linear(12, 32), nn.Dropout(0.5), nn.Linear(32, 8))
        self.text = nn.Sequential(nn.Dropout(0.3), nn.Linear(10, 8))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def encode_image(self, x, normalize=False):
        return F.normalize(self.image(x), dim=-1) if normalize else self.image(x)

    def encode_text(self, x, normalize=False):
        return F.normalize(self.text(x), dim=-1) if normalize else self.text(x)


def test_dropout_masks_are_replayed_and_the_rng_ends_as_after_one_pass():
    torch.manual_seed(0)
    model = DropoutDualEncoder().train()
    images, texts = torch.randn(BATCH, 12), torch.randn(BATCH, 10)
    parameters = list(model.parameters())

    torch.manual_seed(123)
    expected_loss = chunked_step(model, images, texts, ClipLoss(), chunk_size=5)
    expected_rng = torch.get_rng_state()
    expected_grads = take_grads(parameters)

    torch.manual_seed(123)
    loss = grad_cache_step(model, images, texts, ClipLoss(), chunk_size=5)
    assert torch.equal(torch.get_rng_state(), expected_rng)
    assert math.isclose(float(loss), float(expected_loss), rel_tol=1e-6)
    assert_same_grads(take_grads(parameters), expected_grads, tolerance=1e-6)


def test_train_mode_batchnorm_statistics_are_updated_once():
    model = make_model("tiny-rn").train()
    images, tokens = make_batch(model)
    parameters = list(model.parameters())
    initial_buffers = [b.clone() for b in model.buffers()]

    expected_loss = chunked_step(model, images, tokens, ClipLoss(), chunk_size=8)
    expected_buffers = [b.clone() for b in model.buffers()]
    expected_grads = take_grads(parameters)

    with torch.no_grad():
        for buffer, initial in zip(model.buffers(), initial_buffers, strict=True):
            buffer.copy_(initial)
    loss = grad_cache_step(model, images, tokens, ClipLoss(), chunk_size=8)

    assert math.isclose(float(loss), float(expected_loss), rel_tol=1e-6)
    for buffer, expected in zip(model.buffers(), expected_buffers, strict=True):
        assert torch.allclose(buffer.float(), expected.float(), atol=1e-6)
    assert_same_grads(take_grads(parameters), expected_grads)


def test_rejects_bad_arguments():
    model = DropoutDualEncoder()
    with pytest.raises(ValueError, match="chunk_size"):
        grad_cache_step(model, torch.randn(4, 12), torch.randn(4, 10), ClipLoss(), 0)
    with pytest.raises(ValueError, match="4 images but 3 captions"):
        grad_cache_step(model, torch.randn(4, 12), torch.randn(3, 10), ClipLoss(), 2)
