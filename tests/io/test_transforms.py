"""mmcl.io.transforms against open_clip 3.3.0's image_transform (max abs diff <= 1e-6)."""

from __future__ import annotations

import doctest
import functools
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from mmcl.io import transforms as T
from mmcl.io.transforms import (
    OPENAI_DATASET_MEAN,
    OPENAI_DATASET_STD,
    get_preprocess,
    image_transform,
)

open_clip_transform = pytest.importorskip("open_clip.transform")
skimage_data = pytest.importorskip("skimage.data")

ATOL = 1e-6


@functools.cache
def reference(size: int | tuple[int, int], is_train: bool = False):
    return open_clip_transform.image_transform(size, is_train=is_train)


@functools.cache
def ours(size: int | tuple[int, int], is_train: bool = False):
    return image_transform(size, is_train=is_train)


def make_image(mode: str, width: int, height: int, seed: int = 0) -> Image.Image:
    """Seeded random image in ``mode``; values chosen to exercise each mode's quirks."""
    rng = np.random.default_rng(seed)

    def u8(*channels: int) -> np.ndarray:
        return rng.integers(0, 256, (height, width, *channels), dtype=np.uint8)

    if mode == "RGB":
        return Image.fromarray(u8(3))
    if mode == "RGBA":
        rgba = u8(4)
        rgba[: height // 2, :, 3] = 0  # a fully transparent band whose colour is dropped/blackened
        return Image.fromarray(rgba)
    if mode in ("LA", "La"):
        la = Image.fromarray(u8(2))
        return la if mode == "LA" else la.convert("La")
    if mode == "L":
        return Image.fromarray(u8())
    if mode in ("P", "P_trns_index", "P_trns_bytes"):
        img = Image.fromarray(u8(3)).quantize(64)
        if mode == "P_trns_index":
            img.info["transparency"] = 3
        elif mode == "P_trns_bytes":
            img.info["transparency"] = bytes(rng.integers(0, 256, 64, dtype=np.uint8))
        return img
    if mode == "CMYK":
        return Image.frombytes("CMYK", (width, height), u8(4).tobytes())
    if mode == "1":
        return Image.fromarray(u8() > 127)
    if mode in ("I;16", "I;16B"):  # the full 16-bit range, in either byte order
        order = "<" if mode == "I;16" else ">"
        return Image.fromarray(rng.integers(0, 65536, (height, width)).astype(f"{order}u2"))
    if mode == "I":  # 16-bit values, and some outside 0..65535 that are clipped
        return Image.fromarray(rng.integers(-3000, 70000, (height, width), dtype=np.int32))
    if mode == "F":
        return Image.fromarray(rng.uniform(-10, 300, (height, width)).astype(np.float32))
    raise ValueError(mode)


def assert_matches_open_clip(img: Image.Image, size: int | tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():
        # open_clip's plain convert("RGB") warns on P images with bytes transparency.
        warnings.filterwarnings("ignore", "Palette images with Transparency")
        expected = reference(size)(img)
    got = ours(size)(img)
    assert got.shape == expected.shape
    assert got.dtype == torch.float32
    diff = (got - expected).abs().max().item()
    assert diff <= ATOL, f"max abs diff {diff}"
    return got


MODES = [
    "RGB",
    "RGBA",
    "LA",
    "L",
    "P",
    "P_trns_index",
    "P_trns_bytes",
    "CMYK",
    "1",
    "I;16",
    "I;16B",
    "I",
    "F",
]
# Modes of more than 8 bits a sample that mmcl scales to 8 bits and open_clip clips.
HIGH_BIT_DEPTH = ["I;16", "I;16B", "I"]


@pytest.mark.parametrize("mode", [mode for mode in MODES if mode not in HIGH_BIT_DEPTH])
@pytest.mark.parametrize("wh", [(10, 7), (301, 199), (224, 224), (3, 250)], ids=str)
def test_modes_match_open_clip(mode: str, wh: tuple[int, int]) -> None:
    img = make_image(mode, *wh, seed=1000 * MODES.index(mode) + wh[0] + wh[1])
    assert img.mode == mode.split("_")[0]
    out = assert_matches_open_clip(img, 224)
    assert out.shape == (3, 224, 224)


@pytest.mark.parametrize("mode", HIGH_BIT_DEPTH)
@pytest.mark.parametrize("wh", [(10, 7), (301, 199), (224, 224)], ids=str)
@pytest.mark.parametrize("is_train", [False, True])
def test_16_bit_greyscale_equals_its_high_bytes(mode: str, wh, is_train: bool) -> None:
    # Reference: open_clip on the 8-bit image made independently with numpy (each value's
    # high byte, as Pillow reads 16-bit RGB PNGs). open_clip on the 16-bit image clips instead.
    img = make_image(mode, *wh, seed=wh[0] + wh[1])
    assert img.mode == mode
    eight_bit = Image.fromarray((np.clip(np.asarray(img), 0, 65535) >> 8).astype(np.uint8))
    torch.manual_seed(0)
    got = ours(224, is_train)(img)
    torch.manual_seed(0)
    expected = reference(224, is_train)(eight_bit)
    assert (got - expected).abs().max().item() <= ATOL
    torch.manual_seed(0)
    clipped = reference(224, is_train)(img)
    assert (clipped - expected).abs().max().item() > 0.5  # what mmcl no longer does


@pytest.mark.parametrize("size", [224, 288, 336])
@pytest.mark.parametrize(
    "wh",
    [(10, 7), (1000, 3), (3, 1000), (0, 0), (225, 223), (301, 199), (199, 301), (513, 385)],
    ids=str,
)
def test_sizes_match_open_clip(size: int, wh: tuple[int, int]) -> None:
    if wh == (0, 0):  # exact size: no resize at all
        wh = (size, size)
    out = assert_matches_open_clip(make_image("RGB", *wh, seed=wh[0] * 7919 + wh[1]), size)
    assert out.shape == (3, size, size)


@pytest.mark.parametrize("size", [(224, 320), (320, 224), [256, 256]], ids=str)
@pytest.mark.parametrize("wh", [(10, 7), (640, 480), (333, 500)], ids=str)
def test_non_square_sizes_match_open_clip(size, wh: tuple[int, int]) -> None:
    out = assert_matches_open_clip(make_image("RGB", *wh), tuple(size))
    assert out.shape == (3, *size)


@pytest.mark.parametrize("size", [224, 288, 336])
@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket", "camera"])
def test_skimage_photos_match_open_clip(name: str, size: int) -> None:
    img = Image.fromarray(getattr(skimage_data, name)())
    assert_matches_open_clip(img, size)


def test_premultiplied_la_gives_sensible_rgb() -> None:
    # open_clip raises here (Pillow has no La -> RGB); we un-premultiply via LA.
    la = make_image("LA", 301, 199)
    img = la.convert("La")
    with pytest.raises(ValueError):
        reference(224)(img)
    got = ours(224)(img)
    assert got.shape == (3, 224, 224)
    # Grey: the three channels are equal before normalisation.
    mean = torch.tensor(OPENAI_DATASET_MEAN)[:, None, None]
    std = torch.tensor(OPENAI_DATASET_STD)[:, None, None]
    pixels = got * std + mean
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5)
    assert torch.allclose(pixels[0], pixels[2], atol=1e-5)
    # Same picture as the straight-alpha LA image, up to premultiplication rounding.
    assert (got - reference(224)(la)).abs().mul(std).max().item() <= 3 / 255


def test_rgba_transparent_pixels_follow_open_clip() -> None:
    # Pillow resizes RGBA premultiplied: transparent areas turn black once resized,
    # but keep their raw colour when no resize is needed. Both match open_clip.
    rgba = np.zeros((300, 400, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    for wh in [(400, 300), (224, 224)]:
        img = Image.fromarray(rgba[: wh[1], : wh[0]])
        assert_matches_open_clip(img, 224)


def test_bytes_transparency_does_not_warn() -> None:
    img = make_image("P_trns_bytes", 50, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours(224)(img)
    assert "transparency" in img.info  # the caller's image is left untouched


def test_input_image_not_modified() -> None:
    img = make_image("CMYK", 50, 40)
    before = img.tobytes()
    ours(224)(img)
    assert img.mode == "CMYK" and img.tobytes() == before


@pytest.mark.parametrize("size", [224, (224, 320)], ids=str)
def test_train_transform_shape_and_determinism(size) -> None:
    img = Image.fromarray(skimage_data.astronaut())
    train = ours(size, is_train=True)
    torch.manual_seed(0)
    first = train(img)
    torch.manual_seed(0)
    second = train(img)
    hw = (size, size) if isinstance(size, int) else size
    assert first.shape == (3, *hw)
    assert torch.equal(first, second)
    torch.manual_seed(1)
    assert not torch.equal(first, train(img))
    # Same RNG draws as open_clip's default train transform, so same crop.
    torch.manual_seed(0)
    expected = reference(size, is_train=True)(img)
    assert (first - expected).abs().max().item() <= ATOL


def test_train_crop_is_fixed_for_wide_images() -> None:
    # scale >= 0.9 with ratio in [3/4, 4/3] cannot fit a 3:2 image, so torchvision's
    # RandomResizedCrop always falls back to its central crop (open_clip too).
    img = Image.fromarray(skimage_data.chelsea())  # 451 x 300
    train = ours(224, is_train=True)
    torch.manual_seed(0)
    first = train(img)
    torch.manual_seed(1)
    assert torch.equal(first, train(img))


def test_train_transform_handles_modes() -> None:
    train = ours(64, is_train=True)
    for mode in MODES + ["La"]:
        assert train(make_image(mode, 80, 50)).shape == (3, 64, 64)


def test_repr_lists_steps() -> None:
    text = repr(image_transform(224))
    for step in ["EnsurePILImage", "Resize", "CenterCrop", "ConvertToRGB", "ToTensor", "Normalize"]:
        assert step in text
    assert "RandomResizedCrop" in repr(image_transform(224, is_train=True))
    assert "ResizeToCover(size=(224, 320)" in repr(image_transform((224, 320)))


def test_custom_mean_std() -> None:
    out = image_transform(32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(Image.new("RGB", (40, 40)))
    assert torch.allclose(out, torch.full((3, 32, 32), -1.0))


def test_get_preprocess() -> None:
    img = make_image("RGB", 100, 80)
    assert get_preprocess(288)(img).shape == (3, 288, 288)
    assert get_preprocess((64, 96))(img).shape == (3, 64, 96)
    model = SimpleNamespace(image_size=336)
    assert torch.equal(get_preprocess(model)(img), reference(336)(img))
    with pytest.raises(TypeError, match="image_size"):
        get_preprocess(object())


def test_docstring_example_runs() -> None:
    result = doctest.testmod(T, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_tensor_input_error() -> None:
    with pytest.raises(TypeError, match=r"PIL\.Image\.Image, got torch\.Tensor.*to_pil_image"):
        ours(224)(torch.rand(3, 224, 224))


@pytest.mark.parametrize(
    "bad, pattern",
    [
        (np.zeros((8, 8, 3), dtype=np.uint8), r"got numpy\.ndarray.*fromarray"),
        ("cat.jpg", r"got str.*Image\.open"),
        (None, r"got NoneType"),
        ([[0, 1]], r"got list"),
    ],
    ids=["ndarray", "str", "None", "list"],
)
def test_non_pil_input_errors(bad, pattern: str) -> None:
    for transform in (ours(224), ours(224, is_train=True)):
        with pytest.raises(TypeError, match=pattern):
            transform(bad)


@pytest.mark.parametrize(
    "size", [0, -3, (224,), (224, 0), "224", True, 224.0, (224, 224.0)], ids=str
)
def test_bad_image_size(size) -> None:
    with pytest.raises((TypeError, ValueError), match="image_size"):
        image_transform(size)
