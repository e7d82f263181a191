import json
import os

import open_clip
import pytest

import mmcl
from mmcl.models import available_models, get_model_config, resolve_name

OPEN_CLIP_CONFIGS = os.path.join(os.path.dirname(open_clip.__file__), "model_configs")


@pytest.mark.parametrize("name", [n for n in available_models() if not n.startswith("tiny")])
def test_config_matches_open_clip(name):
    path = os.path.join(OPEN_CLIP_CONFIGS, f"{name}.json")
    if not os.path.exists(path):  # open_clip lacks ViT-g-14-quickgelu: its base plus the flag
        path = os.path.join(OPEN_CLIP_CONFIGS, f"{name.removesuffix('-quickgelu')}.json")
    with open(path) as handle:
        reference = json.load(handle)
    if name.endswith("-quickgelu"):
        reference["quick_gelu"] = True
    ours = get_model_config(name)
    reference.setdefault("quick_gelu", False)
    ours.setdefault("quick_gelu", False)
    assert ours == reference


def test_openai_names_resolve_to_quickgelu_configs():
    assert resolve_name("ViT-B/32") == "ViT-B-32-quickgelu"
    assert resolve_name("ViT-L/14@336px") == "ViT-L-14-336-quickgelu"
    assert resolve_name("vit-b-16") == "ViT-B-16"
    for name in ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64"):
        assert resolve_name(name) == name


def test_unknown_name_suggests_close_names():
    with pytest.raises(ValueError, match="Did you mean.*ViT-B-32"):
        mmcl.create_model("ViT-B-23")


def test_available_models_lists_the_families():
    names = available_models()
    for expected in ("RN50", "RN50x64", "ViT-B-32", "ViT-L-14-336", "ViT-bigG-14-quickgelu"):
        assert expected in names
