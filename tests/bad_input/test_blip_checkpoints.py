"""Promises about Hugging Face BLIP folders that do not fit: the error names the file and
the keys, and nothing is half-loaded."""

from __future__ import annotations

import json

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


def test_separate_encoder_decoder_weights_into_a_shared_blip_are_refused_naming_the_fix(tmp_path):
    # An mmcl file written before `share_text_weights` existed: two copies, and a config that
    # now reads as shared. Loading would keep one copy silently.
    from safetensors import safe_open

    from mmcl.io.checkpoints import save_safetensors
    from mmcl.models.blip import Blip
    from mmcl.models.blip_config import BlipConfig

    config = mmcl.create_model("tiny-blip").config.to_dict() | {"share_text_weights": False}
    save_safetensors(Blip(BlipConfig.from_dict(config)), tmp_path / "old.safetensors")
    with safe_open(tmp_path / "old.safetensors", "pt") as file:
        metadata, tensors = file.metadata(), {k: file.get_tensor(k) for k in file.keys()}
    old = {
        k: v for k, v in json.loads(metadata["mmcl_config"]).items() if k != "share_text_weights"
    }
    save_file(tensors, tmp_path / "old.safetensors", {**metadata, "mmcl_config": json.dumps(old)})
    with pytest.raises(ValueError, match="separate weights at text_encoder.*share_text_weights"):
        mmcl.load(tmp_path / "old.safetensors")
