"""mmcl: vision-language foundation models and continual learning in PyTorch.

The common path, importable from here:

>>> import mmcl, torch
>>> model = mmcl.create_model("tiny-vit")          # or ("ViT-B-32", pretrained="openai")
>>> preprocess = mmcl.get_preprocess(model)        # PIL image -> normalised tensor
>>> tokens = mmcl.tokenize(["a photo of a cat", "a photo of a dog"])
>>> with torch.no_grad():
...     text_features = model.encode_text(tokens, normalize=True)
>>> text_features.shape
torch.Size([2, 64])
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it. Imported on first use (PEP 562), so that
# `import mmcl` and `mmcl --help` do not load torch.
_PUBLIC = {
    "CLIP": "mmcl.models.clip",
    "Tokenizer": "mmcl.io.tokenizer",
    "available_models": "mmcl.models.registry",
    "create_model": "mmcl.models.factory",
    "create_model_and_transforms": "mmcl.models.processing",
    "get_preprocess": "mmcl.models.processing",
    "get_tokenizer": "mmcl.models.processing",
    "image_transform": "mmcl.io.transforms",
    "list_pretrained": "mmcl.models.pretrained",
    "load": "mmcl.models.factory",
    "tokenize": "mmcl.io.tokenizer",
}

__all__ = [
    "CLIP",
    "Tokenizer",
    "available_models",
    "create_model",
    "create_model_and_transforms",
    "get_preprocess",
    "get_tokenizer",
    "image_transform",
    "list_pretrained",
    "load",
    "tokenize",
]

if TYPE_CHECKING:
    from mmcl.io.tokenizer import Tokenizer, tokenize
    from mmcl.io.transforms import image_transform
    from mmcl.models.clip import CLIP
    from mmcl.models.factory import create_model, load
    from mmcl.models.pretrained import list_pretrained
    from mmcl.models.processing import (
        create_model_and_transforms,
        get_preprocess,
        get_tokenizer,
    )
    from mmcl.models.registry import available_models


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")  # `mmcl.models` after `import mmcl`
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
