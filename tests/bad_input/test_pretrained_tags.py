"""Bad input to pretrained tags and `hf-hub:` names: what mmcl promises.

- Offline (HF_HUB_OFFLINE=1) with the file not cached, the error names the tag, the model,
  the repository, the exact file, the cache folder, and how to put the file there
  (`hf download REPO FILE`, or pass a path); the command line says it in one line, exit 2.
- A string that is neither a file nor a tag of the model lists the model's tags, with the
  closest one.
- A tag given without a model name asks for the model name.
- `mmcl.load("ViT-B-32")` (a model name) points to `create_model(name, pretrained=TAG)`.
- A malformed `hf-hub:` name shows the expected form.
- An `hf-hub:` repository holding neither open_clip's files nor a transformers model names
  both layouts and their files.
"""

from __future__ import annotations

import pytest

import mmcl
from hf_cache import put_in_hf_cache, use_hf_home
from mmcl.cli import main


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    return use_hf_home(monkeypatch, tmp_path / "hf-home")


def test_offline_and_not_cached_names_tag_repo_file_and_remedy(hf_cache):
    with pytest.raises(FileNotFoundError) as caught:
        mmcl.create_model("ViT-B-32", pretrained="openai")
    message = str(caught.value)
    for part in (
        "pretrained='openai' of ViT-B-32",
        "open_clip_pytorch_model.bin",
        "timm/vit_base_patch32_clip_224.openai",
        str(hf_cache),
        "HF_HUB_OFFLINE is set",
        "hf download timm/vit_base_patch32_clip_224.openai open_clip_pytorch_model.bin",
        "pass the path",
    ):
        assert part in message
    assert not list(hf_cache.rglob("*.bin"))  # nothing was fetched


def test_the_command_line_says_it_in_one_line(hf_cache, tmp_path, capsys):
    (tmp_path / "texts.txt").write_text("a cat\n")
    argv = ["embed", "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k"]
    argv += ["--texts", str(tmp_path / "texts.txt"), "--output", str(tmp_path / "out.npy")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmcl embed: error: pretrained='laion2b_s34b_b79k' of ViT-B-32: ")
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.npy").exists()


def test_an_unknown_tag_lists_the_models_tags_and_the_closest(hf_cache):
    with pytest.raises(
        FileNotFoundError, match=r"not a tag of RN50: its tags are openai, .*did you mean 'yfcc15m'"
    ):
        mmcl.create_model("RN50", pretrained="yfcc15")


def test_a_tag_without_a_model_name_asks_for_it(hf_cache):
    with pytest.raises(ValueError, match=r"'openai' is a tag: name the model .*ViT-B-32"):
        mmcl.create_model(pretrained="openai")


def test_loading_a_model_name_points_to_its_tags():
    with pytest.raises(FileNotFoundError, match=r"create_model\('ViT-B-32', pretrained='openai'\)"):
        mmcl.load("ViT-B-32")


@pytest.mark.parametrize("name", ["hf-hub:", "hf-hub:no-slash", "hf-hub:org/name@"])
def test_a_malformed_hub_name_shows_the_form(name, hf_cache):
    with pytest.raises(ValueError, match="expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION"):
        mmcl.load(name)


def test_a_repository_of_neither_layout_names_both(hf_cache):
    put_in_hf_cache(hf_cache, "test-org/readme-only", {"README.md": b"# nothing here"})
    with pytest.raises(FileNotFoundError) as caught:
        mmcl.load("hf-hub:test-org/readme-only")
    message = str(caught.value)
    assert (
        "open_clip_config.json with open_clip_model.safetensors or open_clip_pytorch_model.bin"
        in message
    )
    assert "config.json with model.safetensors or pytorch_model.bin" in message
    assert "hf download test-org/readme-only" in message
