"""`create_model(pretrained=...)` builds the model without a random initialisation (meta device)
and gives, tensor for tensor, what initialising, loading and casting gave."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import mmcl
from mmcl.io.checkpoints import load_checkpoint, save_open_clip
from mmcl.models import CLIP, CLIPConfig, factory, get_model_config
from mmcl.models.factory import build_pretrained, load_state_dict_strict

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def plain_way(name: str, path, dtype: torch.dtype) -> CLIP:
    """What `create_model` did before: initialise at random, load, cast."""
    model = CLIP(CLIPConfig.from_dict(get_model_config(name)))
    load_state_dict_strict(model, load_checkpoint(path).state_dict, str(path))
    return model.to(dtype).eval()


def assert_same_tensors(model: torch.nn.Module, expected: torch.nn.Module) -> None:
    ours, theirs = model.state_dict(), expected.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype, key
        assert ours[key].is_contiguous(), key
        assert torch.equal(ours[key], theirs[key]), key


def random_checkpoint(name: str, path, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    source = mmcl.create_model(name)
    for module in source.modules():  # batch statistics that are not the defaults
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.normal_()
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
@pytest.mark.parametrize("file_dtype", [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_loaded_model_equals_initialise_load_cast(name, file_dtype, precision, tmp_path):
    path = random_checkpoint(name, tmp_path / "weights.safetensors", file_dtype)
    model = mmcl.create_model(name, pretrained=path, precision=precision)
    assert_same_tensors(model, plain_way(name, path, PRECISIONS[precision]))
    assert not model.training
    assert all(p.requires_grad and p.is_leaf for p in model.parameters())
    if name == "tiny-rn":  # never loaded from files: a fresh BatchNorm's count
        counts = [b for k, b in model.named_buffers() if k.endswith("num_batches_tracked")]
        assert counts and all(int(c) == 0 and c.dtype == torch.long for c in counts)


def test_open_clip_layout_loads_the_same(tmp_path):
    source = mmcl.create_model("tiny-vit")
    path = save_open_clip(source, tmp_path / "open_clip.pt")
    model = mmcl.create_model("tiny-vit", pretrained=path, precision="bf16")
    assert_same_tensors(model, plain_way("tiny-vit", path, torch.bfloat16))


def test_weights_are_the_models_own(tmp_path):
    # safetensors files are memory-mapped: the parameters must not stay views of the file.
    path = random_checkpoint("tiny-vit", tmp_path / "weights.safetensors")
    model = mmcl.create_model("tiny-vit", pretrained=path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    random_checkpoint("tiny-vit", path, torch.float64)  # rewritten in place, other values
    with open(path, "r+b") as handle:
        handle.seek(-4096, 2)
        handle.write(bytes(4096))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_loaded_model_trains(tmp_path):
    path = random_checkpoint("tiny-vit", tmp_path / "weights.safetensors")
    model = mmcl.create_model("tiny-vit", pretrained=path).train()
    images, texts = torch.randn(2, 3, 32, 32), mmcl.tokenize(["a", "b"])
    image_features, text_features, scale = model(images, texts)
    (scale * image_features @ text_features.T).sum().backward()
    assert all(p.grad is not None for p in model.visual.parameters())


def test_state_outside_the_state_dict_falls_back_to_the_plain_way(tmp_path, monkeypatch):
    class WithCache(CLIP):
        def __init__(self, config, output_dict=False):
            super().__init__(config, output_dict)
            self.register_buffer("cache", torch.arange(3.0), persistent=False)

    monkeypatch.setattr(factory, "CLIP", WithCache)
    path = random_checkpoint("tiny-vit", tmp_path / "weights.safetensors")
    checkpoint = load_checkpoint(path)
    config = CLIPConfig.from_dict(get_model_config("tiny-vit"))
    model = build_pretrained(config, checkpoint.state_dict, str(path), torch.bfloat16)
    assert isinstance(model, WithCache) and torch.equal(model.cache, torch.arange(3.0))
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert_same_tensors(model.eval(), plain_way("tiny-vit", path, torch.bfloat16))


def test_no_random_initialisation_when_loading(tmp_path, monkeypatch):
    path = random_checkpoint("tiny-rn", tmp_path / "weights.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("initialised at random, then loaded")

    def only_on_meta(init):
        def checked(tensor, *args, **kwargs):
            assert tensor.is_meta, "initialised real memory"
            return init(tensor, *args, **kwargs)

        return checked

    monkeypatch.setattr(factory, "load_state_dict_strict", refuse)
    for name in ("normal_", "kaiming_uniform_", "uniform_", "zeros_", "ones_"):
        monkeypatch.setattr(torch.nn.init, name, only_on_meta(getattr(torch.nn.init, name)))
    model = mmcl.create_model("tiny-rn", pretrained=path, precision="bf16")
    monkeypatch.undo()
    assert_same_tensors(model, plain_way("tiny-rn", path, torch.bfloat16))
