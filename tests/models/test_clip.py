"""CLIP assembly: outputs equal open_clip's on the same weights; API behaviour."""

import math

import pytest
import torch

import mmcl
from conftest import max_abs_diff, open_clip_reference
from mmcl.io.checkpoints.openai import from_openai_layout
from mmcl.models import CLIP, CLIPConfig, get_model_config


def mmcl_copy(reference: torch.nn.Module, name: str) -> CLIP:
    model = CLIP(CLIPConfig.from_dict(get_model_config(name))).eval()
    model.load_state_dict(from_openai_layout(reference.state_dict()))
    return model


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_encoders_match_open_clip(name, captions):
    reference = open_clip_reference(name)
    model = mmcl_copy(reference, name)
    size = model.image_size
    images = torch.randn(3, 3, size, size)
    tokens = mmcl.tokenize(captions)
    with torch.no_grad():
        assert max_abs_diff(model.encode_image(images), reference.encode_image(images)) < 1e-5
        assert max_abs_diff(model.encode_text(tokens), reference.encode_text(tokens)) < 1e-5


def test_forward_returns_normalised_features_and_clamped_scale():
    model = mmcl.create_model("tiny-vit")
    images, tokens = torch.randn(2, 3, 32, 32), mmcl.tokenize(["a", "b"])
    with torch.no_grad():
        image_features, text_features, scale = model(images, tokens)
        assert torch.allclose(image_features.norm(dim=-1), torch.ones(2), atol=1e-6)
        assert torch.allclose(text_features.norm(dim=-1), torch.ones(2), atol=1e-6)
        assert math.isclose(float(scale), 1 / 0.07, rel_tol=1e-5)
        model.logit_scale.fill_(10.0)  # exp(10) is far above the cap
        assert float(model(images, tokens)[2]) == 100.0
        as_dict = model(images, tokens, output_dict=True)
    assert set(as_dict) == {"image_features", "text_features", "logit_scale"}
    assert torch.equal(as_dict["image_features"], image_features)


def test_text_encoding_ignores_padding_beyond_the_longest_caption():
    # Padding-free encoding must equal the full 77-token computation of the reference.
    reference = open_clip_reference("tiny-vit")
    model = mmcl_copy(reference, "tiny-vit")
    tokens = mmcl.tokenize(["short", "a somewhat longer caption with more words in it"])
    with torch.no_grad():
        ours = model.encode_text(tokens)
        theirs = reference.encode_text(tokens)
    assert max_abs_diff(ours, theirs) < 1e-5


def test_bf16_model_accepts_float32_images():
    model = mmcl.create_model("tiny-vit", precision="bf16")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    with torch.no_grad():
        features = model.encode_image(torch.randn(2, 3, 32, 32), normalize=True)
    assert features.dtype == torch.bfloat16
    assert torch.allclose(features.float().norm(dim=-1), torch.ones(2), atol=1e-2)


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="precision must be one of"):
        mmcl.create_model("tiny-vit", precision="int4")


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_gradient_checkpointing_gives_the_same_gradients(name):
    torch.manual_seed(0)
    model = mmcl.create_model(name).train()
    size = model.image_size
    images, tokens = torch.randn(2, 3, size, size), mmcl.tokenize(["a b c", "d e"])

    def gradients():
        model.zero_grad()
        image_features, text_features, scale = model(images, tokens)
        (scale * image_features @ text_features.T).sum().backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.set_grad_checkpointing(True)
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys()
    for key in plain:
        assert max_abs_diff(plain[key], checkpointed[key]) < 1e-6, key


def test_init_follows_clip_reference_scheme():
    model = mmcl.create_model("tiny-vit")
    assert math.isclose(model.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    assert 0.015 < model.text.token_embedding.weight.std().item() < 0.025
    assert 0.007 < model.text.positional_embedding.std().item() < 0.013
