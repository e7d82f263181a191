"""The chat template and the loss mask, against token layouts worked out by hand."""

from __future__ import annotations

import torch

from mmcl.data.chat_template import (
    IGNORE_INDEX,
    ChatTemplate,
    ConversationEncoder,
    collate_for_training,
    left_pad,
)
from mmcl.data.conversations import Conversation
from word_tokenizer import word_tokenizer

# ids: <pad> 0, <s> 1, </s> 2, <unk> 3, then these from 4
WORDS = ["sys", "USER:", "ASSISTANT:", "what", "colour?", "red", "how", "many?", "2", "big", "dog"]
IMAGE = 99
_ = IGNORE_INDEX


def _encoder(**options):
    tokenizer = word_tokenizer(WORDS)
    return ConversationEncoder(tokenizer, IMAGE, 2, ChatTemplate(system="sys"), **options)


def test_single_turn_with_the_image_masks_all_but_the_answer_and_its_end():
    conversation = Conversation("a", "a.png", (("<image>\nwhat colour?", "red"),))
    encoded = _encoder().encode(conversation)
    #                   <s> sys USER: img  img  what colour? ASSISTANT: red </s>
    assert encoded.input_ids == [1, 4, 5, IMAGE, IMAGE, 7, 8, 6, 9, 2]
    assert encoded.labels == [_, _, _, _, _, _, _, _, 9, 2]


def test_two_turns_the_system_text_comes_once_and_each_answer_is_learned():
    turns = (("<image>\nwhat colour?", "red big"), ("how many?", "2"))
    encoded = _encoder().encode(Conversation("b", "b.png", turns))
    first = [1, 4, 5, IMAGE, IMAGE, 7, 8, 6, 9, 13, 2]
    second = [5, 10, 11, 6, 12, 2]  # USER: how many? ASSISTANT: 2 </s>
    assert encoded.input_ids == first + second
    assert encoded.labels == [_] * 8 + [9, 13, 2] + [_] * 4 + [12, 2]


def test_truncation_keeps_the_answers_that_fit():
    turns = (("what colour?", "red"), ("how many?", "2"))
    encoded = _encoder(max_length=8).encode(Conversation("c", None, turns))
    assert encoded.input_ids == [1, 4, 5, 7, 8, 6, 9, 2]
    assert encoded.labels == [_] * 6 + [9, 2]


def test_the_generation_prompt_is_the_training_layout_up_to_the_assistant_marker():
    encoder = _encoder()
    history = [("<image>\nwhat colour?", "red")]
    prompt = encoder.encode_prompt(history, "how many?")
    full = encoder.encode(Conversation("d", "d.png", (*history, ("how many?", "2")))).input_ids
    assert prompt == full[: len(prompt)] and prompt[-1] == 6 and full[len(prompt)] == 12
    assert encoder.encode_prompt([], "<image>\nhow many?") == [1, 4, 5, IMAGE, IMAGE, 10, 11, 6]


def test_collate_pads_right_for_training_and_left_for_generation():
    encoder = _encoder()
    short = encoder.encode(Conversation("e", None, (("dog", "red"),)))  # 7 tokens
    long = encoder.encode(Conversation("f", None, (("how many?", "2"),)))  # 8 tokens
    batch = collate_for_training([short, long], pad_token_id=0)
    assert batch["input_ids"][0].tolist() == [*short.input_ids, 0]
    assert batch["labels"][0].tolist() == [*short.labels, _]
    assert batch["attention_mask"].tolist() == [[1] * 7 + [0], [1] * 8]
    ids, mask = left_pad([[1, 5], [1, 5, 7]], pad_token_id=0)
    assert ids.tolist() == [[0, 1, 5], [1, 5, 7]]
    assert torch.equal(mask, torch.tensor([[0, 1, 1], [1, 1, 1]]))
