"""CLIP-family models: towers, assemblies (CLIP, CoCa), configs, the registry of names and
pretrained tags.

Names are imported on first use (PEP 562): the registry and the tags need no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "Albef": "mmcl.models.albef",
    "AlbefConfig": "mmcl.models.albef_config",
    "CLIP": "mmcl.models.clip",
    "CLIPConfig": "mmcl.models.config",
    "CoCa": "mmcl.models.coca",
    "CoCaConfig": "mmcl.models.config",
    "TextConfig": "mmcl.models.config",
    "VisionConfig": "mmcl.models.config",
    "available_models": "mmcl.models.registry",
    "create_model": "mmcl.models.factory",
    "get_model_config": "mmcl.models.registry",
    "list_pretrained": "mmcl.models.pretrained",
    "load": "mmcl.models.factory",
    "resolve_name": "mmcl.models.registry",
}

__all__ = [
    "Albef",
    "AlbefConfig",
    "CLIP",
    "CLIPConfig",
    "CoCa",
    "CoCaConfig",
    "TextConfig",
    "VisionConfig",
    "available_models",
    "create_model",
    "get_model_config",
    "list_pretrained",
    "load",
    "resolve_name",
]

if TYPE_CHECKING:
    from mmcl.models.albef import Albef
    from mmcl.models.albef_config import AlbefConfig
    from mmcl.models.clip import CLIP
    from mmcl.models.coca import CoCa
    from mmcl.models.config import CLIPConfig, CoCaConfig, TextConfig, VisionConfig
    from mmcl.models.factory import create_model, load
    from mmcl.models.pretrained import list_pretrained
    from mmcl.models.registry import available_models, get_model_config, resolve_name


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
