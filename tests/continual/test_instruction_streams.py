"""The built-in instruction streams and user streams: what each task asks, and that the
answers are true of the images."""

import json

import numpy as np
from PIL import Image

from mmcl.continual.instruction_streams import (
    SceneInstructions,
    instruction_sequence,
    llava_json_stream,
    vqa_functions,
    vqa_scenes,
)
from mmcl.data.scenes_render import render


def test_vqa_functions_ask_one_function_a_task_in_clove_order():
    stream = vqa_functions(train_size=8, test_size=8, general_size=0)
    assert stream.task_names == ["shape", "colour", "count", "where", "compare"]
    shape, colour, count, where, compare = stream
    for i in range(8):
        item = count.test.instruction(i)
        assert item.answer == str(item.scene.count) and item.question.startswith(("how", "what"))
        assert colour.test.instruction(i).answer == colour.test.instruction(i).scene.colour
        assert shape.test.instruction(i).answer == shape.test.instruction(i).scene.shape
        assert where.test.instruction(i).answer == where.test.instruction(i).scene.position
        asked = compare.test.instruction(i)
        if asked.question.startswith("which are there more of"):
            assert asked.answer == asked.scene.shape
    # Counts are balanced: the n-th count question has answer 1, 2, 3, 4 in turn.
    assert [count.train.instruction(i).answer for i in range(8)] == list("12341234")
    assert [count.answer_format, where.answer_format] == ["number", "word"]


def test_train_and_test_items_come_from_disjoint_scene_splits():
    task = vqa_functions(["colour"], train_size=10, test_size=10, general_size=0)[0]
    assert {task.train.instruction(i).scene.split for i in range(10)} == {"train"}
    assert {task.test.instruction(i).scene.split for i in range(10)} == {"test"}


def test_training_items_are_one_turn_conversations_with_the_image_first():
    task = vqa_functions(["shape"], train_size=2, test_size=2, general_size=0)[0]
    image, conversation = task.train[1]
    item = task.train.instruction(1)
    assert image.shape == (3, 32, 32)
    assert conversation.turns == ((f"<image>\n{item.question}", item.answer),)


def test_vqa_scenes_change_the_scene_style_per_task():
    stream = vqa_scenes(train_size=6, test_size=6, general_size=0)
    assert stream.task_names == ["small", "large", "rotated-90", "background-black"]
    small, large, _, black = stream
    assert {small.test.instruction(i).scene.size for i in range(6)} == {"small"}
    assert {large.test.instruction(i).scene.size for i in range(6)} == {"large"}
    assert {black.train.instruction(i).scene.background for i in range(6)} == {"black"}


def test_a_rotated_style_turns_the_rendered_scene_a_quarter_counter_clockwise():
    data = SceneInstructions("test", 3, ["colour"], "rotated-90")
    for i in range(3):
        upright = np.asarray(render(data.instruction(i).scene, 32))
        assert np.array_equal(np.asarray(data.image(i)), np.rot90(upright))


def test_instruction_sequence_tasks_ask_different_formats(tmp_path):
    root = tmp_path / "data"
    classes = ["airplane", "automobile", "bird", "cat", "deer"]
    classes += ["dog", "frog", "horse", "ship", "truck"]
    for split in ("train", "test"):
        for shade, name in enumerate(classes):
            folder = root / "cifar10" / split / name
            folder.mkdir(parents=True)
            Image.new("RGB", (32, 32), (20 * shade, 0, 0)).save(folder / "0.png")
    for digit in range(10):
        folder = root / "mnist" / "test" / str(digit)
        folder.mkdir(parents=True)
        for n in range(5):
            Image.new("L", (28, 28), 20 * digit + n).save(folder / f"{n}.png")
    stream = instruction_sequence(train_size=10, test_size=10, general_size=0, data_root=root)
    assert stream.task_names == [
        "scene-captions",
        "scene-vqa",
        "cifar10-objects",
        "mnist-digits",
        "digit-words",
    ]
    formats = [task.answer_format for task in stream]
    assert formats == ["sentence", "as-reference", "word", "number", "word"]
    captions, _, cifar, mnist, words = stream
    assert captions.metric == "caption" and len(captions.test.instruction(0).references) == 5
    first = cifar.test.instruction(0)
    assert first.question == "what is in this picture?" and first.answer in classes
    assert {mnist.train.instruction(i).answer for i in range(10)} == set("0123456789")
    numbers = "zero one two three four five six seven eight nine".split()
    labels = [words.test.data.targets[i] for i in range(10)]
    assert [words.test.instruction(i).answer for i in range(10)] == [numbers[y] for y in labels]


def test_a_user_stream_is_one_llava_file_a_task_split_into_train_and_test(tmp_path):
    Image.new("RGB", (40, 32), "red").save(tmp_path / "red.png")
    files = []
    for name in ("colours", "counts"):
        samples = [
            {
                "id": f"{name}{i}",
                "image": "red.png",
                "conversations": [
                    {"from": "human", "value": f"question {i}?"},
                    {"from": "gpt", "value": f"answer {i}"},
                    {"from": "human", "value": "and then?"},
                    {"from": "gpt", "value": "red"},
                ],
            }
            for i in range(5)
        ]
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(samples))
    stream = llava_json_stream(files, tmp_path, test_fraction=0.4, general_size=0)
    assert stream.task_names == ["colours", "counts"]
    task = stream[0]
    assert (len(task.train), len(task.test)) == (3, 2)
    ids = [task.train[i][1].id for i in range(3)] + [task.test[i][1].id for i in range(2)]
    assert sorted(ids) == [f"colours{i}" for i in range(5)]
    assert len(task.train[0][1].turns) == 2  # the whole conversation trains
    asked = task.test.instruction(0)  # the first turn is asked
    assert asked.question == f"<image>\nquestion {task.test[0][1].id[-1]}?"
    assert asked.answer == f"answer {task.test[0][1].id[-1]}"
