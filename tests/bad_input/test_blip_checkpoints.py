"""Promises about Hugging Face BLIP folders that do not fit: the error names the file and
the keys, and nothing is half-loaded."""

from __future__ import annotations

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import mmcl
from mmcl.io.checkpoints import CheckpointError

VISION = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=16,
    patch_size=8,
)
TEXT = dict(
    vocab_size=30,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=12,
    encoder_hidden_size=16,
    bos_token_id=28,
)


def blip_folder(tmp_path):
    config = transformers.BlipConfig(vision_config=VISION, text_config=TEXT)
    transformers.BlipForImageTextRetrieval(config).save_pretrained(tmp_path)
    return tmp_path, load_file(tmp_path / "model.safetensors")


def test_blip_folder_with_a_missing_key_fails_naming_file_and_key(tmp_path):
    folder, tensors = blip_folder(tmp_path)
    del tensors["itm_head.weight"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(
        CheckpointError, match=rf"(?s){tmp_path.name}.*missing keys.*itm_head\.weight"
    ):
        mmcl.load(folder)


def test_blip_folder_with_an_unexpected_key_fails_naming_file_and_key(tmp_path):
    folder, tensors = blip_folder(tmp_path)
    tensors["extra_head.weight"] = torch.zeros(2)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"(?s){tmp_path.name}.*unexpected.*extra_head"):
        mmcl.load(folder)


def test_blip_folder_of_an_unknown_blip_class_is_refused_by_name(tmp_path):
    folder, _ = blip_folder(tmp_path)
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text.replace("BlipForImageTextRetrieval", "BlipModel"))
    with pytest.raises(CheckpointError, match="config.json's architectures.*BlipModel"):
        mmcl.load(folder)
