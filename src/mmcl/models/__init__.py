"""CLIP-family models: towers, assemblies (CLIP, CoCa), configs and the registry of names."""

from mmcl.models.clip import CLIP
from mmcl.models.coca import CoCa
from mmcl.models.config import CLIPConfig, CoCaConfig, TextConfig, VisionConfig
from mmcl.models.factory import create_model, load
from mmcl.models.registry import available_models, get_model_config, resolve_name

__all__ = [
    "CLIP",
    "CLIPConfig",
    "CoCa",
    "CoCaConfig",
    "TextConfig",
    "VisionConfig",
    "available_models",
    "create_model",
    "get_model_config",
    "load",
    "resolve_name",
]
