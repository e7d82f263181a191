"""`forward_intermediates` on the model and each tower: open_clip 3.3.0's arguments, keys and
values on the same weights (open_clip is the reference), and its final features equal the
towers' own `encode_*`."""

import doctest

import pytest
import torch

import mmcl
from conftest import max_abs_diff
from mmcl.io.checkpoints.openai import from_openai_layout
from mmcl.models import CLIP, CLIPConfig, clip, get_model_config


def twins(name: str):
    """open_clip's float32 model and mmcl's copy of it, the same random weights."""
    import open_clip

    torch.manual_seed(0)
    reference = open_clip.model.CLIP(**get_model_config(name)).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in reference.modules():  # BatchNorm statistics that change the values
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(
                    0.1 * torch.randn(module.num_features, generator=generator)
                )
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
    model = CLIP(CLIPConfig.from_dict(get_model_config(name))).eval()
    model.load_state_dict(from_openai_layout(reference.state_dict()))
    return reference, model


def inputs(size: int):
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    return images, mmcl.tokenize(["a photo of a cat", "two blue squares above a red circle"])


def assert_same_outputs(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        mine = ours[key]
        if isinstance(value, list):
            assert isinstance(mine, list) and len(mine) == len(value), key
            pairs = list(zip(mine, value, strict=True))
        else:
            pairs = [(mine, value)]
        for a, b in pairs:
            assert a.shape == b.shape, (key, a.shape, b.shape)
            assert max_abs_diff(a, b) < 1e-5, key


VIT_CASES = [
    {},
    {"indices": 1},
    {"indices": [0, -1], "output_fmt": "NLC"},
    {"indices": [0], "normalize_intermediates": True, "output_extra_tokens": True},
    {"indices": [0], "stop_early": True, "intermediates_only": True},
]


@pytest.mark.parametrize("arguments", VIT_CASES)
def test_vit_tower_equals_open_clips(arguments):
    reference, model = twins("tiny-vit")
    images, _ = inputs(model.image_size)
    with torch.no_grad():
        ours = model.visual.forward_intermediates(images, **arguments)
        theirs = reference.visual.forward_intermediates(images, **arguments)
        assert_same_outputs(ours, theirs)
        if "image_features" in ours:
            assert max_abs_diff(ours["image_features"], model.encode_image(images)) < 1e-5


@pytest.mark.parametrize(
    "arguments",
    [{}, {"indices": [4]}, {"indices": [1, 3], "intermediates_only": True, "stop_early": True}],
)
def test_resnet_tower_equals_open_clips(arguments):
    reference, model = twins("tiny-rn")
    images, _ = inputs(model.image_size)
    with torch.no_grad():
        ours = model.visual.forward_intermediates(images, **arguments)
        # open_clip's ResNet truncates its stages when stop_early is *off*: ask it for what
        # stop_early means (the same values where it is right)
        theirs = reference.visual.forward_intermediates(
            images, **{**arguments, "stop_early": not arguments.get("stop_early", False)}
        )
        assert_same_outputs(ours, theirs)
        if "image_features" in ours:
            assert max_abs_diff(ours["image_features"], model.encode_image(images)) < 1e-5


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
@pytest.mark.parametrize(
    "arguments",
    [
        {"output_logits": True, "output_logit_scale_bias": True},
        {"image_indices": 1, "text_indices": [0, -1], "normalize": False},
        {"text_indices": [-1], "normalize_intermediates": True, "intermediates_only": True},
    ],
)
def test_model_equals_open_clips_for_both_towers(name, arguments):
    reference, model = twins(name)
    images, tokens = inputs(model.image_size)
    with torch.no_grad():
        ours = model.forward_intermediates(images, tokens, **arguments)
        theirs = reference.forward_intermediates(images, tokens, **arguments)
        assert_same_outputs(ours, theirs)
        if "text_features" in ours:
            expected = model.encode_text(tokens, normalize=arguments.get("normalize", True))
            assert max_abs_diff(ours["text_features"], expected) < 1e-5


def test_hooks_see_what_forward_intermediates_returns():
    # LLaVA reads the second-to-last block's patch tokens: a hook and the API agree.
    _, model = twins("tiny-vit")
    images, _ = inputs(model.image_size)
    seen = []
    model.visual.transformer.resblocks[-2].register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        out = model.visual.forward_intermediates(images, indices=[-2], output_fmt="NLC")
    assert torch.equal(out["image_intermediates"][0], seen[0][:, 1:])


@pytest.mark.parametrize("indices", [0, 3, [2], [-3]])
def test_indices_out_of_range_are_refused(indices):
    _, model = twins("tiny-vit")  # two blocks
    images, _ = inputs(model.image_size)
    with pytest.raises(ValueError, match="indices"):
        model.visual.forward_intermediates(images, indices=indices)
    with pytest.raises(ValueError, match="output_fmt"):
        model.text.forward_intermediates(mmcl.tokenize(["a"]), output_fmt="NCHW")


def test_the_documented_examples_run():
    assert doctest.testmod(clip).failed == 0
