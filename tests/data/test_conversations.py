"""LLaVA's conversation format and the built-in scene conversations."""

from __future__ import annotations

import json
import re
from collections import Counter

from PIL import Image
from test_scene_qa import yes_no_claim

from mmcl.data.conversations import Conversation, read_llava_json
from mmcl.data.scene_conversations import TURN_KINDS, SceneConversations, describe
from mmcl.data.scene_qa import SceneQuestions
from mmcl.data.scenes_identity import COLOURS
from mmcl.data.scenes_text import SHAPE_WORDS

LLAVA_SAMPLES = [  # as LLaVA's own files write them
    {
        "id": "000000033471",
        "image": "coco/train2017/000000033471.jpg",
        "conversations": [
            {"from": "human", "value": "What are the colors of the bus?\n<image>"},
            {"from": "gpt", "value": "The bus is white and red."},
            {"from": "human", "value": "What feature can be seen on the back of the bus?"},
            {"from": "gpt", "value": "An advertisement."},
        ],
    },
    {
        "id": "t1",
        "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
    },
    {
        "id": "i2",
        "image": "x.png",
        "conversations": [
            {"from": "human", "value": "What is it?"},
            {"from": "gpt", "value": "A cat."},
        ],
    },
]


def test_a_users_llava_json_and_jsonl_read_the_same(tmp_path):
    (tmp_path / "data.json").write_text(json.dumps(LLAVA_SAMPLES))
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(s) for s in LLAVA_SAMPLES) + "\n")
    conversations = read_llava_json(tmp_path / "data.json")
    assert conversations == read_llava_json(tmp_path / "data.jsonl")
    assert conversations[0] == Conversation(
        "000000033471",
        "coco/train2017/000000033471.jpg",
        (
            ("What are the colors of the bus?\n<image>", "The bus is white and red."),
            ("What feature can be seen on the back of the bus?", "An advertisement."),
        ),
    )
    assert conversations[1].image is None and conversations[1].turns == (("Hi", "Hello"),)
    # An image without <image>: the placeholder goes first, as LLaVA's loader puts it.
    assert conversations[2].turns[0][0] == "<image>\nWhat is it?"


def test_built_in_conversations_are_written_in_llava_format_and_read_back(tmp_path):
    data = SceneConversations("val", size=6, image_size=32)
    path = data.write(tmp_path)
    assert read_llava_json(path) == [data.conversation(i) for i in range(6)]
    sample = json.loads(path.read_text())[0]
    assert [turn["from"] for turn in sample["conversations"]][:2] == ["human", "gpt"]
    assert Image.open(tmp_path / sample["image"]).size == (32, 32)


def test_first_turn_kinds_cycle_and_answers_are_true_of_the_scene():
    data = SceneConversations("train", size=70, transform=lambda image: image, max_turns=3)
    assert Counter(data.kinds(i)[0] for i in range(70)) == {kind: 10 for kind in TURN_KINDS}
    turn_counts = Counter(len(data.turns(i)) for i in range(70))
    assert set(turn_counts) == {1, 2, 3}
    for index in range(70):
        scene = data.scene(index)
        for kind, (question, answer) in zip(data.kinds(index), data.turns(index), strict=True):
            expected = {
                "shape": scene.shape,
                "colour": scene.colour,
                "count": str(scene.count),
                "where": scene.position,
                "describe": describe(scene),
            }.get(kind)
            if expected is not None:
                assert answer == expected, (kind, question)
            elif kind == "yes/no":
                attribute, claimed, _ = yes_no_claim(question)
                assert answer == ("yes" if getattr(scene, attribute) == claimed else "no")
            else:  # a comparison: "more X than Y" / "more of, X or Y" / "colour a or b"
                _check_comparison(scene, question, answer)


_SHAPE_FORMS = {form for forms in SHAPE_WORDS.values() for form in forms[0]}
_NUMBERS = ("one", "two", "three", "four")


def _check_comparison(scene, question, answer):
    shown = SHAPE_WORDS[scene.shape][0][1]
    if question.startswith("are there more "):
        more = question.removeprefix("are there more ").split(" than ")[0]
        assert answer == ("yes" if more == shown else "no")
    elif question.startswith("which are there more of"):
        assert shown in question and answer == scene.shape
    else:
        assert scene.colour in question and answer == scene.colour


def test_every_form_of_held_out_question_is_asked_in_stage_two():
    # The stage-2 data once had no "is the ring green?"-style yes/no question, so the
    # held-out yes/no questions (the eval's) were never answered yes or no: 0% VQA accuracy.
    def form(question):  # the question with its shape, colour and number words blanked
        for word in [*sorted(_SHAPE_FORMS, key=len, reverse=True), *COLOURS, *_NUMBERS]:
            question = re.sub(rf"\b{word}\b", "X", question)
        return question

    data = SceneConversations("train", size=1400, transform=lambda image: image)
    taught = {form(q) for i in range(1400) for q, _ in data.turns(i)}
    held_out = SceneQuestions("test", 400)
    forms = {(held_out.record(i).kind, form(held_out.record(i).question)) for i in range(400)}
    assert {kind for kind, _ in forms} == {"shape", "colour", "count", "where", "yes/no"}
    assert {(kind, f) for kind, f in forms if f not in taught} == set()


def test_yes_no_turns_are_half_yes():
    data = SceneConversations("train", size=700, transform=lambda image: image)
    answers = Counter(
        answer
        for i in range(700)
        for kind, (_, answer) in zip(data.kinds(i), data.turns(i), strict=True)
        if kind == "yes/no"
    )
    firsts = Counter(data.turns(i)[0][1] for i in range(700) if data.kinds(i)[0] == "yes/no")
    assert firsts == {"yes": 50, "no": 50}
    assert abs(answers["yes"] - answers["no"]) < 0.2 * sum(answers.values())


def test_stage_one_is_one_caption_turn_and_items_are_reproducible():
    data = SceneConversations("train", size=5, stage="captions", transform=lambda image: image)
    again = SceneConversations("train", size=5, stage="captions", transform=lambda image: image)
    for index in range(5):
        ((question, caption),) = data.conversation(index).turns
        assert question.startswith("<image>\n") and caption
        assert data.conversation(index) == again.conversation(index)


def test_doctests():
    import doctest

    from mmcl.data import conversations, scene_conversations

    assert doctest.testmod(conversations).failed == 0
    assert doctest.testmod(scene_conversations).failed == 0
