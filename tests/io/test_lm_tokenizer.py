"""The tiny LLaMA tokenizer trained on the built-in text, saved with its model as one folder."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, LlavaForConditionalGeneration

import mmcl
from mmcl.data.scene_conversations import SceneConversations, scene_tokenizer_text
from mmcl.io.lm_tokenizer import SPECIAL_TOKENS, train_lm_tokenizer
from mmcl.recipe_bridges import save_llava_folder
from mmcl.train.bridges import build_llava


def test_the_tokenizer_spells_the_scene_text_and_keeps_llamas_special_ids():
    tokenizer = train_lm_tokenizer(scene_tokenizer_text(40), vocab_size=300)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == list(SPECIAL_TOKENS)
    assert len(tokenizer) <= 300
    conversations = SceneConversations("val", 20, transform=lambda image: image)
    for index in range(20):  # held-out text: every character was in the training text
        for text in (t for turn in conversations.turns(index) for t in turn):
            ids = tokenizer.encode(text, add_special_tokens=False)
            assert tokenizer.unk_token_id not in ids
            assert tokenizer.decode(ids) == text


def test_model_and_tokenizer_are_one_hugging_face_folder(tmp_path):
    torch.manual_seed(0)
    spec = {"lm": {"hidden_size": 32, "num_hidden_layers": 1}, "vocab_size": 200}
    model, tokenizer = build_llava({**spec, "tokenizer_text_size": 40}, "test")
    folder = save_llava_folder(model, tokenizer, tmp_path / "hf")
    again = AutoTokenizer.from_pretrained(folder)
    text = "<s> USER: how many stars are there? ASSISTANT: 3</s>"
    assert again(text).input_ids == tokenizer(text).input_ids
    assert model.image_token_id == again.convert_tokens_to_ids("<image>") == 4
    reference = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    loaded = mmcl.load(folder)[0]
    ids = torch.tensor([[1] + [4] * model.tokens_per_image + [10, 11]])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = reference(input_ids=ids, pixel_values=pixels).logits
        assert (loaded(ids, pixels).logits - expected).abs().max() < 1e-5


def test_doctests():
    import doctest

    from mmcl.io import lm_tokenizer

    assert doctest.testmod(lm_tokenizer).failed == 0
