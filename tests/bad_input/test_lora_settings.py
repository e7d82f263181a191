"""Bad LoRA settings (`model.lora` in a LLaVA recipe, or `mmcl.nn.lora.add_lora`): what mmcl
promises.

- LoRA modules that match no layer of the target part are one error naming the part and
  listing the names of its linear layers to choose from.
- A target that is not a part of the model is one error listing the model's parts.
- An unknown entry (e.g. `rank` for `r`) is one error naming the source and the entries
  there are.
"""

from __future__ import annotations

import pytest
import torch

from mmcl.models.bridges.llava import Llava, LlavaConfig
from mmcl.nn.lora import LoraSpec, add_lora

LM = {"model_type": "llama", "vocab_size": 50, "hidden_size": 32, "intermediate_size": 64}
LM |= {"num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}
VISION = {"image_size": 32, "patch_size": 16, "width": 32, "layers": 2, "head_width": 16}


def tiny_llava() -> Llava:
    torch.manual_seed(0)
    return Llava(
        LlavaConfig.from_dict({"llava_vision": VISION, "language_model": LM, "image_token_id": 49})
    )


def test_lora_modules_matching_nothing_list_the_parts_linear_layers():
    spec = LoraSpec.from_dict({"target": "lm", "modules": ["nope_proj"]}, "recipe: model.lora")
    with pytest.raises(ValueError, match=r"match nothing in language_model.*'q_proj'"):
        add_lora(tiny_llava(), spec, "recipe: model.lora")


def test_lora_target_that_is_no_part_lists_the_parts():
    spec = LoraSpec.from_dict({"target": "decoder"}, "recipe: model.lora")
    with pytest.raises(ValueError, match=r"no part 'decoder'.*'language_model'"):
        add_lora(tiny_llava(), spec, "recipe: model.lora")


def test_unknown_lora_entry_is_named():
    with pytest.raises(ValueError, match=r"recipe: model.lora: unknown LoRA entries \['rank'\]"):
        LoraSpec.from_dict({"rank": 4}, "recipe: model.lora")
