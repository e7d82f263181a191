"""`streamlined(transform)` (what `mmcl embed`'s workers run) gives exactly the plain transform's
tensors, and so open_clip's to within 1e-6."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from test_transforms import HIGH_BIT_DEPTH, MODES, make_image, ours, reference
from torchvision.transforms import CenterCrop, Compose, Normalize, ToTensor

from mmcl.io.transforms import (
    OPENAI_DATASET_MEAN,
    OPENAI_DATASET_STD,
    CenterCropIfNeeded,
    ToNormalizedTensor,
    image_transform,
    streamlined,
)


def assert_same(transform, img: Image.Image) -> torch.Tensor:
    expected = transform(img)
    got = streamlined(transform)(img)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.is_contiguous()
    assert torch.equal(got, expected)
    return got


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wh", [(10, 7), (224, 224), (301, 199), (3, 250)], ids=str)
def test_every_mode_and_size_gives_the_plain_transforms_tensor(mode, wh) -> None:
    img = make_image(mode, *wh, seed=1000 * MODES.index(mode) + wh[0] + wh[1])
    got = assert_same(ours(224), img)
    if mode in HIGH_BIT_DEPTH:
        return  # scaled to 8 bits where open_clip clips: see test_transforms.py
    # and therefore open_clip's, as the plain transform's tests require
    with warnings.catch_warnings():  # open_clip's convert("RGB") on bytes transparency
        warnings.filterwarnings("ignore", "Palette images with Transparency")
        expected = reference(224)(img)
    assert (got - expected).abs().max().item() <= 1e-6


@pytest.mark.parametrize("size", [32, 224, 336, (224, 320), (64, 48)], ids=str)
def test_cifar_like_upsampling_and_non_square_sizes(size) -> None:
    for seed, wh in enumerate([(32, 32), (32, 20), (500, 375), (224, 224)]):
        assert_same(image_transform(size), make_image("RGB", *wh, seed=seed))


def test_every_8_bit_value_in_every_channel() -> None:
    # 256 x 3 pixels: each value at several positions, in vectorised lanes and in the tails.
    values = np.arange(256, dtype=np.uint8)
    rgb = np.stack([values, np.roll(values, 85), np.roll(values, 170)], axis=-1)
    img = Image.fromarray(np.stack([rgb, rgb[::-1], np.roll(rgb, 7, axis=0)]))
    plain = Compose([ToTensor(), Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)])
    assert_same(plain, img)


def test_custom_statistics_and_default_dtype() -> None:
    img = make_image("RGB", 40, 30)
    assert_same(image_transform(32, mean=(0.1, 0.2, 0.3), std=(0.9, 0.8, 0.7)), img)
    # One statistic for all channels: not per RGB channel, so the two steps run themselves.
    one = Compose([ToTensor(), Normalize((0.5,), (0.25,))])
    assert_same(one, img)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # ToTensor yields float64 then, and so do we
    try:
        assert assert_same(ours(32), img).dtype == torch.float64
    finally:
        torch.set_default_dtype(previous)


def test_train_transform_draws_the_same_crops() -> None:
    img = make_image("RGB", 300, 260)
    train = ours(64, is_train=True)
    torch.manual_seed(3)
    expected = train(img)
    torch.manual_seed(3)
    assert torch.equal(streamlined(train)(img), expected)


def test_structure_and_what_is_left_alone() -> None:
    fast = streamlined(ours(224))
    names = [type(step).__name__ for step in fast.transforms]
    assert names == [
        "EnsurePILImage",
        "To8Bit",
        "Resize",
        "CenterCropIfNeeded",
        "ConvertToRGB",
        "ToNormalizedTensor",
    ]
    assert "ToNormalizedTensor(mean=(0.48145466" in repr(fast)
    for other in (
        ToTensor(),
        Compose([ToTensor()]),
        Compose([ToTensor(), Normalize((0.5,) * 3, (0.5,) * 3, inplace=True)]),
        Compose([Normalize((0.5,) * 3, (0.5,) * 3), ToTensor()]),
    ):
        assert streamlined(other) is other
    # the plain transform itself is not changed
    assert "ToTensor()" in repr(ours(224)) and "CenterCrop(" in repr(ours(224))


def test_centre_crop_skips_only_images_of_its_size() -> None:
    crop = CenterCropIfNeeded((20, 30))
    exact = make_image("RGB", 30, 20)
    assert crop(exact) is exact
    for wh in [(40, 25), (30, 21), (10, 10)]:  # larger, one row more, smaller (padded)
        img = make_image("RGB", *wh)
        assert np.array_equal(np.asarray(crop(img)), np.asarray(CenterCrop((20, 30))(img)))


def test_zero_std_is_refused_like_normalize() -> None:
    with pytest.raises(ValueError, match="std evaluated to zero"):
        ToNormalizedTensor((0.5, 0.5, 0.5), (0.5, 0.0, 0.5))(make_image("RGB", 8, 8))
