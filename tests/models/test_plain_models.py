"""The towers are plain: every submodule is called as a module, so a forward hook on any module
fires, and a replaced submodule is used, in every precision and grad mode."""

import pytest
import torch

import mmcl

CONTAINERS_WITHOUT_FORWARD = (torch.nn.ModuleList, torch.nn.ModuleDict)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("grad", [False, True])
def test_a_hook_on_every_module_fires(name, precision, grad):
    model = mmcl.create_model(name, precision=precision).requires_grad_(grad)
    fired = set()
    for module_name, module in model.named_modules():
        if module_name:  # the model itself: its forward is called below
            module.register_forward_hook(
                lambda m, args, out, module_name=module_name: fired.add(module_name)
            )
    images = torch.randn(2, 3, model.image_size, model.image_size)
    tokens = mmcl.tokenize(["a red circle", "two blue squares"])
    with torch.set_grad_enabled(grad):
        model(images, tokens)
    weighted = {
        n for n, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None
    }
    assert len(weighted) > 20
    callable_modules = {
        n for n, m in model.named_modules() if n and not isinstance(m, CONTAINERS_WITHOUT_FORWARD)
    }
    missing = callable_modules - fired
    assert not missing, sorted(missing)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_replaced_patch_embedding_is_used(precision):
    model = mmcl.create_model("tiny-vit", precision=precision).requires_grad_(False)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model.encode_image(images)
        conv1 = model.visual.conv1
        model.visual.conv1 = torch.nn.Sequential(conv1, torch.nn.Identity())
        assert torch.equal(model.encode_image(images), before)
        model.visual.conv1 = torch.nn.Sequential(conv1, torch.nn.Hardtanh(-0.01, 0.01))
        assert not torch.equal(model.encode_image(images), before)
