"""Question-answer pairs on the built-in scenes, for visual question answering (BLIP's VQA
head, and later the LLM bridges), with every answer known by construction.

``SceneQuestions(split, size)`` yields ``(image, question, answer)``; item ``i`` is a pure
function of ``(split, seed, kinds, i)``. Kinds of question, used in turn by index:

* ``"shape"``  - "what shape are the red objects?" -> ``star``
* ``"colour"`` - "what colour is the heart?" -> ``pink``
* ``"count"``  - "how many circles are there?" -> ``3`` (digits, as VQA writes numbers)
* ``"where"``  - "where is the blue square?" -> ``left`` (single objects only)
* ``"yes/no"`` - "are there exactly two stars?", "is the ring green?", "are there any
  crosses?", "is the heart at the top?" -> ``yes`` / ``no``

Answers are balanced: the n-th question of a kind has answer ``values[n % len(values)]``
(shape, colour, count, position), and the n-th yes/no question is "yes" for even n, so a
data set holds exactly as many "yes" as "no" (one more "yes" when it has an odd number of
yes/no questions). A question only presupposes what is true of its scene ("the red
objects" are red); a "no" question changes only the attribute it asks about.

>>> data = SceneQuestions("train", size=10, transform=lambda image: image)
>>> image, question, answer = data[2]
>>> data.record(2).kind, answer == str(data.scene(2).count)
('count', True)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from mmcl.data.scenes import SceneCaptions, _SceneDataset
from mmcl.data.scenes_identity import COLOURS, COUNTS, POSITIONS, SHAPES, Scene, sample_scene
from mmcl.data.scenes_render import render
from mmcl.data.scenes_text import POSITION_PHRASES, SHAPE_WORDS

__all__ = ["QUESTION_KINDS", "SceneQuestion", "SceneQuestions", "scene_texts", "yes_no_about"]

QUESTION_KINDS: tuple[str, ...] = ("shape", "colour", "count", "where", "yes/no")
# The answers of each "what" kind, in the order the balanced answers cycle through.
ANSWERS: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "count": tuple(str(count) for count in COUNTS),
    "where": POSITIONS,
    "yes/no": ("yes", "no"),
}
_ATTRIBUTE_OF_KIND = {"shape": "shape", "colour": "colour", "count": "count", "where": "position"}
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class SceneQuestion:
    """One question about a scene: its kind, the attribute it asks about, the text and the
    answer."""

    scene: Scene
    kind: str
    attribute: str  # "shape", "colour", "count" or "position"
    question: str
    answer: str


class SceneQuestions(_SceneDataset):
    """``(image, question, answer)`` triples of procedural scenes (strings for the texts).

    Args:
        split, size, image_size, seed, transform: as for
            :class:`~mmcl.data.scenes.SceneCaptions`.
        kinds: the kinds of question to ask, in turn (default: all five).
    """

    def __init__(
        self,
        split: str,
        size: int,
        image_size: int = 32,
        seed: int = 0,
        transform: Callable[[Image.Image], Any] | None = None,
        kinds: Sequence[str] = QUESTION_KINDS,
    ) -> None:
        if isinstance(kinds, str) or not kinds:
            raise ValueError(f"kinds must be a non-empty list of {list(QUESTION_KINDS)}")
        unknown = [kind for kind in kinds if kind not in QUESTION_KINDS]
        if unknown or len(set(kinds)) != len(kinds):
            raise ValueError(
                f"kinds must be distinct names from {list(QUESTION_KINDS)}, got {list(kinds)}"
            )
        super().__init__(split, size, image_size, seed, transform)
        self.kinds = tuple(kinds)
        # The kinds are part of the RNG key, so data sets of different kinds are independent.
        self._kind = "questions/" + ",".join(self.kinds)

    def record(self, index: int) -> SceneQuestion:
        """The scene, kind, question and answer of item ``index``."""
        rng = self._rng(index)
        index %= self.size
        kind = self.kinds[index % len(self.kinds)]
        turn = index // len(self.kinds)  # how many questions of this kind came before
        if kind == "yes/no":
            return _yes_no_question(rng, self.split, answer_is_yes=turn % 2 == 0)
        attribute = _ATTRIBUTE_OF_KIND[kind]
        values = ANSWERS[kind]
        answer = values[turn % len(values)]
        value: Any = int(answer) if kind == "count" else answer
        scene = sample_scene(rng, self.split, **{attribute: value})
        return SceneQuestion(scene, kind, attribute, _what_question(kind, scene, rng), answer)

    def scene(self, index: int) -> Scene:
        return self.record(index).scene

    def __getitem__(self, index: int) -> tuple[Any, str, str]:
        record = self.record(index)
        image = self.transform(render(record.scene, self.image_size))
        return image, record.question, record.answer


def scene_texts(size: int = 5000, split: str = "train", seed: int = 0) -> list[str]:
    """The built-in scenes' texts, to train a vocabulary on: the captions of ``size`` scenes,
    then the questions and answers of ``size`` questions (nothing is drawn).

    >>> texts = scene_texts(10)
    >>> len(texts), texts[10] == SceneQuestions("train", 10).record(0).question
    (30, True)
    """
    captions = SceneCaptions(split, size, seed=seed)
    questions = SceneQuestions(split, size, seed=seed)
    texts = [captions.caption(i) for i in range(size)]
    for i in range(size):
        record = questions.record(i)
        texts += [record.question, record.answer]
    return texts


def _nouns(shape: str) -> tuple[str, str]:
    return SHAPE_WORDS[shape][0]  # the canonical (singular, plural)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _what_question(kind: str, scene: Scene, rng: random.Random) -> str:
    singular, plural = _nouns(scene.shape)
    many = scene.count > 1
    be, objects = ("are", "objects") if many else ("is", "object")
    shapes = plural if many else singular
    colour_word = rng.choice(("colour", "color"))
    templates = {
        "shape": (
            f"what shape {be} the {scene.colour} {objects}?",
            f"what shape {be} the {objects}?",
            f"what is the shape of the {objects}?",
        ),
        "colour": (
            f"what {colour_word} {be} the {shapes}?",
            f"what {colour_word} {be} the {objects}?",
            f"which {colour_word} {be} the {shapes} in the image?",
        ),
        "count": (
            f"how many {plural} are there?",
            "how many objects are there?",
            f"how many {scene.colour} shapes are in the image?",
            f"what is the number of {plural}?",
        ),
        "where": (
            f"where is the {singular}?",
            f"where is the {scene.colour} {singular}?",
            "where is the object?",
            f"in which part of the image is the {singular}?",
        ),
    }
    return rng.choice(templates[kind])


def _yes_no_question(rng: random.Random, split: str, answer_is_yes: bool) -> SceneQuestion:
    scene = sample_scene(rng, split)
    attribute, question = yes_no_about(scene, rng, answer_is_yes)
    return SceneQuestion(scene, "yes/no", attribute, question, "yes" if answer_is_yes else "no")


def yes_no_about(scene: Scene, rng: random.Random, answer_is_yes: bool) -> tuple[str, str]:
    """(the attribute asked about, a yes/no question about `scene` whose answer is "yes"
    exactly when `answer_is_yes`): "are there any stars?", "is the ring green?", "are there
    exactly two stars?", "is the heart at the top?". The held-out questions and stage 2's
    conversations both ask them this way."""
    attributes = ["shape", "colour", "count"] + (["position"] if scene.count == 1 else [])
    attribute = rng.choice(attributes)
    actual = getattr(scene, attribute)
    choices = {"shape": SHAPES, "colour": COLOURS, "count": COUNTS, "position": POSITIONS}
    claimed = (
        actual if answer_is_yes else rng.choice([v for v in choices[attribute] if v != actual])
    )

    singular, plural = _nouns(scene.shape)
    many = scene.count > 1
    if attribute == "shape":
        claimed_singular, claimed_plural = _nouns(claimed)
        question = rng.choice(
            (
                f"are there any {claimed_plural}?",
                f"is there {_article(claimed_singular)} in the image?",
            )
        )
    elif attribute == "colour":
        subject = rng.choice((plural, "objects")) if many else rng.choice((singular, "object"))
        question = f"{'are' if many else 'is'} the {subject} {claimed}?"
    elif attribute == "count":
        noun = rng.choice(((singular, plural), ("object", "objects"), ("shape", "shapes")))
        if claimed == 1:
            question = f"is there exactly one {noun[0]}?"
        else:
            question = f"are there exactly {_NUMBER_WORDS[claimed]} {noun[1]}?"
    else:
        question = f"is the {rng.choice((singular, 'object'))} {POSITION_PHRASES[claimed][0]}?"
    return attribute, question
