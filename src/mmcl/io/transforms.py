"""CLIP image preprocessing: PIL image -> normalised ``(3, H, W)`` float tensor.

The eval transform reproduces open_clip's ``image_transform(size, is_train=False)``
(and OpenAI CLIP's ``_transform``) exactly: resize the shorter side with bicubic
filtering, centre-crop, convert to RGB, scale to [0, 1], normalise.

Conversion to RGB deliberately happens *after* resize and crop, as in open_clip,
because Pillow's resampling depends on the source mode and moving the conversion
changes the pixels:

* ``P`` and ``1`` images are always resized with nearest neighbour (Pillow
  ignores the requested filter for them);
* ``RGBA`` and ``LA`` images are resized with premultiplied alpha, so fully
  transparent pixels come out black, except when no resize is needed (the image
  already has the target shorter side), where their raw colour is kept;
* alpha and palette transparency are then dropped, never composited;
* ``F`` (32-bit float) values are clipped to [0, 255] by Pillow, not rescaled.

These are open_clip's results, kept for parity with published checkpoints'
evaluation. We part from open_clip in two places:

* 16-bit greyscale (``I;16``, ``I;16B``, ...) and 32-bit integer ``I`` images are
  scaled to 8 bits first (`To8Bit`). Pillow, and so open_clip, clips their values
  to [0, 255], which turns most of a 16-bit image white. We keep each value's high
  byte (``value >> 8``, the full 0..65535 range onto 0..255), which is what Pillow
  itself does when it opens a 16-bit RGB, RGBA or grey+alpha PNG, so a 16-bit
  picture gives the same pixels whether it is stored as grey or as RGB. ``I``
  images are read as 16-bit values too (Pillow opens 16-bit PGM files as ``I``):
  values below 0 or above 65535 are clipped. Data that uses fewer bits (a 12-bit
  sensor's 0..4095 stored in a 16-bit file) comes out dark, not white: stretch it
  yourself before preprocessing if that matters.
* premultiplied ``La``, which open_clip cannot handle (Pillow has no ``La -> RGB``
  conversion), is routed through ``LA`` (un-premultiply, the same thing Pillow
  does for ``RGBa -> RGB``).

``streamlined(transform)`` gives the same tensors sooner, for long jobs (``mmcl embed``): the
final ``ToTensor(), Normalize(...)`` become one `ToNormalizedTensor` (the same float32
arithmetic without the intermediate tensors and per-call checks), and centre crops that would
only copy the image are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import (
    CenterCrop,
    Compose,
    InterpolationMode,
    Normalize,
    RandomResizedCrop,
    Resize,
    ToTensor,
)
from torchvision.transforms import functional as TF

__all__ = [
    "OPENAI_DATASET_MEAN",
    "OPENAI_DATASET_STD",
    "CenterCropIfNeeded",
    "ConvertToRGB",
    "EnsurePILImage",
    "HIGH_BIT_DEPTH_MODES",
    "ResizeToCover",
    "To8Bit",
    "ToNormalizedTensor",
    "get_preprocess",
    "image_transform",
    "streamlined",
]

# Per-channel RGB mean/std of OpenAI's CLIP training images, from openai/CLIP
# (clip/clip.py, `_transform`); open_clip uses the same values (open_clip/constants.py).
OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)

ImageSize = int | tuple[int, int]

# Modes Pillow cannot convert to RGB directly, mapped to a mode it can convert from.
_RGB_VIA = {"La": "LA"}

# Greyscale modes with more than 8 bits a sample, which `To8Bit` scales (Pillow would clip).
HIGH_BIT_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class EnsurePILImage:
    """Pass PIL images through; reject anything else with an actionable TypeError.

    Runs first so that a wrong input fails here rather than deep inside a resize.
    """

    def __call__(self, img: object) -> Image.Image:
        if isinstance(img, Image.Image):
            return img
        if isinstance(img, torch.Tensor):
            raise TypeError(
                f"preprocess expects a PIL.Image.Image, got torch.Tensor "
                f"(shape {tuple(img.shape)}, dtype {img.dtype}). CLIP preprocessing works on PIL "
                "images; convert with torchvision.transforms.functional.to_pil_image(tensor), "
                "or pass an already preprocessed tensor straight to the model."
            )
        if isinstance(img, np.ndarray):
            raise TypeError(
                f"preprocess expects a PIL.Image.Image, got numpy.ndarray "
                f"(shape {img.shape}, dtype {img.dtype}); convert with PIL.Image.fromarray(array)."
            )
        kind = type(img)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        hint = " (to load a file, use PIL.Image.open(path))" if isinstance(img, str) else ""
        raise TypeError(f"preprocess expects a PIL.Image.Image, got {name}{hint}.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class To8Bit:
    """16-bit greyscale (``I;16*``) and ``I`` images to ``L`` by each value's high byte.

    ``value >> 8`` maps the format's full range 0..65535 onto 0..255, as Pillow does for the
    16-bit RGB PNGs it opens; ``I`` values outside 0..65535 are clipped first. Other modes are
    returned as they are, so 8-bit images are untouched.

    >>> import numpy as np
    >>> from PIL import Image
    >>> ramp = Image.fromarray(np.array([[0, 255, 256, 4095, 65535]], dtype=np.uint16))
    >>> np.asarray(To8Bit()(ramp)).tolist()
    [[0, 0, 1, 15, 255]]
    """

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.mode not in HIGH_BIT_DEPTH_MODES:
            return img
        values = np.asarray(img)  # uint16 of either byte order, or int32 for "I"
        high_bytes = np.clip(values, 0, 65535).astype(np.uint32) >> 8
        return Image.fromarray(high_bytes.astype(np.uint8))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ConvertToRGB:
    """``img.convert("RGB")`` for every PIL mode; alpha/transparency is dropped."""

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.mode == "RGB":
            return img
        if img.mode == "P" and isinstance(img.info.get("transparency"), bytes):
            # Pillow warns that per-entry palette alpha cannot survive P -> RGB; dropping
            # alpha is intended here, so drop it first (the RGB pixels are the same).
            img = img.copy()
            del img.info["transparency"]
        via = _RGB_VIA.get(img.mode)
        if via is not None:
            img = img.convert(via)
        return img.convert("RGB")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ResizeToCover:
    """Resize keeping aspect ratio to the smallest size that covers ``(height, width)``.

    Shorter-side resize generalised to non-square targets; computes the size exactly
    as open_clip's ``ResizeKeepRatio(size)`` (rounding, not truncation), which is what
    it uses for non-square ``image_size``. The resampling itself is torchvision's.
    """

    def __init__(
        self, size: tuple[int, int], interpolation: InterpolationMode = InterpolationMode.BICUBIC
    ) -> None:
        self.size = size
        self.interpolation = interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        width, height = img.size
        scale = min(height / self.size[0], width / self.size[1])
        new_size = [round(height / scale), round(width / scale)]
        return TF.resize(img, new_size, self.interpolation)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, interpolation={self.interpolation.value})"


class ToNormalizedTensor:
    """``Normalize(mean, std)(ToTensor()(img))`` in one step, value for value.

    For RGB images it does the arithmetic of the two steps, in their order and dtype (pixels to
    the default float dtype, divided by 255, minus the mean, divided by the std), on one tensor
    and with the mean and std made once, not on every call, which saves a pass over the pixels
    and an allocation per image. Other modes, or a mean/std that is not per RGB channel, take the two steps themselves.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        self.steps = Compose([ToTensor(), Normalize(mean=self.mean, std=self.std)])
        self.fast = len(self.mean) == len(self.std) == 3
        self._stats: tuple[torch.dtype, torch.Tensor, torch.Tensor] | None = None

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if not (self.fast and isinstance(img, Image.Image) and img.mode == "RGB"):
            return self.steps(img)
        dtype = torch.get_default_dtype()  # ToTensor's; Normalize then computes in it too
        mean, std = self._mean_std(dtype)
        pixels = torch.from_numpy(np.array(img))  # (H, W, 3) uint8, a copy of its own
        tensor = pixels.permute(2, 0, 1).to(dtype, memory_format=torch.contiguous_format)
        return tensor.div_(255).sub_(mean).div_(std)

    def _mean_std(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self._stats is None or self._stats[0] != dtype:
            mean = torch.tensor(self.mean, dtype=dtype).view(-1, 1, 1)
            std = torch.tensor(self.std, dtype=dtype).view(-1, 1, 1)
            if (std == 0).any():
                raise ValueError(f"std evaluated to zero after conversion to {dtype}: {self.std}")
            self._stats = (dtype, mean, std)
        return self._stats[1], self._stats[2]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


class CenterCropIfNeeded(CenterCrop):
    """``CenterCrop`` that returns a PIL image already of the crop's size as it is, rather than
    a copy (what upsampled small images, e.g. CIFAR's 32 px, always are)."""

    def forward(self, img):
        if isinstance(img, Image.Image) and img.size == (self.size[1], self.size[0]):
            return img
        return super().forward(img)


def streamlined(transform: Callable) -> Callable:
    """The same transform, for running many times: a ``Compose`` ending in ``ToTensor(),
    Normalize(mean, std)`` ends in ``ToNormalizedTensor(mean, std)`` instead, and its
    ``CenterCrop`` skips images that already have the crop's size; both give the same tensors.
    Anything else is returned as it is.

    >>> from PIL import Image
    >>> preprocess = get_preprocess(224)
    >>> image = Image.new("RGB", (40, 30), (200, 100, 50))
    >>> bool((streamlined(preprocess)(image) == preprocess(image)).all())
    True
    """
    if not isinstance(transform, Compose) or len(transform.transforms) < 2:
        return transform
    *head, to_tensor, normalize = transform.transforms
    if type(to_tensor) is not ToTensor or type(normalize) is not Normalize or normalize.inplace:
        return transform
    steps = [CenterCropIfNeeded(step.size) if type(step) is CenterCrop else step for step in head]
    return Compose([*steps, ToNormalizedTensor(normalize.mean, normalize.std)])


def _to_hw(image_size: ImageSize) -> tuple[int, int]:
    """Validate ``image_size`` (int or ``(height, width)``) and return ``(height, width)``."""
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        hw = (image_size, image_size)
    elif (
        isinstance(image_size, Sequence)
        and not isinstance(image_size, str)
        and len(image_size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in image_size)
    ):
        hw = (image_size[0], image_size[1])
    else:
        raise TypeError(
            f"image_size must be an int or a (height, width) pair of ints, got {image_size!r}"
        )
    if min(hw) <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return hw


def image_transform(
    image_size: ImageSize,
    is_train: bool = False,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
) -> Callable[[Image.Image], torch.Tensor]:
    """Build CLIP's image preprocessing as a torchvision ``Compose``.

    Eval: shorter side -> ``image_size`` (bicubic), centre crop, RGB, ``ToTensor``,
    ``Normalize``; equal to open_clip's ``image_transform(image_size, is_train=False)``
    except for 16-bit greyscale images, which are first scaled to 8 bits (`To8Bit`) where
    open_clip clips them.
    Train: ``RandomResizedCrop(scale=(0.9, 1.0))`` (bicubic), RGB, ``ToTensor``,
    ``Normalize``; open_clip's default train transform. Its randomness comes from
    torch's global RNG, so ``torch.manual_seed`` makes it reproducible. With
    ``scale >= 0.9`` and torchvision's default ratio range (3/4, 4/3), images wider than
    about 1.48:1 (or taller than 1:1.48) never fit a random crop, and torchvision falls
    back to a fixed central crop, as it does in open_clip.

    ``image_size`` is an int (square) or ``(height, width)``. Input must be a PIL image.
    """
    hw = _to_hw(image_size)
    normalize = Normalize(mean=tuple(mean), std=tuple(std))
    # 16-bit -> 8-bit before anything else, so the result equals that of the 8-bit image.
    steps: list[Callable] = [EnsurePILImage(), To8Bit()]
    if is_train:
        steps += [
            RandomResizedCrop(hw, scale=(0.9, 1.0), interpolation=InterpolationMode.BICUBIC),
        ]
    else:
        # Square targets use torchvision's shorter-side Resize(int), which truncates the
        # longer side; open_clip does the same, and switching to rounding would shift
        # the crop by a pixel on some images.
        if hw[0] == hw[1]:
            resize: Callable = Resize(hw[0], interpolation=InterpolationMode.BICUBIC)
        else:
            resize = ResizeToCover(hw)
        # The resized image always covers the crop; CenterCrop would zero-pad otherwise.
        steps += [resize, CenterCrop(hw)]
    # RGB conversion after the spatial ops, matching open_clip (see module docstring).
    steps += [ConvertToRGB(), ToTensor(), normalize]
    return Compose(steps)


def get_preprocess(model_or_size: object) -> Callable[[Image.Image], torch.Tensor]:
    """Eval preprocessing for a model (anything with ``.image_size``) or an image size.

    Example:
        >>> from PIL import Image
        >>> preprocess = get_preprocess(224)  # or get_preprocess(model)
        >>> preprocess(Image.new("RGB", (640, 480))).shape
        torch.Size([3, 224, 224])
    """
    if isinstance(model_or_size, (int, tuple, list)) and not isinstance(model_or_size, bool):
        return image_transform(model_or_size, is_train=False)
    image_size = getattr(model_or_size, "image_size", None)
    if image_size is None:
        raise TypeError(
            "get_preprocess expects an int image size, a (height, width) pair, or an object "
            f"with an `image_size` attribute (e.g. a CLIP model), got {type(model_or_size).__name__}"
        )
    return image_transform(image_size, is_train=False)
