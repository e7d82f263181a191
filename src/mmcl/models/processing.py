"""The tokenizer and image transforms that go with a model, asked for by model or by name.

open_clip's users write `get_tokenizer("ViT-B-32")` and `create_model_and_transforms(...)`;
these accept what `mmcl.io.tokenizer.get_tokenizer` (a context length) and
`mmcl.io.transforms.get_preprocess` (a model or an image size) accept, and model names too.

>>> import mmcl
>>> mmcl.get_tokenizer("ViT-B-32").context_length, mmcl.get_preprocess("ViT-L-14-336").transforms[2]
(77, Resize(size=336, interpolation=bicubic, max_size=None, antialias=True))
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from PIL import Image

from mmcl.io import tokenizer as tokenizers
from mmcl.io import transforms
from mmcl.models.clip import CLIP
from mmcl.models.config import CLIPConfig
from mmcl.models.factory import create_model
from mmcl.models.registry import get_model_config, resolve_name

Transform = Callable[[Image.Image], torch.Tensor]


def get_tokenizer(
    model: str | CLIP | int | None = None, context_length: int | None = None
) -> tokenizers.Tokenizer:
    """CLIP's tokenizer, with rows as long as the model's context (or `context_length`).

    `model` is a model name, a model (anything with `.context_length`), or a context length;
    None gives the default 77.

    >>> get_tokenizer("ViT-B-32")("a cat").shape
    torch.Size([1, 77])
    """
    if isinstance(model, int) and not isinstance(model, bool):
        if context_length is not None:
            raise TypeError("get_tokenizer: give the context length once, not twice")
        length = model
    elif isinstance(model, str):
        length = _config(model).text_cfg.context_length
    elif model is None:
        length = None
    elif hasattr(model, "context_length"):
        length = model.context_length
    else:
        raise TypeError(
            f"get_tokenizer expects a model name, a model or a context length, got "
            f"{type(model).__name__}"
        )
    length = context_length if context_length is not None else length
    return tokenizers.get_tokenizer(tokenizers.DEFAULT_CONTEXT_LENGTH if length is None else length)


def get_preprocess(model_or_size: str | object) -> Transform:
    """Eval preprocessing for a model name, a model (anything with ``.image_size``), or an
    image size (an int or a (height, width) pair).

    >>> from PIL import Image
    >>> get_preprocess("ViT-B-32")(Image.new("RGB", (640, 480))).shape
    torch.Size([3, 224, 224])
    """
    if isinstance(model_or_size, str):
        image_size = _config(model_or_size).vision_cfg.image_size
        return transforms.image_transform(image_size, is_train=False)
    return transforms.get_preprocess(model_or_size)


def create_model_and_transforms(
    name: str | None = None, pretrained: str | os.PathLike | None = None, **options
) -> tuple[CLIP, Transform, Transform]:
    """`create_model(name, pretrained, **options)` with its train and eval image transforms,
    as open_clip's function of that name returns them.

    >>> model, train_transform, eval_transform = create_model_and_transforms("tiny-vit")
    """
    model = create_model(name, pretrained, **options)
    train = transforms.image_transform(model.image_size, is_train=True)
    return model, train, transforms.get_preprocess(model)


def _config(name: str) -> CLIPConfig:
    return CLIPConfig.from_dict(get_model_config(name), source=resolve_name(name))
