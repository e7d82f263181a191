"""Built-in instruction data for the LLaVA-style bridges, from the procedural scenes, as
`Conversation` records (LLaVA's JSON format: `mmcl.data.conversations`).

* ``stage="captions"`` (stage 1, the projector's alignment): one turn, an instruction to
  caption the image and one of the scenes' varied captions.
* ``stage="instructions"`` (stage 2): one to `max_turns` turns about one scene. The first
  turn's kind cycles with the index, so kinds are balanced; its answer is balanced as
  `SceneQuestions` balances it. Kinds: "shape" (what), "colour" (which colour), "count" (how
  many), "where" (single objects), "yes/no" (the held-out questions' checks of one
  attribute: "is the ring green?", "are there exactly two stars?"; half of them "yes"),
  "compare" (two kinds or two colours: "are there more stars than circles?", "which are
  there more of, stars or circles?", "is the star red or blue?") and "describe" (one full
  sentence: count, size, colour, shape, position, background).

A scene holds one kind of object, so a comparison pits the kind shown against one that is
not there. Short answers are single words as in VQA ("red", "3", "left", "yes").

`scene_tokenizer_text` is the text a new bridge's tokenizer learns: these conversations, the
scenes' captions, questions and answers, and the chat template's words.

>>> data = SceneConversations("train", size=12, transform=lambda image: image)
>>> conversation = data.conversation(2)
>>> conversation.turns[0][0].startswith("<image>\\n"), data.kinds(2)[0]
(True, 'count')
>>> data.turns(2)[0][1] == str(data.scene(2).count)
True
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from mmcl.data.chat_template import ChatTemplate
from mmcl.data.conversations import IMAGE_PLACEHOLDER, Conversation, write_llava_json
from mmcl.data.scene_qa import ANSWERS, _what_question, scene_texts, yes_no_about
from mmcl.data.scenes import _SceneDataset
from mmcl.data.scenes_identity import COLOURS, SHAPES, Scene, sample_scene
from mmcl.data.scenes_render import render
from mmcl.data.scenes_text import POSITION_PHRASES, SHAPE_WORDS, caption
from mmcl.io.atomic import atomic_path

STAGES = ("captions", "instructions")
# "yes/no" asks as `SceneQuestions` does: without it no held-out yes/no question had ever been
# seen in training, and none was answered yes or no.
TURN_KINDS = ("shape", "colour", "count", "where", "yes/no", "compare", "describe")
CAPTION_INSTRUCTIONS = (
    "describe the image briefly.",
    "give a short caption of the image.",
    "what does the picture show?",
    "summarise the image in a few words.",
)
DESCRIBE_INSTRUCTIONS = ("describe the image.", "describe the image in detail.")
_ATTRIBUTE = {"shape": "shape", "colour": "colour", "count": "count", "where": "position"}
_COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


class SceneConversations(_SceneDataset):
    """``(image, Conversation)`` pairs of procedural scenes; item i depends only on
    (split, seed, stage, max_turns, i).

    Args:
        split, size, image_size, seed, transform: as for `mmcl.data.scenes.SceneCaptions`.
        stage: "captions" (stage 1) or "instructions" (stage 2).
        max_turns: the most turns an instruction conversation has (each has 1 to it).
    """

    def __init__(
        self,
        split: str,
        size: int,
        stage: str = "instructions",
        image_size: int = 32,
        seed: int = 0,
        transform: Callable[[Image.Image], Any] | None = None,
        max_turns: int = 3,
    ) -> None:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}")
        if not isinstance(max_turns, int) or max_turns < 1:
            raise ValueError(f"max_turns must be a positive int, got {max_turns!r}")
        super().__init__(split, size, image_size, seed, transform)
        self.stage, self.max_turns = stage, max_turns
        self._kind = f"conversations/{stage}/{max_turns}"

    def _record(self, index: int) -> tuple[Scene, list[tuple[str, str, str]]]:
        """The scene and its turns as (kind, question, answer)."""
        rng = self._rng(index)
        index %= self.size
        if self.stage == "captions":
            scene = sample_scene(rng, self.split)
            return scene, [("caption", rng.choice(CAPTION_INSTRUCTIONS), caption(scene, rng))]
        first = TURN_KINDS[index % len(TURN_KINDS)]
        turn = index // len(TURN_KINDS)  # how many conversations began with this kind before
        if first in _ATTRIBUTE:
            values = ANSWERS[first]
            answer = values[turn % len(values)]
            fixed = {_ATTRIBUTE[first]: int(answer) if first == "count" else answer}
            scene = sample_scene(rng, self.split, **fixed)
        else:
            scene = sample_scene(rng, self.split)
        kinds = [first]
        others = [k for k in TURN_KINDS if k != first and (k != "where" or scene.count == 1)]
        kinds += rng.sample(others, rng.randrange(self.max_turns))
        # A first yes/no turn alternates yes and no; a later one is yes or no by a coin.
        yes = [turn % 2 == 0] + [rng.random() < 0.5 for _ in kinds[1:]]
        return scene, [
            (kind, *_turn(kind, scene, rng, y)) for kind, y in zip(kinds, yes, strict=True)
        ]

    def scene(self, index: int) -> Scene:
        return self._record(index)[0]

    def kinds(self, index: int) -> list[str]:
        """The kind of each turn of item ``index`` ("caption" in stage 1)."""
        return [kind for kind, _, _ in self._record(index)[1]]

    def turns(self, index: int) -> list[tuple[str, str]]:
        """Item ``index``'s (question, answer) turns, without the image placeholder."""
        return [(question, answer) for _, question, answer in self._record(index)[1]]

    def conversation(self, index: int) -> Conversation:
        turns = self.turns(index)
        turns[0] = (f"{IMAGE_PLACEHOLDER}\n{turns[0][0]}", turns[0][1])
        return Conversation(self.sample_id(index), f"{self.sample_id(index)}.png", tuple(turns))

    def sample_id(self, index: int) -> str:
        return f"{self.split}-{self.stage}-{index % self.size:06d}"

    def __getitem__(self, index: int) -> tuple[Any, Conversation]:
        image = self.transform(render(self.scene(index), self.image_size))
        return image, self.conversation(index)

    def write(self, folder: str | os.PathLike) -> Path:
        """The data set as LLaVA's files: ``folder/conversations.json`` and one PNG an item
        (named by the samples' "image"). Returns the JSON file's path."""
        folder = Path(folder)
        for index in range(self.size):
            with atomic_path(folder / f"{self.sample_id(index)}.png") as tmp:
                render(self.scene(index), self.image_size).save(tmp, format="PNG")
        conversations = (self.conversation(index) for index in range(self.size))
        return write_llava_json(conversations, folder / "conversations.json")


def scene_tokenizer_text(size: int, template: ChatTemplate | None = None) -> list[str]:
    """The built-in text the tokenizer learns: `size` scene captions, questions and answers
    and conversations (their text as the template lays it out, without the placeholder),
    and the chat template's words."""
    template = template or ChatTemplate()
    conversations = SceneConversations("train", size, transform=lambda image: image)
    texts = scene_texts(size)
    for index in range(size):
        for turn in conversations.conversation(index).turns:
            texts += [text.replace(IMAGE_PLACEHOLDER, "") for text in turn]
    # Every sample holds the template's words: weigh them so, and they become few tokens.
    template_words = [w for w in (template.system, template.user, template.assistant) if w]
    instructions = list(CAPTION_INSTRUCTIONS + DESCRIBE_INSTRUCTIONS)
    return texts + template_words * max(1, size // 4) + instructions


def describe(scene: Scene) -> str:
    """One full, canonical sentence about `scene`: "two small red stars on a white
    background", "one large blue heart on the left on a black background"."""
    singular, plural = SHAPE_WORDS[scene.shape][0]
    noun = plural if scene.count > 1 else singular
    where = f" {POSITION_PHRASES[scene.position][0]}" if scene.position else ""
    return (
        f"{_COUNT_WORDS[scene.count]} {scene.size} {scene.colour} {noun}{where} on a "
        f"{scene.background} background"
    )


def _turn(kind: str, scene: Scene, rng: random.Random, yes: bool) -> tuple[str, str]:
    if kind in _ATTRIBUTE:
        answer = {
            "shape": scene.shape,
            "colour": scene.colour,
            "count": str(scene.count),
            "where": scene.position,
        }[kind]
        return _what_question(kind, scene, rng), answer
    if kind == "describe":
        return rng.choice(DESCRIBE_INSTRUCTIONS), describe(scene)
    if kind == "yes/no":
        return yes_no_about(scene, rng, yes)[1], "yes" if yes else "no"
    return _comparison(scene, rng)


def _comparison(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """A question comparing two kinds of object, or two colours, of which one is shown."""
    shown_singular, shown = SHAPE_WORDS[scene.shape][0]
    other_singular, other = SHAPE_WORDS[rng.choice([s for s in SHAPES if s != scene.shape])][0]
    pair = [shown, other]
    rng.shuffle(pair)
    style = rng.randrange(3)
    if style == 0:
        return f"are there more {pair[0]} than {pair[1]}?", "yes" if pair[0] == shown else "no"
    if style == 1:
        return f"which are there more of, {pair[0]} or {pair[1]}?", scene.shape
    colours = [scene.colour, rng.choice([c for c in COLOURS if c != scene.colour])]
    rng.shuffle(colours)
    noun = shown if scene.count > 1 else shown_singular
    be = "are" if scene.count > 1 else "is"
    return f"{be} the {noun} {colours[0]} or {colours[1]}?", scene.colour
