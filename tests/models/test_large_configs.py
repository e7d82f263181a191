"""ViT-H/g/bigG are too big to build twice here: compare names and shapes on the meta device."""

import open_clip
import pytest
import torch

from mmcl.io.checkpoints.openai import from_openai_layout
from mmcl.models import CLIP, CLIPConfig, get_model_config


@pytest.mark.parametrize(
    "name", ["ViT-H-14", "ViT-g-14", "ViT-bigG-14", "ViT-H-14-quickgelu", "ViT-bigG-14-quickgelu"]
)
def test_parameter_names_and_shapes_match_open_clip(name):
    config = get_model_config(name)
    with torch.device("meta"):
        reference = open_clip.model.CLIP(**config)
        ours = CLIP(CLIPConfig.from_dict(config))
    expected = {k: tuple(v.shape) for k, v in from_openai_layout(reference.state_dict()).items()}
    actual = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert actual == expected
