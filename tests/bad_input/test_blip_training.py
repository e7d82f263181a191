"""Bad input to BLIP training: what mmcl promises.

- `train.loss: blip` on a model that is not a BLIP with its text encoder, decoder, ITC and ITM
  parts is a ValueError naming the parts it lacks and a model that has them (tiny-blip).
- A model folder whose WordPiece vocabulary does not fit the model (special ids or size) is a
  ValueError naming the tokenizer file and each id that differs, before any use: a model
  read with another vocabulary would silently produce garbage.
- A config naming a vocabulary mmcl does not ship is a ValueError listing the shipped ones.
- A convolutional stem whose stride-2 steps do not divide the patch size is a ValueError
  naming both; a model with a stem exported to Hugging Face's layout (which has none) is a
  CheckpointError saying to export mmcl safetensors.
- Captions longer, with the prompt, than the model's positions are a ValueError saying to
  tokenize shorter.
"""

from __future__ import annotations

import pytest
import torch

import mmcl
from mmcl.io.checkpoints import CheckpointError, save_huggingface, save_safetensors
from mmcl.train.blip_objective import BlipObjective

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def test_loss_blip_on_a_clip_model_names_what_it_needs():
    with pytest.raises(ValueError, match=r"needs a BLIP with its text encoder.*tiny-blip"):
        BlipObjective().check(mmcl.create_model("tiny-vit"))


def test_loss_blip_on_a_blip_without_a_part_names_the_missing_parts():
    captioner = mmcl.create_model("tiny-blip", parts=["text_decoder"])
    with pytest.raises(ValueError, match=r"lacks \['text_encoder', 'itc', 'itm'\]"):
        BlipObjective().check(captioner)


def test_a_folder_whose_vocabulary_does_not_fit_the_model_is_refused_naming_the_file(tmp_path):
    save_safetensors(mmcl.create_model("tiny-blip"), tmp_path / "model.safetensors")
    # A BERT vocabulary with [PAD] at 1, where the model pads with 0.
    tokens = ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]", "red", "star"]
    (tmp_path / "vocab.txt").write_text("".join(f"{t}\n" for t in tokens))
    with pytest.raises(ValueError, match=r"vocab.txt: .*\[PAD\] is 1, the model's 0"):
        mmcl.load(tmp_path / "model.safetensors")


def test_an_unknown_shipped_vocabulary_lists_the_shipped_ones():
    with pytest.raises(ValueError, match=r"'zoo' is not a shipped vocabulary \(scenes\)"):
        mmcl.create_model("tiny-blip", blip_text={"vocabulary": "zoo"})


def test_captions_longer_than_the_positions_say_to_tokenize_shorter():
    model = mmcl.create_model("tiny-blip")  # 32 positions; the prompt adds 3 tokens
    texts = torch.full((2, 31), 20)
    texts[:, 0], texts[:, -1] = 2, 3
    with pytest.raises(ValueError, match=r"34 tokens with the prompt exceed the model's 32"):
        BlipObjective()(model, torch.randn(2, 3, 32, 32), texts)


def test_a_stem_that_does_not_divide_the_patch_names_both():
    with pytest.raises(ValueError, match=r"patch_size 8 is not a multiple of the 16"):
        mmcl.create_model("tiny-blip", blip_vision={"conv_stem": [8, 8, 8, 8]})


def test_a_model_with_a_stem_is_not_exported_to_hugging_face(tmp_path):
    model = mmcl.create_model("tiny-blip", blip_vision={"conv_stem": [8]}, parts=["text_decoder"])
    with pytest.raises(CheckpointError, match=r"no convolutional stem.*mmcl safetensors"):
        save_huggingface(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
