"""What open_clip's users write: the tokenizer and transforms by model name, and
`create_model_and_transforms`, checked against open_clip 3.3.0's own functions."""

from __future__ import annotations

import open_clip
import pytest
import torch
from PIL import Image

import mmcl

CAPTIONS = ["a photo of a cat", "A red circle above two blue squares!", ""]


@pytest.fixture
def photo() -> Image.Image:
    pixels = torch.randint(0, 256, (300, 400, 3), generator=torch.Generator().manual_seed(0))
    return Image.fromarray(pixels.to(torch.uint8).numpy())


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B/32", "RN50"])
def test_get_tokenizer_takes_a_model_name(name):
    ours = mmcl.get_tokenizer(name)(CAPTIONS)
    theirs = open_clip.get_tokenizer(name.replace("/", "-"))(CAPTIONS)
    assert torch.equal(ours, theirs) and ours.shape == (3, 77)


def test_get_tokenizer_still_takes_a_context_length_or_a_model():
    assert mmcl.get_tokenizer(16)(CAPTIONS).shape == (3, 16)
    assert mmcl.get_tokenizer(context_length=16)(CAPTIONS).shape == (3, 16)
    assert mmcl.get_tokenizer("ViT-B-32", context_length=16)(CAPTIONS).shape == (3, 16)
    assert mmcl.get_tokenizer(mmcl.create_model("tiny-vit")).context_length == 77
    with pytest.raises(TypeError, match="model name, a model or a context length"):
        mmcl.get_tokenizer(3.5)


@pytest.mark.parametrize("name, size", [("ViT-B-32", 224), ("ViT-L-14-336", 336), ("RN50x4", 288)])
def test_get_preprocess_takes_a_model_name(name, size, photo):
    got = mmcl.get_preprocess(name)(photo)
    expected = open_clip.image_transform(size, is_train=False)(photo)
    assert got.shape == (3, size, size)
    assert float((got - expected).abs().max()) <= 1e-6


def test_get_preprocess_names_an_unknown_model():
    with pytest.raises(ValueError, match="Unknown model name 'ViT-B-33'"):
        mmcl.get_preprocess("ViT-B-33")


def test_create_model_and_transforms_returns_open_clips_train_and_eval_transforms(photo):
    model, train, evaluate = mmcl.create_model_and_transforms("tiny-vit")
    assert isinstance(model, mmcl.CLIP)
    expected_train = open_clip.image_transform(32, is_train=True)
    torch.manual_seed(3)
    got = train(photo)
    torch.manual_seed(3)
    assert float((got - expected_train(photo)).abs().max()) <= 1e-6
    assert (
        float((evaluate(photo) - open_clip.image_transform(32, is_train=False)(photo)).abs().max())
        <= 1e-6
    )
