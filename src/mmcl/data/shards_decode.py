"""Decoding one webdataset sample of a shard into a training pair, or None if it is bad.

A sample is the tar members sharing a key (``000017.jpg`` + ``000017.txt``), as webdataset's
tar iterator groups them: an image (``.jpg``, ``.jpeg``, ``.png`` or ``.webp``) and either a
caption (``.txt``) or a class index (``.cls``).
"""

from __future__ import annotations

import io
import warnings
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from mmcl.data.captions import class_caption
from mmcl.data.images import ImageReadError

__all__ = ["SHARD_IMAGE_EXTENSIONS", "SampleDecoder"]

SHARD_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


class SampleDecoder:
    """``sample -> (transform(image), target)``, or ``None`` with a warning naming the shard
    and key when the sample is bad (undecodable image, no image, no caption).

    The target is ``tokenizer([caption])[0]``, or the caption string when `tokenizer` is None.
    A ``.cls`` sample is captioned from `templates` when `classnames` is given (template chosen
    by a hash of the sample key), and its target is the class index otherwise.

    >>> png = io.BytesIO()
    >>> Image.new("RGB", (4, 3)).save(png, format="PNG")
    >>> decode = SampleDecoder(transform=lambda image: image.size)
    >>> decode({"__key__": "k", "png": png.getvalue(), "txt": b"a cat"})
    ((4, 3), 'a cat')
    """

    def __init__(
        self,
        transform: Callable[[Image.Image], Any],
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        classnames: Sequence[str] | None = None,
        templates: Sequence[str] = ("a photo of a {}.",),
    ) -> None:
        self.transform = transform
        self.tokenizer = tokenizer
        self.classnames = classnames
        self.templates = templates

    def __call__(self, sample: dict[str, Any]) -> tuple[Any, Any] | None:
        where = f"{sample.get('__url__')}, key {sample['__key__']!r}"
        image_ext = next((ext for ext in SHARD_IMAGE_EXTENSIONS if ext in sample), None)
        if image_ext is None:
            return _skip(f"{where}: no image ({', '.join(SHARD_IMAGE_EXTENSIONS)})")
        target = self._target(sample, where)  # before the image: it is cheap to check
        if target is None:
            return None
        try:
            image = _open_image(sample[image_ext], f"{where}, .{image_ext}")
        except ImageReadError as error:
            return _skip(str(error))
        return self.transform(image), target

    def _target(self, sample: dict[str, Any], where: str) -> Any:
        if "txt" in sample:
            try:
                caption = sample["txt"].decode("utf-8")
            except UnicodeDecodeError:
                return _skip(f"{where}: the .txt caption is not UTF-8")
        elif "cls" in sample:
            try:
                label = int(sample["cls"].decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                return _skip(f"{where}: the .cls class index is not an integer")
            if self.classnames is None:
                return label
            if not 0 <= label < len(self.classnames):
                return _skip(
                    f"{where}: class {label} is not in the {len(self.classnames)} classnames"
                )
            caption = class_caption(
                self.classnames[label], self.templates, zlib.crc32(sample["__key__"].encode())
            )
        else:
            return _skip(f"{where}: no caption (.txt) or class index (.cls)")
        return self.tokenizer([caption])[0] if self.tokenizer is not None else caption


def _skip(reason: str) -> None:
    warnings.warn(f"skipping bad sample {reason}", stacklevel=3)
    return None


def _open_image(data: bytes, name: str) -> Image.Image:
    """Decode image bytes fully, so truncated files fail here; errors name the sample."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(name, str(error) or type(error).__name__) from error
