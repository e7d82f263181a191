"""Promises for LLaVA-format conversation files and the loss mask: a bad file or sample is
one clear error naming the file and the sample; a sample that would train on a zero loss,
or a tokenizer that cannot spell the chat template, is an error, never a silent zero."""

from __future__ import annotations

import json

import pytest

from mmcl.data.chat_template import (
    ChatTemplate,
    ConversationEncoder,
    EmptyLossError,
    TemplateMismatchError,
)
from mmcl.data.conversations import Conversation, ConversationFormatError, read_llava_json
from word_tokenizer import word_tokenizer

GOOD = {
    "id": "ok",
    "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
}


def _file(tmp_path, samples, name="data.json"):
    path = tmp_path / name
    path.write_text(samples if isinstance(samples, str) else json.dumps(samples))
    return path


def _turns(*pairs):
    return [{"from": role, "value": value} for role, value in pairs]


def test_a_turn_out_of_order_names_file_sample_index_id_and_turn(tmp_path):
    bad = {"id": "x7", "conversations": _turns(("gpt", "a"), ("human", "q"))}
    path = _file(tmp_path, [GOOD, bad])
    with pytest.raises(ConversationFormatError) as error:
        read_llava_json(path)
    message = str(error.value)
    assert f"{path}: sample 1 (id 'x7'): turn 0 is from 'gpt', expected 'human'" in message
    assert "\n" not in message


def test_a_conversation_ending_with_the_user_is_refused(tmp_path):
    bad = {"id": "y", "conversations": _turns(("human", "q"))}
    with pytest.raises(ConversationFormatError, match=r"sample 0 \(id 'y'\): the last turn"):
        read_llava_json(_file(tmp_path, [bad]))


def test_two_image_placeholders_or_one_without_an_image_are_refused(tmp_path):
    two = {
        "id": "a",
        "image": "a.png",
        "conversations": _turns(("human", "<image> <image>"), ("gpt", "x")),
    }
    orphan = {"id": "b", "conversations": _turns(("human", "<image> q"), ("gpt", "x"))}
    with pytest.raises(ConversationFormatError, match="sample 0 .* 2 <image> placeholders"):
        read_llava_json(_file(tmp_path, [two]))
    with pytest.raises(ConversationFormatError, match='sample 0 .* has <image> but no "image"'):
        read_llava_json(_file(tmp_path, [orphan], "b.json"))


def test_not_a_list_or_not_json_names_the_file(tmp_path):
    with pytest.raises(ConversationFormatError, match=r"data.json: LLaVA's format is a JSON list"):
        read_llava_json(_file(tmp_path, GOOD))
    with pytest.raises(ConversationFormatError, match=r"bad.json: not valid JSON"):
        read_llava_json(_file(tmp_path, "[{", "bad.json"))
    with pytest.raises(ConversationFormatError, match=r"none.json: holds no samples"):
        read_llava_json(_file(tmp_path, [], "none.json"))


def test_a_bad_jsonl_line_is_named_by_its_line_number(tmp_path):
    path = _file(tmp_path, json.dumps(GOOD) + '\n\n{"id": 3}\n', "data.jsonl")
    with pytest.raises(ConversationFormatError, match=r"data.jsonl: line 3 \(id 3\): needs"):
        read_llava_json(path)


def _encoder(tokenizer=None, **options):
    tokenizer = tokenizer or word_tokenizer(["sys", "USER:", "ASSISTANT:", "q", "a"])
    return ConversationEncoder(tokenizer, 99, 4, ChatTemplate(system="sys"), **options)


def test_truncation_that_cuts_every_answer_is_an_error_not_a_zero_loss():
    conversation = Conversation("long", "x.png", (("<image> q", "a"),))  # prompt: 9 tokens
    with pytest.raises(EmptyLossError, match=r"sample 5 \(id 'long'\): no answer token .* 8"):
        _encoder(max_length=8).encode(conversation, where="train.json: sample 5")
    assert _encoder(max_length=10).encode(conversation).labels[-1] == 8  # "a" (id 8) is learned


def test_an_answer_that_tokenizes_to_nothing_is_an_error():
    with pytest.raises(EmptyLossError, match=r"id 'e'\): answer 0 \(' '\) tokenizes to no"):
        _encoder().encode(Conversation("e", None, (("q", " "),)))


def test_a_tokenizer_that_cannot_spell_the_template_is_refused():
    tokenizer = word_tokenizer(["sys", "q", "a"])  # no "USER:" or "ASSISTANT:"
    with pytest.raises(TemplateMismatchError, match="does not know the template's user text"):
        _encoder(tokenizer)
    with pytest.raises(TemplateMismatchError, match="has no eos token"):
        _encoder(word_tokenizer(["sys", "USER:", "ASSISTANT:"], eos_token=None))


def test_a_llava_recipe_naming_an_unknown_part_to_train_is_refused():
    from torch import nn

    from mmcl.train.bridges import set_trainable

    model = nn.Module()
    with pytest.raises(ValueError, match=r"llava.yaml: model.trainable must list some of"):
        set_trainable(model, ["projector", "lm"], "llava.yaml")
