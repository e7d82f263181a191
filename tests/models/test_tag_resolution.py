"""Pretrained tags and `hf-hub:` names, resolved through a Hugging Face cache laid out as
`huggingface_hub` lays it out (tests/hf_cache.py), offline: nothing is downloaded.

The weights are random, written in each published format from an open_clip model (the
independent reference for the outputs). The tags of the real registry point at real
architectures too large for quick tests: they are checked as data (against open_clip's own
list) and as resolution (the exact file found in the cache); models are built from tiny tags
added to the registry for the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import open_clip
import pytest
import torch
from safetensors.torch import save_file

import mmcl
from conftest import max_abs_diff
from hf_cache import COMMIT, put_in_hf_cache, use_hf_home
from mmcl.cli import main
from mmcl.io.checkpoints.openai import to_openai_layout
from mmcl.models import get_model_config, pretrained
from mmcl.models.pretrained import PretrainedTag, find_tag, list_pretrained, resolve_pretrained

TINY = "tiny-vit"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    return use_hf_home(monkeypatch, tmp_path / "hf-home")


def add_tags(monkeypatch, *entries: PretrainedTag) -> None:
    """The registry, with `entries` added (keyed as `pretrained.json` is read)."""
    real = pretrained._tags()
    merged = {model: dict(tags) for model, tags in real.items()}
    for entry in entries:
        merged.setdefault(entry.model, {})[entry.tag.lower()] = entry
    monkeypatch.setattr(pretrained, "_tags", lambda: merged)


def open_clip_tiny(quick_gelu: bool, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return open_clip.model.CLIP(**get_model_config(TINY), quick_gelu=quick_gelu).eval()


def assert_same_outputs(ours, reference, tolerance=1e-5):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens = mmcl.tokenize(["a diagram", "a dog playing with a ball", ""])
    with torch.no_grad():
        assert max_abs_diff(ours.encode_image(images), reference.encode_image(images)) <= tolerance
        assert max_abs_diff(ours.encode_text(tokens), reference.encode_text(tokens)) <= tolerance


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[key], sb[key]) for key in sa)


# --- the registry as data ------------------------------------------------------------------


def test_the_tags_are_open_clips_for_the_models_mmcl_has():
    theirs = {(name, tag) for name, tag in open_clip.list_pretrained()}
    ours = list_pretrained()
    assert ("ViT-B-32", "openai") in ours and ("ViT-B-32", "laion2b_s34b_b79k") in ours
    assert len(ours) > 50
    for name, tag in ours:
        assert (name, tag) in theirs
        entry = find_tag(name, tag)
        cfg = open_clip.get_pretrained_cfg(name, tag)
        assert entry.repo == cfg["hf_hub"].rstrip("/")
        assert entry.quick_gelu == cfg.get("quick_gelu", False)
        assert entry.filename == "open_clip_pytorch_model.bin"  # open_clip's default file
        assert tuple(cfg["mean"]) == open_clip.OPENAI_DATASET_MEAN  # mmcl's preprocessing


def test_the_issues_two_examples():
    openai = find_tag("ViT-B-32", "openai")
    assert (openai.repo, openai.filename) == (
        "timm/vit_base_patch32_clip_224.openai",
        "open_clip_pytorch_model.bin",
    )
    laion = find_tag("ViT-B-32", "laion2b_s34b_b79k")
    assert laion.repo == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" and not laion.quick_gelu


def test_quickgelu_names_take_the_quickgelu_tags_of_their_base_name():
    assert find_tag("ViT-B-32-quickgelu", "openai") == find_tag("ViT-B-32", "openai")
    assert find_tag("ViT-B/32", "OpenAI") == find_tag("ViT-B-32", "openai")  # alias, any case
    assert find_tag("ViT-B-32-quickgelu", "laion2b_s34b_b79k") is None  # trained with GELU
    theirs = {tag for name, tag in open_clip.list_pretrained() if name == "ViT-B-32-quickgelu"}
    assert {tag for _, tag in list_pretrained("ViT-B-32-quickgelu")} == theirs


# --- resolution through the cache ----------------------------------------------------------


def test_a_tag_resolves_to_its_file_in_the_cache(hf_cache):
    snapshot = put_in_hf_cache(
        hf_cache, "timm/vit_base_patch32_clip_224.openai", {"open_clip_pytorch_model.bin": b"x"}
    )
    resolved = resolve_pretrained("ViT-B-32", "openai")
    assert resolved.path == snapshot / "open_clip_pytorch_model.bin"
    assert resolved.overrides == {"quick_gelu": True}


def test_a_new_process_honours_hf_home_and_hf_hub_offline(tmp_path):
    home = tmp_path / "elsewhere"
    snapshot = put_in_hf_cache(
        home / "hub", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", {"open_clip_pytorch_model.bin": b"x"}
    )
    code = (
        "import sys\n"
        "from mmcl.models.pretrained import resolve_pretrained\n"
        "print(resolve_pretrained('ViT-B-32', 'laion2b_s34b_b79k').path)\n"
        "print('torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    path, torch_loaded = result.stdout.split()
    assert path == str(snapshot / "open_clip_pytorch_model.bin")
    assert torch_loaded == "False"  # finding weights does not load torch


@pytest.mark.parametrize(
    "published, quick_gelu",
    [("openai-fp16.pt", True), ("open_clip_pytorch_model.bin", False), ("model.safetensors", True)],
)
def test_a_tag_loads_each_published_format(published, quick_gelu, hf_cache, tmp_path, monkeypatch):
    reference = open_clip_tiny(quick_gelu)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    file = tmp_path / published
    if published.startswith("openai"):  # OpenAI released fp16 weights
        reference = reference.half().float()
        state = {k: v.half() for k, v in reference.state_dict().items()}
        torch.save(to_openai_layout(state), file)
    elif published.endswith(".safetensors"):
        save_file(state, str(file))
    else:
        torch.save(state, file)
    put_in_hf_cache(hf_cache, "test-org/tiny", {published: file})
    add_tags(monkeypatch, PretrainedTag(TINY, "Weights", "test-org/tiny", published, quick_gelu))

    model = mmcl.create_model(TINY, pretrained="weights")

    assert model.config.quick_gelu == quick_gelu  # the tag's activation, not tiny-vit's GELU
    assert_same_state(model, mmcl.create_model(TINY, pretrained=file, quick_gelu=quick_gelu))
    assert_same_outputs(model, reference)


def test_create_model_and_load_take_an_open_clip_repository(hf_cache, tmp_path):
    reference = open_clip_tiny(quick_gelu=True)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "w"))
    config = {"model_cfg": {**get_model_config(TINY), "quick_gelu": True}, "preprocess_cfg": {}}
    put_in_hf_cache(
        hf_cache,
        "test-org/tiny-open-clip",
        {
            "open_clip_config.json": json.dumps(config).encode(),
            "open_clip_model.safetensors": tmp_path / "w",
        },
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the config names the activation: nothing assumed
        model, preprocess = mmcl.load("hf-hub:test-org/tiny-open-clip")
        pinned = mmcl.create_model(pretrained=f"hf-hub:test-org/tiny-open-clip@{COMMIT}")
    assert model.config.quick_gelu and model.image_size == 32
    assert_same_outputs(model, reference)
    assert_same_state(model, pinned)


def test_load_takes_a_transformers_repository(hf_cache, tmp_path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    text = {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 2}
    vision = {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 2}
    vision.update(image_size=32, patch_size=8)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    config.text_config.num_hidden_layers = config.vision_config.num_hidden_layers = 1
    CLIPModel(config).save_pretrained(tmp_path / "hf")
    files = {p.name: p for p in (tmp_path / "hf").iterdir()}
    put_in_hf_cache(hf_cache, "test-org/tiny-transformers", files)

    model, _ = mmcl.load("hf-hub:test-org/tiny-transformers")

    assert_same_outputs(model, mmcl.create_model(pretrained=tmp_path / "hf"), tolerance=0)


def test_models_pretrained_lists_the_tags_and_what_the_cache_holds(hf_cache, capsys):
    put_in_hf_cache(
        hf_cache, "timm/vit_base_patch32_clip_224.openai", {"open_clip_pytorch_model.bin": b"x"}
    )
    assert main(["models", "--pretrained", "--filter", "ViT-B-32"]) == 0
    rows = {
        tuple(line.split()[:3]): line.split()[-1] for line in capsys.readouterr().out.splitlines()
    }
    assert rows[("ViT-B-32", "openai", "QuickGELU")] == "yes"
    assert rows[("ViT-B-32", "laion2b_s34b_b79k", "GELU")] == "no"
    assert not any(name == "ViT-L-14" for name, *_ in rows)
