"""Continual instruction tuning of a LLaVA-style bridge: a stream of instruction tasks, each
trained with the language-modelling loss on the answers and scored by generating answers.

An :class:`InstructionStream` is an ordered list of :class:`InstructionTask`; a task's train
and test sets are :class:`Instructions` data sets, whose items are ``(image, Conversation)``
(LLaVA's records, `mmcl.data.conversations`), so built-in and user data go through the same
chat template and loss mask as the LLaVA recipes. The continual runner accepts a stream in
place of a classification scenario when it is given the bridge's tokenizer: every task trains
with `CausalLMObjective` (the loss on the assistant's answers only), and after every task each
task's test set is answered greedily, one question an item (a conversation's first turn):

* ``metric="vqa"``: exact match of the VQA-normalised answer (`mmcl.eval.vqa`) with the
  known one (one reference answer: the 10-human formula would never give full credit);
* ``metric="caption"``: the attribute accuracy of the captions (shape, colour and count named
  rightly, `mmcl.eval.scene_captions`; the mean of the three), with CIDEr-D against the
  item's reference captions beside it.

Beside the score, each answer is checked for the *format* the task asks for
(:func:`answer_format`: one word, a number, a sentence), and after every task the stream's
general sets (held-out scene captioning and a fixed general scene VQA set) measure what is
left of the base model's general ability. Only methods with ``takes_instructions = True`` run
on such a stream.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset

from mmcl.data.conversations import IMAGE_PLACEHOLDER, Conversation

INSTRUCTIONS = "instructions"
FORMATS = ("word", "number", "sentence")
# A task whose questions ask for different formats (a count, a colour) asks each for the
# format of its known answer.
AS_REFERENCE = "as-reference"
METRICS = ("vqa", "caption")
SENTENCE_WORDS = 3  # the fewest words a sentence has (a caption "two red stars")
_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")
_WORD = re.compile(r"[a-z][a-z'-]*")
_ARTICLES = ("a", "an", "the")


@dataclass(frozen=True)
class Instruction:
    """One test question: the text asked (with ``<image>``), the known answer, and for a
    built-in scene the scene itself (what caption attribute accuracy checks) and reference
    captions (what CIDEr-D compares with; default: the answer alone)."""

    question: str
    answer: str
    scene: Any = None
    references: tuple[str, ...] = ()


class Instructions(Dataset, ABC):
    """``(image, Conversation)`` items; subclasses give `image(i)` (PIL) and
    `instruction(i)`. Training encodes the whole conversation (by default the instruction
    as one turn); evaluation asks `instruction(i)`."""

    transform: Any = None

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def image(self, index: int): ...

    @abstractmethod
    def instruction(self, index: int) -> Instruction: ...

    def conversation(self, index: int) -> Conversation:
        item = self.instruction(index)
        return Conversation(str(index), None, ((prompt_of(item.question), item.answer),))

    @property
    def targets(self) -> list[int]:
        """No classes: 0 for every item, so methods that keep items by label work."""
        return [0] * len(self)

    def __getitem__(self, index: int):
        image = self.image(index)
        return (image if self.transform is None else self.transform(image)), self.conversation(
            index
        )


@dataclass(frozen=True, eq=False)
class InstructionTask:
    """One instruction format: its data, the format its answers take and how it is scored."""

    name: str
    index: int
    train: Dataset
    test: Instructions
    answer_format: str = "word"
    metric: str = "vqa"
    max_new_tokens: int = 8

    def __post_init__(self) -> None:
        if self.answer_format not in (*FORMATS, AS_REFERENCE):
            raise ValueError(
                f"instruction task {self.name!r}: answer_format must be one of "
                f"{(*FORMATS, AS_REFERENCE)}, got "
                f"{self.answer_format!r}"
            )
        if self.metric not in METRICS:
            raise ValueError(
                f"instruction task {self.name!r}: metric must be one of {METRICS}, got "
                f"{self.metric!r}"
            )
        for split, data in (("train", self.train), ("test", self.test)):
            if len(data) == 0:
                raise ValueError(f"instruction task {self.name!r} has an empty {split} set")


@dataclass(frozen=True, eq=False)
class InstructionStream:
    """The tasks in training order, and the general sets every row also answers (held-out
    scene captioning, a fixed general VQA set; None: not measured)."""

    tasks: list[InstructionTask]
    seed: int = 0
    name: str = INSTRUCTIONS
    general: dict[str, InstructionTask] | None = field(default=None)
    kind: ClassVar[str] = INSTRUCTIONS

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("an instruction stream needs at least one task")
        names = [task.name for task in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"instruction stream: task names repeat: {names}")
        for position, task in enumerate(self.tasks):
            if task.index != position:
                raise ValueError(f"task {task.name!r} has index {task.index}, expected {position}")

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> InstructionTask:
        return self.tasks[index]

    def __iter__(self):
        return iter(self.tasks)

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]


def is_instruction_stream(scenario) -> bool:
    return getattr(scenario, "kind", None) == INSTRUCTIONS


def describe_instruction_stream(stream: InstructionStream) -> str:
    """A plain-text table of the tasks: sizes, the format asked and the score.

    >>> from mmcl.continual.instruction_streams import vqa_functions
    >>> print(describe_instruction_stream(vqa_functions(["count"], 4, 2, general_size=0)))
    vqa-functions: instruction stream, 1 task, seed 0 (LM loss on answers; answers scored)
    #  task   train  test  format  score
    0  count      4     2  number  vqa
    """
    plural = "" if len(stream) == 1 else "s"
    lines = [
        f"{stream.name}: instruction stream, {len(stream)} task{plural}, seed {stream.seed} "
        f"(LM loss on answers; answers scored)"
    ]
    rows = [["#", "task", "train", "test", "format", "score"]]
    rows += [
        [str(t.index), t.name, str(len(t.train)), str(len(t.test)), t.answer_format, t.metric]
        for t in stream
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            c.rjust(w) if i in (2, 3) else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def answer_format(answer: str) -> str | None:
    """The format an answer is in: "number" (a numeral), "word" (one word, an article
    allowed before it), "sentence" (at least three words), or None (empty, two words).

    >>> [answer_format(a) for a in ("3", " Star.", "a heart", "two red stars", "top left", "")]
    ['number', 'word', 'word', 'sentence', None, None]
    """
    text = answer.strip().lower().rstrip(".!?").strip()
    if _NUMBER.fullmatch(text):
        return "number"
    words = text.split()
    if len(words) == 2 and words[0] in _ARTICLES:
        words = words[1:]
    if len(words) == 1 and _WORD.fullmatch(words[0]):
        return "word"
    return "sentence" if len(words) >= SENTENCE_WORDS else None


def format_share(answers: Sequence[str], asked: str | Sequence[str | None]) -> float:
    """The share of `answers` in the format `asked` (one of `FORMATS`, or one format per
    answer: e.g. that of each known answer).

    >>> format_share(["3", "three", "3 stars", "4"], "number")
    0.5
    >>> format_share(["3", "three"], ["number", "number"])
    0.5
    """
    if not answers:
        raise ValueError("format_share needs at least one answer")
    if isinstance(asked, str):
        if asked not in FORMATS:
            raise ValueError(f"asked format must be one of {FORMATS}, got {asked!r}")
        asked = [asked] * len(answers)
    if len(asked) != len(answers):
        raise ValueError(f"{len(asked)} asked formats for {len(answers)} answers")
    matches = [answer_format(a) == f for a, f in zip(answers, asked, strict=True)]
    return sum(matches) / len(answers)


def prompt_of(question: str) -> str:
    """A question with the image placeholder first, as LLaVA's loader puts it."""
    return question if IMAGE_PLACEHOLDER in question else f"{IMAGE_PLACEHOLDER}\n{question}"


@dataclass
class TaskScores:
    """One task's evaluation: the score (the matrix entry), the share of answers in the
    format asked, and CIDEr-D for a caption task (None otherwise)."""

    score: float
    format_share: float
    cider_d: float | None = None


def score_answers(task: InstructionTask, answers: Sequence[str]) -> TaskScores:
    """`answers` (one per test item, in order) scored as `task.metric` says."""
    from mmcl.eval.vqa import normalize_answer

    items = [task.test.instruction(i) for i in range(len(task.test))]
    if len(answers) != len(items):
        raise ValueError(f"task {task.name!r}: {len(answers)} answers for {len(items)} items")
    asked = task.answer_format
    if asked == AS_REFERENCE:
        asked = [answer_format(item.answer) for item in items]
    shares = format_share(answers, asked)
    if task.metric == "vqa":
        right = [
            normalize_answer(answer) == normalize_answer(item.answer)
            for answer, item in zip(answers, items, strict=True)
        ]
        return TaskScores(sum(right) / len(right), shares)
    from mmcl.eval.captioning import cider_d
    from mmcl.eval.scene_captions import attribute_accuracy

    scenes = [item.scene for item in items]
    if any(scene is None for scene in scenes):
        raise ValueError(f"caption task {task.name!r}: its test items need their scenes")
    by_attribute = attribute_accuracy(list(answers), scenes)
    references = [list(item.references or (item.answer,)) for item in items]
    cider = cider_d(list(answers), references)
    return TaskScores(sum(by_attribute.values()) / len(by_attribute), shares, cider)


@torch.no_grad()
def generate_answers(
    model, encoder, data: Instructions, max_new_tokens: int, batch_size: int = 64, method=None
) -> list[str]:
    """Greedy answers of `model` to every instruction of `data`, from the chat template's
    prompt (left-padded batches through the model's own `generate`). A `method` that routes
    rows (its `routes` hook: a task's LoRA chosen by a selector, prompts) answers each row
    under the route it picks."""
    from mmcl.continual.methods.task_keys import run_routes
    from mmcl.data.chat_template import left_pad

    tokenizer = encoder.tokenizer
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        for start in range(0, len(data), batch_size):
            indices = range(start, min(start + batch_size, len(data)))
            prompts = [
                encoder.encode_prompt([], prompt_of(data.instruction(i).question)) for i in indices
            ]
            images = torch.stack([data[i][0] for i in indices]).to(device)
            ids, mask = left_pad(prompts, tokenizer.pad_token_id)
            ids, mask = ids.to(device), mask.to(device)
            routes = None if method is None else method.routes(model, images, ids, mask)
            new = run_routes(
                routes,
                len(images),
                lambda rows, ids=ids, images=images, mask=mask: model.generate(
                    ids[rows],
                    images[rows],
                    mask[rows],
                    max_new_tokens=max_new_tokens,
                    end_token=tokenizer.eos_token_id,
                    pad_token=tokenizer.pad_token_id,
                ),
                pad=tokenizer.pad_token_id,
            )
            answers += tokenizer.batch_decode(new.cpu(), skip_special_tokens=True)
    finally:
        model.train(was_training)
    return [answer.strip() for answer in answers]


def evaluate_task(
    model, encoder, task: InstructionTask, batch_size: int = 64, method=None
) -> TaskScores:
    answers = generate_answers(model, encoder, task.test, task.max_new_tokens, batch_size, method)
    return score_answers(task, answers)


def evaluate_stream(
    model, encoder, stream: InstructionStream, batch_size: int = 64, method=None
) -> dict:
    """One row of every matrix: ``{"scores", "formats", "cider_d", "general"}`` (each a list
    over the tasks, except `general`: ``{set name: score}``). `method` answers through its
    routes (see `generate_answers`), the general sets too: they are what the model kept."""
    results = [evaluate_task(model, encoder, task, batch_size, method) for task in stream]
    general = {
        name: evaluate_task(model, encoder, task, batch_size, method).score
        for name, task in (stream.general or {}).items()
    }
    return {
        "scores": [r.score for r in results],
        "formats": [r.format_share for r in results],
        "cider_d": [r.cider_d for r in results],
        "general": general,
    }
