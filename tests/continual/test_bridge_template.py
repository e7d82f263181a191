"""A continual run on a bridge folder talks to it in the chat template it was trained with:
the llava-scenes recipes train without a system text, and their tokenizer cannot spell
Vicuna's."""

from __future__ import annotations

from transformers import AutoTokenizer

import mmcl
from mmcl.continual.generative import conversation_encoder
from mmcl.data.chat_template import VICUNA_SYSTEM, ChatTemplate
from mmcl.recipe_bridges import save_llava_folder
from mmcl.train.bridges import build_llava

SPEC = {"lm": {"hidden_size": 32, "num_hidden_layers": 1}, "vocab_size": 200}


def _folder(tmp_path, system: str):
    template = ChatTemplate(system=system)
    model, tokenizer = build_llava({**SPEC, "tokenizer_text_size": 40}, "test", template)
    save_llava_folder(model, tokenizer, tmp_path / "hf", template)
    return mmcl.load(tmp_path / "hf")[0], AutoTokenizer.from_pretrained(tmp_path / "hf")


def test_a_folder_trained_without_a_system_text_is_asked_without_one(tmp_path):
    model, tokenizer = _folder(tmp_path, "")
    encoder = conversation_encoder(model, tokenizer)
    assert encoder.template.system == ""
    ids = encoder.encode_prompt([], "<image>\nwhat colour is the star?")
    # nothing before the user's turn but the BOS token
    user = tokenizer("USER:", add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[1 : 1 + len(user)] == user


def test_a_folder_with_vicunas_system_text_keeps_it(tmp_path):
    model, tokenizer = _folder(tmp_path, VICUNA_SYSTEM)
    assert conversation_encoder(model, tokenizer).template.system == VICUNA_SYSTEM
