"""Bad input to BLIP-2: what mmcl promises.

- Text whose image placeholders do not number one per query (and are not absent) is refused,
  naming the count needed, the token id and the counts found.
- Beam search and nucleus sampling asked for together are refused in one line: choose one.
- A Hugging Face BLIP-2 folder of a class mmcl does not read is refused, naming the file and
  the one class it reads.
- A stage-1 model (the Q-Former with its text part) exported to Hugging Face is refused,
  naming the way out (mmcl safetensors).
- A BLIP-2 given an instruction, or an InstructBLIP given none, says which it is and what it
  takes.
- An InstructBLIP training sample with an empty answer is an error naming the sample, not a
  row that silently takes no loss.
"""

from __future__ import annotations

import json

import pytest
import torch

import mmcl
from mmcl.io.checkpoints import CheckpointError, save_huggingface
from mmcl.models.bridges.blip2 import Blip2, Blip2Config
from mmcl.train.instruction_packing import pack_for_training

CONFIG = {
    "blip_vision": {
        "image_size": 16,
        "patch_size": 8,
        "width": 16,
        "layers": 1,
        "heads": 2,
        "mlp_width": 32,
    },
    "qformer": {
        "width": 16,
        "layers": 1,
        "heads": 2,
        "mlp_width": 32,
        "queries": 2,
        "vocab_size": None,
    },
    "text_config": {
        "model_type": "llama",
        "vocab_size": 30,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    },
    "image_token_id": 29,
}


def tiny(**changes) -> Blip2:
    torch.manual_seed(0)
    return Blip2(Blip2Config.from_dict({**CONFIG, **changes})).eval()


def test_placeholders_must_number_one_per_query_or_none():
    model = tiny()
    with pytest.raises(ValueError, match=r"2 image tokens \(id 29\).*found \[1, 2\]"):
        model(torch.randn(2, 3, 16, 16), torch.tensor([[29, 5, 6], [29, 29, 5]]))


def test_beam_search_with_top_p_is_refused_saying_to_choose_one():
    with pytest.raises(ValueError, match="sampling and beam search do not combine; choose one"):
        tiny().generate(torch.randn(1, 3, 16, 16), max_new_tokens=2, beams=2, top_p=0.9)


def test_a_blip2_folder_of_another_class_is_refused_naming_the_class_read(tmp_path):
    save_huggingface(tiny(), tmp_path / "hf")
    config_file = tmp_path / "hf" / "config.json"
    config = json.loads(config_file.read_text())
    config["architectures"] = ["Blip2ForImageTextRetrieval"]
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"hf.*Blip2ForConditionalGeneration"):
        mmcl.load(tmp_path / "hf")


def test_a_stage1_qformer_is_not_exported_to_hugging_face(tmp_path):
    model = tiny(qformer={**CONFIG["qformer"], "vocab_size": 40})
    with pytest.raises(CheckpointError, match="mmcl safetensors"):
        save_huggingface(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_an_empty_answer_is_an_error_not_a_silent_zero_loss():
    with pytest.raises(ValueError, match="answer 1 is empty"):
        pack_for_training([[1], [2]], [[3], []], 4, 4, pad_id=0)


def test_a_blip2_refuses_an_instruction_and_an_instructblip_needs_one():
    images, text = torch.randn(1, 3, 16, 16), torch.tensor([[5, 6]])
    with pytest.raises(ValueError, match="reads no instruction"):
        tiny()(images, text, instruction=torch.tensor([[3, 4]]))
    instruct = tiny(instruct=True, qformer={**CONFIG["qformer"], "vocab_size": 40})
    with pytest.raises(ValueError, match="InstructBLIP needs the instruction"):
        instruct(images, text)
