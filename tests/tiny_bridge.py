"""A tiny LLaVA-style bridge for the continual tests: the tiny-vit tower (32-pixel images,
16 image tokens), a 1-layer LLaMA of width 32, and a tokenizer trained on a little scene
text (digits and the chat template included), built in about a second."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch

from mmcl.recipe_bridges import save_llava_folder
from mmcl.train.bridges import build_llava, set_trainable

SPEC = {
    "tower": "tiny-vit",
    "vocab_size": 200,
    "tokenizer_text_size": 40,
    "lm": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
    },
}


def tiny_bridge():
    """`(model, tokenizer)`: seeded, projector and LM trainable (the tower frozen); a fresh
    copy of one model built once a process."""
    model, tokenizer = _built()
    return copy.deepcopy(model), tokenizer


@functools.cache
def _built():
    torch.manual_seed(0)
    model, tokenizer = build_llava(dict(SPEC), "tiny bridge")
    set_trainable(model, ["projector", "language_model"], "tiny bridge")
    return model, tokenizer


def tiny_bridge_folder(folder: Path) -> Path:
    """The tiny bridge as a Hugging Face LLaVA folder with its tokenizer."""
    model, tokenizer = tiny_bridge()
    return save_llava_folder(model, tokenizer, folder)
