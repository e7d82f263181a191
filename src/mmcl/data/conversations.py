"""LLaVA's JSON conversation format: read, check and write it.

A file is a JSON list of samples (or, for ``.jsonl``, one sample a line), each

    {"id": "000001", "image": "scenes/000001.png",
     "conversations": [{"from": "human", "value": "<image>\\nwhat colour is the star?"},
                       {"from": "gpt", "value": "red"}, ...]}

Turns alternate ``human``/``gpt``, starting with ``human`` and ending with ``gpt``. ``<image>``
marks where the image goes, at most once, and only in a sample with an ``image``. A sample
with an image but no ``<image>`` gets it at the start of its first turn, as LLaVA's own
loader puts it there. The built-in scene conversations (`mmcl.data.scene_conversations`) are
made of the same `Conversation` records and written in the same format, so a user's own
LLaVA-format file goes through the same reader and the same training code.

>>> sample = {"id": "a", "image": "x.png",
...           "conversations": [{"from": "human", "value": "how many stars?"},
...                             {"from": "gpt", "value": "3"}]}
>>> conversation = conversation_from_llava(sample, where="example.json: sample 0")
>>> conversation.turns
(('<image>\\nhow many stars?', '3'),)
>>> conversation_to_llava(conversation) == {**sample, "conversations": [
...     {"from": "human", "value": "<image>\\nhow many stars?"}, {"from": "gpt", "value": "3"}]}
True
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcl.io.atomic import atomic_path

IMAGE_PLACEHOLDER = "<image>"
_ROLES = ("human", "gpt")


class ConversationFormatError(ValueError):
    """A conversation file, or one of its samples, is not in LLaVA's format."""


@dataclass(frozen=True)
class Conversation:
    """One sample: its id, its image (a path relative to the image folder, or None) and its
    turns as (user text, assistant answer) pairs."""

    id: str
    image: str | None
    turns: tuple[tuple[str, str], ...]


def conversation_from_llava(sample: Any, where: str) -> Conversation:
    """One sample of a LLaVA file as a `Conversation`; `where` names it in errors (file and
    sample)."""

    def fail(problem: str) -> ConversationFormatError:
        return ConversationFormatError(f"{where}: {problem}")

    if not isinstance(sample, dict):
        raise fail(f"a sample must be a JSON object, got {type(sample).__name__}")
    turns = sample.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise fail('needs "conversations": a non-empty list of {"from", "value"} turns')
    image = sample.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        raise fail('"image" must be a file path (a string)')
    texts = []
    for number, turn in enumerate(turns):
        expected = _ROLES[number % 2]
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise fail(f'turn {number} must be an object with a string "value"')
        if turn.get("from") != expected:
            raise fail(
                f"turn {number} is from {turn.get('from')!r}, expected {expected!r}: turns "
                f'alternate "human" and "gpt", starting with "human"'
            )
        texts.append(turn["value"])
    if len(texts) % 2:
        raise fail('the last turn is from "human": a conversation ends with a "gpt" answer')
    placeholders = sum(text.count(IMAGE_PLACEHOLDER) for text in texts)
    if placeholders > 1:
        raise fail(f"{placeholders} {IMAGE_PLACEHOLDER} placeholders; a sample holds one image")
    if any(IMAGE_PLACEHOLDER in text for text in texts[1::2]):
        raise fail(f'{IMAGE_PLACEHOLDER} is in a "gpt" answer; it belongs in a "human" turn')
    if placeholders and image is None:
        raise fail(f'has {IMAGE_PLACEHOLDER} but no "image"')
    if image is not None and not placeholders:
        texts[0] = f"{IMAGE_PLACEHOLDER}\n{texts[0]}"
    sample_id = sample.get("id", "")
    return Conversation(str(sample_id), image, tuple(zip(texts[0::2], texts[1::2], strict=True)))


def conversation_to_llava(conversation: Conversation) -> dict[str, Any]:
    """A `Conversation` as one sample of a LLaVA file."""
    sample: dict[str, Any] = {"id": conversation.id}
    if conversation.image is not None:
        sample["image"] = conversation.image
    sample["conversations"] = [
        {"from": role, "value": text}
        for turn in conversation.turns
        for role, text in zip(_ROLES, turn, strict=True)
    ]
    return sample


def read_llava_json(path: str | os.PathLike) -> list[Conversation]:
    """Every sample of a LLaVA-format ``.json`` (a list) or ``.jsonl`` (one a line) file; the
    first bad one is an error naming the file and the sample (its index and id)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such conversation file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        samples, names = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                samples.append(_json(line, f"{path}: line {number}"))
                names.append(f"line {number}")
    else:
        samples = _json(text, str(path))
        if not isinstance(samples, list):
            raise ConversationFormatError(
                f"{path}: LLaVA's format is a JSON list of samples, got a "
                f"{type(samples).__name__} (for one sample a line, name the file .jsonl)"
            )
        names = [f"sample {index}" for index in range(len(samples))]
    if not samples:
        raise ConversationFormatError(f"{path}: holds no samples")
    conversations = []
    for name, sample in zip(names, samples, strict=True):
        sample_id = sample.get("id") if isinstance(sample, dict) else None
        where = f"{path}: {name}" + (f" (id {sample_id!r})" if sample_id is not None else "")
        conversations.append(conversation_from_llava(sample, where))
    return conversations


def write_llava_json(conversations: Iterable[Conversation], path: str | os.PathLike) -> Path:
    """Write `conversations` as a LLaVA-format JSON list (atomically)."""
    samples = [conversation_to_llava(conversation) for conversation in conversations]
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(samples, indent=1, ensure_ascii=False), encoding="utf-8")
    return Path(path)


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ConversationFormatError(f"{where}: not valid JSON: {error}") from None


class ConversationImages:
    """``(image, Conversation)`` items of a LLaVA-format file, the images read from
    `image_folder` (the samples' "image" paths are relative to it) through `transform`.
    Every sample needs an image: a text-only one is refused, naming it."""

    def __init__(self, path: str | os.PathLike, image_folder: str | os.PathLike, transform):
        self.conversations = read_llava_json(path)
        self.image_folder, self.transform = Path(image_folder), transform
        for index, conversation in enumerate(self.conversations):
            if conversation.image is None:
                raise ConversationFormatError(
                    f"{path}: sample {index} (id {conversation.id!r}) has no image; mmcl "
                    f"trains LLaVA models on one image a sample"
                )

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int):
        from PIL import Image

        conversation = self.conversations[index]
        with Image.open(self.image_folder / conversation.image) as image:
            return self.transform(image.convert("RGB")), conversation
