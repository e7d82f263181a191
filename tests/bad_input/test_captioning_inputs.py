"""Bad input to CoCa and the generation loop: what mmcl promises.

- A CoCa checkpoint with missing, unexpected or mis-shaped tensors is refused whole (nothing
  loads), in an error that names the file and the keys.
- Exporting a CoCa to the Hugging Face layout is refused (there is no such class), naming the
  formats that work.
- A CoCa config whose towers do not fit its decoder is refused, naming the widths.
- Texts longer than CoCa's context are refused, naming the context length to tokenize with.
- Beam search and sampling together, or out-of-range generation settings, are one-line errors.
"""

from __future__ import annotations

import pytest
import torch

import mmcl
from conftest import open_clip_coca, tiny_coca_config
from mmcl.io.checkpoints import CheckpointError, save_huggingface
from mmcl.models import CoCa, CoCaConfig
from mmcl.nn import KVCache
from mmcl.nn.generation import generate


def test_truncated_coca_state_dict_names_the_file_and_missing_keys(tmp_path):
    state = open_clip_coca(tiny_coca_config()).state_dict()
    del state["text_decoder.cross_attn.1.attn.in_proj_bias"]
    state["text_decoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "truncated.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        mmcl.load(path)
    message = str(error.value)
    assert str(path) in message
    assert "missing keys (1): text_decoder.cross_attn.1.attn.in_proj_bias" in message
    assert "unexpected keys (1): text_decoder.extra.weight" in message


def test_mis_shaped_coca_tensor_is_refused_naming_it(tmp_path):
    state = open_clip_coca(tiny_coca_config()).state_dict()
    state["text.cls_emb"] = torch.zeros(7)
    torch.save(state, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match=r"wrong\.pt.*\n.*text\.cls_emb: file \(7,\)"):
        mmcl.load(tmp_path / "wrong.pt")


def test_coca_export_to_hugging_face_is_refused(tmp_path):
    model = CoCa(CoCaConfig.from_dict(tiny_coca_config()))
    with pytest.raises(CheckpointError, match="no CoCa model class.*open_clip"):
        save_huggingface(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_coca_config_with_a_decoder_of_another_width_is_refused():
    config = tiny_coca_config()
    config["multimodal_cfg"]["width"] = 40
    with pytest.raises(ValueError, match="image tokens are 24 wide but multimodal_cfg.width is 40"):
        CoCaConfig.from_dict(config, source="my.json")


def test_texts_longer_than_the_context_are_refused_naming_the_length():
    model = CoCa(CoCaConfig.from_dict(tiny_coca_config()))
    with pytest.raises(ValueError, match="tokenize with context_length=10"):
        model.encode_text(torch.ones(1, 11, dtype=torch.long))
    # Padding alone past the context is what tokenizing to the context gives: accepted.
    padded = torch.cat(
        [torch.ones(1, 10, dtype=torch.long), torch.zeros(1, 67, dtype=torch.long)], 1
    )
    assert torch.equal(model.encode_text(padded), model.encode_text(padded[:, :10]))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"beams": 3, "top_p": 0.9}, "sampling and beam search do not combine"),
        ({"top_p": 1.5}, r"top_p must be in \[0, 1\]"),
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ({"temperature": 0.0}, "temperature must be positive"),
        ({"min_new_tokens": 9}, "min_new_tokens must be in"),
        ({"end_token": ()}, "end_token: give at least one"),
    ],
)
def test_generation_settings_out_of_range_are_one_line_errors(settings, message):
    arguments = {"max_new_tokens": 5, "end_token": 1, **settings}

    def step(tokens, cache):
        raise AssertionError("no step may run on bad settings")

    with pytest.raises(ValueError, match=message):
        generate(step, torch.zeros(2, 1, dtype=torch.long), KVCache(), **arguments)
