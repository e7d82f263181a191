"""The built-in instruction streams (no downloads) and user streams of LLaVA-format files.

* :func:`vqa_functions` (CLOVE's function-incremental setting, Lei et al. 2023): scene
  questions one function at a time: shape -> colour -> count -> position -> comparison
  between two kinds of object ("are there more stars than circles?"; a scene holds one kind,
  so one of the two is absent).
* :func:`vqa_scenes` (CLOVE's scene-incremental setting): the same questions every task
  (shape, colour, count, comparison; no position, which a rotation would change), the scenes'
  style changing per task: object sizes (``small``, ``large``), a rotation
  (``rotated-DEG``), a background (``background-black``, ``background-light-grey``, ...).
* :func:`instruction_sequence` (in the spirit of CoIN, Chen et al. 2024): every task another
  instruction format: scene captioning (a sentence), scene VQA (a word or a number), "what is
  in this picture?" on CIFAR-10 (a word), "which digit is this?" on MNIST (a number), and
  scikit-learn's 8x8 digits written as a word ("seven"). CIFAR-10 and MNIST are read from the
  data root as the CIFAR streams read them (`mmcl.continual.builtin`); `tasks=` keeps a subset.
* :func:`llava_json_stream`: one LLaVA-format file a task (`mmcl.data.conversations`); each
  file's conversations are split, seeded, into train and test; a test item asks the first
  turn, and its answer is asked in the format of the known one.

Every item is a pure function of (task, split, seed, index); train items come from the
scenes' "train" split and test items from their "test" split, which never share a scene. The
general sets (`general_size` items each; 0: none) are held-out scene captioning and scene VQA
of every kind, the same for every stream.

>>> stream = vqa_functions(["shape", "count"], train_size=4, test_size=2, general_size=0)
>>> [(task.name, task.answer_format) for task in stream]
[('shape', 'word'), ('count', 'number')]
>>> stream[1].test.instruction(0).answer
'1'
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mmcl.continual.instructions import (
    AS_REFERENCE,
    Instruction,
    Instructions,
    InstructionStream,
    InstructionTask,
)
from mmcl.data.scene_conversations import CAPTION_INSTRUCTIONS, _comparison
from mmcl.data.scene_qa import ANSWERS, _what_question
from mmcl.data.scenes_identity import BACKGROUNDS, SIZES, sample_scene
from mmcl.data.scenes_render import render
from mmcl.data.scenes_text import caption
from mmcl.io.transforms import image_transform

SCENE_KINDS = ("shape", "colour", "count", "where", "compare", "caption")
FUNCTIONS = ("shape", "colour", "count", "where", "compare")
SCENE_STYLES = ("small", "large", "rotated-90", "background-black")
STYLE_KINDS = ("shape", "colour", "count", "compare")
SEQUENCE_TASKS = ("scene-captions", "scene-vqa", "cifar10-objects", "mnist-digits", "digit-words")
CAPTION_REFERENCES = 5  # reference captions per test scene, as COCO has five
_FORMAT = {"count": "number", "caption": "sentence"}  # the others: one word
_TOKENS = {"caption": 24}  # new tokens a generated answer may take; the others: 8
_ATTRIBUTE = {"shape": "shape", "colour": "colour", "count": "count", "where": "position"}
_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class SceneInstructions(Instructions):
    """Questions of one or more `kinds` (taken in turn) about built-in scenes of a `style`.

    Shape, colour, count and position answers are balanced as `SceneQuestions` balances
    them; "caption" asks for a short caption and keeps reference captions for CIDEr-D."""

    def __init__(
        self,
        split: str,
        size: int,
        kinds: Sequence[str],
        style: str | None = None,
        image_size: int = 32,
        seed: int = 0,
        key: str = "",
    ):
        unknown = [kind for kind in kinds if kind not in SCENE_KINDS]
        if unknown or not kinds:
            raise ValueError(f"scene instruction kinds must be among {SCENE_KINDS}, got {kinds}")
        self.fixed, self.angle = style_of(style)
        self.split, self.size, self.kinds = split, int(size), tuple(kinds)
        self.image_size, self.seed, self.key = image_size, seed, key
        self.transform = image_transform(image_size)

    def __len__(self) -> int:
        return self.size

    def _record(self, index: int):
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        rng = random.Random(f"instructions/{self.key}/{self.split}/{self.seed}/{index}")
        kind = self.kinds[index % len(self.kinds)]
        turn = index // len(self.kinds)
        fixed = dict(self.fixed)
        if kind in _ATTRIBUTE:
            answer = ANSWERS[kind][turn % len(ANSWERS[kind])]
            fixed[_ATTRIBUTE[kind]] = int(answer) if kind == "count" else answer
        scene = sample_scene(rng, self.split, **fixed)
        return kind, scene, rng

    def instruction(self, index: int) -> Instruction:
        kind, scene, rng = self._record(index)
        if kind == "caption":
            references = tuple(
                caption(scene, random.Random(f"{self.key}/references/{index}/{n}"))
                for n in range(CAPTION_REFERENCES)
            )
            return Instruction(rng.choice(CAPTION_INSTRUCTIONS), references[0], scene, references)
        if kind == "compare":
            question, answer = _comparison(scene, rng)
        else:
            question = _what_question(kind, scene, rng)
            answer = str(getattr(scene, _ATTRIBUTE[kind]))
        return Instruction(question, answer, scene)

    def image(self, index: int):
        image = render(self._record(index)[1], self.image_size)
        return image.rotate(self.angle) if self.angle else image  # quarter turns are exact


def style_of(style: str | None) -> tuple[dict[str, Any], int]:
    """A scene style's fixed attributes and rotation: "small", "large", "rotated-DEG",
    "background-NAME" (spaces as hyphens), or None (the scenes as they come)."""
    if style is None or style == "plain":
        return {}, 0
    kind, _, value = style.partition("-")
    if style in SIZES:
        return {"size": style}, 0
    if kind == "rotated" and value.isdigit() and int(value) % 90 == 0:
        return {}, int(value)
    if kind == "background" and value.replace("-", " ") in BACKGROUNDS:
        return {"background": value.replace("-", " ")}, 0
    backgrounds = ", ".join("background-" + b.replace(" ", "-") for b in BACKGROUNDS)
    raise ValueError(
        f"unknown scene style {style!r}: use plain, {', '.join(SIZES)}, rotated-DEGREES (a "
        f"multiple of 90) or one of {backgrounds}"
    )


class LabelledInstructions(Instructions):
    """One question about every image of a labelled data set (items ``(image, label)`` with
    ``targets``); the answer is ``answers[label]``. Images come transformed from `data`."""

    def __init__(self, data: Dataset, question: str, answers: Sequence[str]):
        self.data, self.question, self.answers = data, question, list(answers)

    def __len__(self) -> int:
        return len(self.data)

    def image(self, index: int):
        return self.data[index][0]

    def instruction(self, index: int) -> Instruction:
        return Instruction(self.question, self.answers[self.data.targets[index]])


class ConversationInstructions(Instructions):
    """Items `indices` of a `ConversationImages` file: whole conversations for training, the
    first turn as the question for evaluation."""

    def __init__(self, source, indices: Sequence[int]):
        self.source, self.indices = source, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, index: int):
        return self.source[self.indices[index]][0]

    def conversation(self, index: int):
        return self.source.conversations[self.indices[index]]

    def instruction(self, index: int) -> Instruction:
        question, answer = self.conversation(index).turns[0]
        return Instruction(question, answer)


def scene_task(
    name: str,
    index: int,
    kinds: Sequence[str],
    train_size: int,
    test_size: int,
    image_size: int,
    seed: int,
    style: str | None = None,
) -> InstructionTask:
    parts = [
        SceneInstructions(split, size, kinds, style, image_size, seed, key=f"{name}/{style}")
        for split, size in (("train", train_size), ("test", test_size))
    ]
    formats = {_FORMAT.get(kind, "word") for kind in kinds}
    answer_format = formats.pop() if len(formats) == 1 else AS_REFERENCE
    metric = "caption" if list(kinds) == ["caption"] else "vqa"
    tokens = max(_TOKENS.get(kind, 8) for kind in kinds)
    return InstructionTask(name, index, *parts, answer_format, metric, tokens)


def general_sets(size: int, image_size: int = 32) -> dict[str, InstructionTask] | None:
    """Held-out scene captioning and general scene VQA: the same for every stream and seed."""
    if size <= 0:
        return None
    return {
        "captioning": scene_task("general-captioning", 0, ["caption"], 1, size, image_size, 0),
        "vqa": scene_task("general-vqa", 0, list(FUNCTIONS[:4]), 1, size, image_size, 0),
    }


def vqa_functions(
    functions: Sequence[str] = FUNCTIONS,
    train_size: int = 500,
    test_size: int = 100,
    image_size: int = 32,
    seed: int = 0,
    general_size: int = 100,
) -> InstructionStream:
    """Function-incremental scene VQA: one question function a task, in `functions` order."""
    unknown = [f for f in functions if f not in FUNCTIONS]
    if unknown or not functions:
        raise ValueError(f"vqa-functions: functions must be among {FUNCTIONS}, got {functions}")
    tasks = [
        scene_task(function, index, [function], train_size, test_size, image_size, seed)
        for index, function in enumerate(functions)
    ]
    return InstructionStream(tasks, seed, "vqa-functions", general_sets(general_size, image_size))


def vqa_scenes(
    styles: Sequence[str] = SCENE_STYLES,
    train_size: int = 500,
    test_size: int = 100,
    image_size: int = 32,
    seed: int = 0,
    general_size: int = 100,
) -> InstructionStream:
    """Scene-incremental scene VQA: the same questions, one scene style a task."""
    if not styles:
        raise ValueError("vqa-scenes: name at least one style")
    tasks = [
        scene_task(style, index, list(STYLE_KINDS), train_size, test_size, image_size, seed, style)
        for index, style in enumerate(styles)
    ]
    return InstructionStream(tasks, seed, "vqa-scenes", general_sets(general_size, image_size))


def instruction_sequence(
    tasks: Sequence[str] = SEQUENCE_TASKS,
    train_size: int = 500,
    test_size: int = 100,
    image_size: int = 32,
    seed: int = 0,
    general_size: int = 100,
    data_root: str | Path | None = None,
    download: bool = False,
) -> InstructionStream:
    """A CoIN-style sequence of instruction formats, in `tasks` order (see the module)."""
    unknown = [t for t in tasks if t not in SEQUENCE_TASKS]
    if unknown or not tasks:
        raise ValueError(f"instructions: tasks must be among {SEQUENCE_TASKS}, got {list(tasks)}")
    built = []
    for index, name in enumerate(tasks):
        if name.startswith("scene-"):
            kinds = ["caption"] if name == "scene-captions" else list(FUNCTIONS[:4])
            built.append(scene_task(name, index, kinds, train_size, test_size, image_size, seed))
            continue
        train, test, question, answers, answer_format = _labelled_task(
            name, image_size, seed, train_size, test_size, data_root, download
        )
        parts = [LabelledInstructions(part, question, answers) for part in (train, test)]
        built.append(InstructionTask(name, index, *parts, answer_format))
    return InstructionStream(built, seed, "instructions", general_sets(general_size, image_size))


def _labelled_task(name, image_size, seed, train_size, test_size, data_root, download):
    from mmcl.continual.builtin import _cifar10, _digits, _mnist, shared_data_root

    root = shared_data_root(data_root)
    sizes = (image_size, seed, train_size, test_size, root, download)
    try:
        if name == "cifar10-objects":
            train, test, classnames, _ = _cifar10(*sizes)
            return train, test, "what is in this picture?", classnames, "word"
        if name == "mnist-digits":
            train, test, classnames, _ = _mnist(*sizes)
            return train, test, "which digit is this?", classnames, "number"
        train, test, _, _ = _digits(*sizes)
        return train, test, "write the digit in words.", _DIGIT_WORDS, "word"
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"instructions task {name!r}: {error}; give --data-root (a folder holding "
            f"CIFAR-10 and MNIST), or leave the task out (--tasks / tasks=[...])"
        ) from None


def llava_json_stream(
    files: Sequence[str | Path],
    images: str | Path,
    test_fraction: float = 0.2,
    image_size: int = 32,
    seed: int = 0,
    general_size: int = 100,
) -> InstructionStream:
    """One task a LLaVA-format file, named by its stem, in the order given; images (the
    samples' "image" paths) read from the folder `images`."""
    from mmcl.data.conversations import ConversationImages

    if not files:
        raise ValueError("a user instruction stream needs at least one LLaVA-format file")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    tasks = []
    for index, path in enumerate(files):
        source = ConversationImages(path, images, image_transform(image_size))
        order = list(range(len(source)))
        random.Random(f"llava-json/{Path(path).stem}/{seed}").shuffle(order)
        cut = round(test_fraction * len(order))
        if cut == 0 or cut == len(order):
            raise ValueError(
                f"{path}: {len(order)} samples cannot be split into train and test with "
                f"test_fraction {test_fraction}; give the task more samples"
            )
        test, train = sorted(order[:cut]), sorted(order[cut:])
        parts = [ConversationInstructions(source, part) for part in (train, test)]
        tasks.append(InstructionTask(Path(path).stem, index, *parts, AS_REFERENCE))
    return InstructionStream(tasks, seed, "llava-json", general_sets(general_size, image_size))
