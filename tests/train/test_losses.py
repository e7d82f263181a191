"""ClipLoss and SigLipLoss in one process: hand-worked values, a reference, symmetry, gradients."""

import math

import pytest
import torch
from torch.nn import functional as F

from mmcl.train.losses import ClipLoss, SigLipLoss, siglip_init


def log_sum_exp(values: list[float]) -> float:
    return math.log(sum(math.exp(v) for v in values))


def test_clip_loss_on_a_hand_worked_example():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits_per_image = 2 * image @ text.T = [[2, 1.2], [0, 1.6]]; per text is its transpose.
    # Cross entropy of row i with label i: log(sum_j exp(logit_ij)) - logit_ii.
    image_to_text = [log_sum_exp([2.0, 1.2]) - 2.0, log_sum_exp([0.0, 1.6]) - 1.6]
    text_to_image = [log_sum_exp([2.0, 0.0]) - 2.0, log_sum_exp([1.2, 1.6]) - 1.6]
    expected = (sum(image_to_text) / 2 + sum(text_to_image) / 2) / 2
    loss = ClipLoss()(image, text, torch.tensor(2.0))
    assert loss.shape == ()
    assert math.isclose(float(loss), expected, rel_tol=1e-6)


def siglip_reference(image, text, scale: float, bias: float) -> float:
    """Zhai et al. 2023: -1/|B| sum_ij log sigmoid(z_ij (t x_i.y_j + b)), z = +1 iff i == j."""
    n = len(image)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            logit = scale * sum(a * b for a, b in zip(image[i], text[j], strict=True)) + bias
            total += math.log(1.0 / (1.0 + math.exp(-z * logit)))
    return -total / n


def random_features(rows: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(rows, dim, generator=generator, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(rows, dim, generator=generator, dtype=torch.float64), dim=-1)
    return image, text


@pytest.mark.parametrize(("scale", "bias"), [(10.0, -10.0), (3.0, 0.5)])
def test_siglip_loss_matches_the_formula(scale, bias):
    image, text = random_features(5, 4, seed=0)
    loss = SigLipLoss()(image, text, torch.tensor(scale), torch.tensor(bias))
    expected = siglip_reference(image.tolist(), text.tolist(), scale, bias)
    assert math.isclose(float(loss), expected, rel_tol=1e-12)


def test_both_losses_are_symmetric_in_images_and_texts():
    image, text = random_features(6, 8, seed=1)
    scale, bias = torch.tensor(7.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
    clip, siglip = ClipLoss(), SigLipLoss()
    assert torch.allclose(clip(image, text, scale), clip(text, image, scale), rtol=1e-12)
    assert torch.allclose(
        siglip(image, text, scale, bias), siglip(text, image, scale, bias), rtol=1e-12
    )


def test_losses_do_not_depend_on_the_order_of_the_pairs():
    image, text = random_features(6, 8, seed=2)
    order = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    scale, bias = torch.tensor(5.0), torch.tensor(-1.0)
    assert torch.allclose(
        ClipLoss()(image, text, scale), ClipLoss()(image[order], text[order], scale)
    )
    assert torch.allclose(
        SigLipLoss()(image, text, scale, bias),
        SigLipLoss()(image[order], text[order], scale, bias),
    )


def test_gradients_reach_features_scale_and_bias():
    image, text = random_features(4, 8, seed=3)
    image.requires_grad_()
    text.requires_grad_()
    init = siglip_init()
    log_scale = torch.tensor(init.logit_scale, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(init.logit_bias, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda i, t, s, b: SigLipLoss()(i, t, s.exp(), b), (image, text, log_scale, bias)
    )
    assert torch.autograd.gradcheck(
        lambda i, t, s: ClipLoss()(i, t, s.exp()), (image, text, log_scale)
    )
    (
        ClipLoss()(image, text, log_scale.exp()) + SigLipLoss()(image, text, log_scale.exp(), bias)
    ).backward()
    for tensor in (image, text, log_scale, bias):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0


def test_siglip_init_is_the_papers():
    init = siglip_init()
    assert math.isclose(math.exp(init.logit_scale), 10.0)
    assert init.logit_bias == -10.0
    scale, bias = init  # unpacks like a tuple
    assert (scale, bias) == (init.logit_scale, init.logit_bias)
