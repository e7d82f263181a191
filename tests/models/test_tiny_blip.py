"""tiny-blip by name: a BLIP with the shipped WordPiece vocabulary of the scene texts, which
is what `train_wordpiece` makes of them; the factory's CLIP/CoCa-only helpers skip BLIP."""

from __future__ import annotations

import doctest

import pytest
import torch

import mmcl
from mmcl.data.scene_qa import scene_texts
from mmcl.io.checkpoints import save_safetensors
from mmcl.io.wordpiece import train_wordpiece
from mmcl.models import factory
from mmcl.models.blip import Blip
from mmcl.models.blip_vocab import SHIPPED

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def test_tiny_blip_builds_by_name_with_every_part_and_its_tokenizer():
    model = mmcl.create_model("tiny-blip")
    assert isinstance(model, Blip)
    assert set(model.config.parts) == {"text_encoder", "text_decoder", "itc", "itm"}
    tokenizer = model.tokenizer
    assert tokenizer.vocab_size == model.config.blip_text.vocab_size == 164
    text = model.config.blip_text
    assert (tokenizer.pad_token_id, tokenizer.sep_token_id) == (text.pad_id, text.sep_id)
    assert (tokenizer.dec_token_id, tokenizer.enc_token_id) == (text.dec_id, text.enc_id)
    # Every word of the scene captions is one piece: "two", "red", "stars" -> 3 ids.
    assert tokenizer.encode("two red stars") == [
        tokenizer._tokenizer.token_to_id(word) for word in ("two", "red", "stars")
    ]


def test_the_shipped_vocabulary_is_what_training_on_the_scene_texts_makes(tmp_path):
    fresh = train_wordpiece(scene_texts(5000), vocab_size=4000, context_length=29)
    fresh.save(tmp_path)
    for name in ("vocab.txt", "tokenizer_config.json"):
        assert (SHIPPED / "scenes" / name).read_text() == (tmp_path / name).read_text()


def test_clip_helpers_of_the_factory_skip_blip_configs():
    # Both walk every registered config; a BLIP config is neither CLIP nor CoCa.
    assert factory._same_shapes(mmcl.create_model("tiny-vit").config) == ["tiny-vit"]
    assert all(type(c).__name__ == "CoCaConfig" for c in factory._coca_configs())


def test_a_saved_file_loads_with_the_tokenizer_beside_it_else_the_shipped_one(tmp_path):
    model = mmcl.create_model("tiny-blip")
    save_safetensors(model, tmp_path / "alone" / "model.safetensors")
    loaded, _ = mmcl.load(tmp_path / "alone" / "model.safetensors")
    assert loaded.tokenizer.source.endswith("tokenizer.json")  # the shipped one, by config
    assert "vocabularies" in loaded.tokenizer.source
    images = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images))

    save_safetensors(model, tmp_path / "run" / "model.safetensors")
    model.tokenizer.save(tmp_path / "run")
    loaded, _ = mmcl.load(tmp_path / "run")  # the folder itself
    assert loaded.tokenizer.source == str(tmp_path / "run" / "tokenizer.json")


def test_the_module_example_runs():
    from mmcl.models import blip_vocab

    assert doctest.testmod(blip_vocab).failed == 0


def test_a_convolutional_stem_keeps_the_token_grid_and_round_trips(tmp_path):
    model = mmcl.create_model("tiny-blip", blip_vision={"conv_stem": [8, 16]})
    stem = [m for m in model.visual.stem if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride) for c in stem] == [
        (3, 8, (2, 2)),
        (8, 16, (2, 2)),
    ]
    # 32 px / 2 / 2 = 8 px, then 2x2 patches: the 4x4 grid of plain 8x8 patches, + class token.
    assert model.visual.conv1.kernel_size == (2, 2)
    images = torch.randn(2, 3, 32, 32)
    assert model.encode_image_tokens(images).shape == (2, 17, 64)
    save_safetensors(model, tmp_path / "model.safetensors")
    loaded, _ = mmcl.load(tmp_path / "model.safetensors")
    assert loaded.config.blip_vision.conv_stem == (8, 16)
    torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images))
