"""The system text of a LLaVA folder: written into the tokenizer's chat template by the
recipes' `save_llava_folder`, read back by `mmcl ask`, overridden by `--system`. It reaches
the prompt exactly once, and training masks it; token layouts worked out by hand with a
one-word-one-id tokenizer."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

import mmcl
from mmcl.cli import main as cli_main
from mmcl.data.chat_template import (
    IGNORE_INDEX,
    ChatTemplate,
    ConversationEncoder,
    system_text,
)
from mmcl.data.conversations import Conversation
from mmcl.models.bridges.llava import Llava
from mmcl.recipe_bridges import save_llava_folder
from tiny_llava import image_file
from word_tokenizer import word_tokenizer

# ids: <pad> 0, <s> 1, </s> 2, <unk> 3, then these from 4
WORDS = ["be", "brief", "terse", "USER:", "ASSISTANT:", "what", "colour?", "red", "<image>"]
BE, BRIEF, TERSE, USER, ASSISTANT, WHAT, COLOUR, RED, IMAGE = range(4, 13)
_ = IGNORE_INDEX


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny LLaVA folder written as the recipes write it, trained with system "be brief"."""
    root = tmp_path_factory.mktemp("system")
    tokenizer = word_tokenizer(WORDS)
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
    )
    text = LlamaConfig(
        vocab_size=16,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE)
    LlavaForConditionalGeneration(config).save_pretrained(root / "plain")
    model = mmcl.load(root / "plain")[0]
    assert isinstance(model, Llava) and model.tokens_per_image == 4
    save_llava_folder(model, tokenizer, root / "hf", ChatTemplate(system="be brief"))
    return root / "hf", image_file(root / "x.png")


def prompt_of_ask(folder, image, monkeypatch, *argv) -> list[int]:
    """The ids `mmcl ask` puts before the LM for one question."""
    seen = []
    embed = Llava.embed
    monkeypatch.setattr(
        Llava, "embed", lambda self, ids, *a: seen.append(ids) or embed(self, ids, *a)
    )
    code = cli_main(["ask", "--model", str(folder), "--image", str(image), "what colour?", *argv])
    assert code == 0
    return seen[0][0].tolist()


def test_ask_puts_the_folders_system_text_in_the_prompt_once(folder, monkeypatch):
    #         <s> be  brief USER:  4 image tokens  what  colour?  ASSISTANT:
    expected = [1, BE, BRIEF, USER, *[IMAGE] * 4, WHAT, COLOUR, ASSISTANT]
    assert prompt_of_ask(*folder, monkeypatch, "--max-new-tokens", "1") == expected


def test_system_overrides_the_folders_system_text(folder, monkeypatch):
    ids = prompt_of_ask(*folder, monkeypatch, "--max-new-tokens", "1", "--system", "terse")
    assert ids == [1, TERSE, USER, *[IMAGE] * 4, WHAT, COLOUR, ASSISTANT]
    none = prompt_of_ask(*folder, monkeypatch, "--max-new-tokens", "1", "--system", "")
    assert none == [1, USER, *[IMAGE] * 4, WHAT, COLOUR, ASSISTANT]


def test_the_folders_system_text_is_masked_in_training(folder):
    tokenizer = AutoTokenizer.from_pretrained(folder[0])
    template = ChatTemplate(system=system_text(tokenizer))
    encoder = ConversationEncoder(tokenizer, IMAGE, 4, template)
    turns = (("<image>\nwhat colour?", "red"),)
    encoded = encoder.encode(Conversation("a", "a.png", turns))
    assert encoded.input_ids == [1, BE, BRIEF, USER, *[IMAGE] * 4, WHAT, COLOUR, ASSISTANT, RED, 2]
    assert encoded.labels == [_, _, _, _, _, _, _, _, _, _, _, RED, 2]


def test_the_chat_template_renders_the_training_layout_for_transformers(folder):
    tokenizer = AutoTokenizer.from_pretrained(folder[0])
    messages = [
        {"role": "user", "content": "what colour?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "what colour?"},
    ]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = list(getattr(ids, "input_ids", ids))
    first = [1, BE, BRIEF, USER, WHAT, COLOUR, ASSISTANT, RED, 2]
    assert ids == first + [USER, WHAT, COLOUR, ASSISTANT]


def test_continual_runs_encode_with_the_folders_system_text(folder):
    from mmcl.continual.generative import conversation_encoder, starting_bridge

    model, tokenizer = starting_bridge(str(folder[0]))
    encoder = conversation_encoder(model, tokenizer)
    encoded = encoder.encode(Conversation("a", "a.png", (("<image>\nwhat colour?", "red"),)))
    assert encoded.input_ids == [1, BE, BRIEF, USER, *[IMAGE] * 4, WHAT, COLOUR, ASSISTANT, RED, 2]
