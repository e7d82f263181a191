"""Continual contrastive pre-training: a stream of captioned data sets, trained with CLIP's
contrastive loss and evaluated by image-text retrieval (the setting of Mod-X and KDR).

A :class:`CaptionedStream` is an ordered list of :class:`CaptionedTask`, each a train and a
test set of ``(image, caption tokens)`` pairs. The continual runner accepts it in place of a
classification scenario: every task trains with the contrastive objective (`config.loss`:
InfoNCE or SigLIP), and after every task each task's test set is scored by
:func:`retrieval_recall_at_1`, so the accuracy matrix holds R@1 and the usual metrics (Last,
BWT, Transfer, ...) read it as they read accuracy. Methods that need class prompts cannot run
on it; those that can say so with ``takes_captions = True`` (fine-tuning, frozen, ER, LwF on
the batch's similarities, ZSCL, WiSE-FT, Mod-X, KDR), and the runner refuses the others before
training.

The built-in stream (:func:`scene_styles_stream`) is the built-in captioned scenes in a
sequence of styles (upright, turned, colour channels reordered), each task drawing other
scenes than the rest; the task "cifar10-captions" is CIFAR-10 captioned from its class names
and prompt templates (from the data root, as `mmcl.data.datasets` finds it). Scene views
named as held-out sets are scored zero-shot after every task (`mmcl.continual.held_out`).

>>> stream = scene_styles_stream(["upright", "rotated-90"], train_size=8, test_size=4)
>>> stream.task_names, len(stream[1].test)
(['upright', 'rotated-90'], 4)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader, Dataset

from mmcl.continual.domains import PermuteChannels, Rotate
from mmcl.continual.held_out import HeldOutSet, scene_held_out_sets
from mmcl.data.captions import class_caption
from mmcl.data.datasets import data_root, find_dataset
from mmcl.data.scenes import SceneCaptions
from mmcl.data.zeroshot import load_zero_shot_metadata
from mmcl.io.tokenizer import tokenize
from mmcl.io.transforms import get_preprocess

CAPTIONED = "captioned"


class CaptionedPairs(Dataset):
    """``(transform(image), tokens)`` for every ``(image, tokens)`` of `dataset`.

    Captioned pairs have no classes: ``targets`` is 0 for every pair, so methods that keep
    past items by ``(task, index, label)`` (replay) work unchanged."""

    def __init__(self, dataset: Any, transform: Callable[[Any], Any] | None = None):
        self.dataset = dataset
        self.transform = transform

    @property
    def targets(self) -> list[int]:
        return [0] * len(self.dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, tokens = self.dataset[index]
        return (image if self.transform is None else self.transform(image)), tokens


@dataclass(frozen=True, eq=False)
class CaptionedTask:
    name: str
    index: int
    train: Dataset
    test: Dataset

    def __post_init__(self) -> None:
        for split, data in (("train", self.train), ("test", self.test)):
            if len(data) == 0:
                raise ValueError(f"captioned task {self.name!r} has an empty {split} set")


@dataclass(frozen=True, eq=False)
class CaptionedStream:
    tasks: list[CaptionedTask]
    seed: int = 0
    name: str = "captioned"
    # Classification sets scored zero-shot after every task (`mmcl.continual.held_out`).
    held_out: tuple[HeldOutSet, ...] = ()
    kind: ClassVar[str] = CAPTIONED

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("a captioned stream needs at least one task")
        names = [task.name for task in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"captioned stream: task names repeat: {names}")

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> CaptionedTask:
        return self.tasks[index]

    def __iter__(self):
        return iter(self.tasks)

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]


def is_captioned_stream(scenario) -> bool:
    return getattr(scenario, "kind", None) == CAPTIONED


def describe_stream(stream: CaptionedStream) -> str:
    """A plain-text table of the tasks and their sizes.

    >>> print(describe_stream(scene_styles_stream(["upright"], 8, 4)))
    scene-styles: captioned stream, 1 task, seed 0 (contrastive loss; R@1 after every task)
    #  task     train  test
    0  upright      8     4
    """
    plural = "" if len(stream) == 1 else "s"
    lines = [
        f"{stream.name}: captioned stream, {len(stream)} task{plural}, seed {stream.seed} "
        f"(contrastive loss; R@1 after every task)"
    ]
    rows = [["#", "task", "train", "test"]]
    rows += [[str(t.index), t.name, str(len(t.train)), str(len(t.test))] for t in stream]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    if stream.held_out:
        sets = ", ".join(f"{h.name} ({len(h.data)})" for h in stream.held_out)
        lines.append(f"held-out zero-shot sets, scored after every task: {sets}")
    return "\n".join(lines)


@torch.no_grad()
def retrieval_recall_at_1(model, data: Dataset, batch_size: int = 256) -> float:
    """Mean of image -> text and text -> image R@1 over the pairs of `data`.

    Image i retrieves the text most similar to it (cosine), text j the most similar image; a
    retrieval is correct when the retrieved text is the query image's caption (the same
    tokens), or the retrieved image is captioned by the query text. With distinct captions
    that is the usual R@1; with repeated ones (class captions) every copy counts as a match.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    images, texts, tokens = [], [], []
    try:
        for batch_images, batch_tokens in DataLoader(data, batch_size=batch_size):
            batch_tokens = batch_tokens.to(device)
            images.append(model.encode_image(batch_images.to(device), normalize=True).float())
            texts.append(model.encode_text(batch_tokens, normalize=True).float())
            tokens.append(batch_tokens)
    finally:
        model.train(was_training)
    if not images:
        raise ValueError("retrieval needs at least one image-text pair")
    similarity = torch.cat(images) @ torch.cat(texts).T  # (images, texts)
    tokens = torch.cat(tokens)
    _, caption_id = torch.unique(tokens, dim=0, return_inverse=True)  # equal captions, one id
    image_to_text = (caption_id[similarity.argmax(dim=1)] == caption_id).float().mean()
    text_to_image = (caption_id[similarity.argmax(dim=0)] == caption_id).float().mean()
    return float((image_to_text + text_to_image) / 2)


# --- the built-in stream ----------------------------------------------------------------------

STYLES = ("upright", "rotated-90", "rotated-180", "channels-gbr", "channels-brg")
CIFAR10_TASK = "cifar10-captions"  # a task of the stream, not a style of the scenes


def style_transform(style: str) -> Callable[[Any], Any] | None:
    """The image transform of a style: "upright", "rotated-DEG" or "channels-XYZ"."""
    kind, _, value = style.partition("-")
    if style == "upright":
        return None
    if kind == "rotated" and value.lstrip("-").isdigit():
        return Rotate(int(value))
    if kind == "channels" and sorted(value) == ["b", "g", "r"]:
        return PermuteChannels(["rgb".index(c) for c in value])
    raise ValueError(
        f"unknown scene style {style!r}: use 'upright', 'rotated-DEGREES' or 'channels-' and "
        f"an order of r, g, b (e.g. {', '.join(STYLES)}), or {CIFAR10_TASK}"
    )


def scene_styles_stream(
    styles: Sequence[str] = ("upright", "rotated-90", "channels-gbr"),
    train_size: int = 1000,
    test_size: int = 200,
    image_size: int = 32,
    seed: int = 0,
    cifar10_root: str | Path | None = None,
    held_out: Sequence[str] = (),
    download: bool = False,
    data_root: str | Path | None = None,
) -> CaptionedStream:
    """Captioned scenes in each style of `styles`, in order; the style "cifar10-captions" is
    CIFAR-10 captioned from its class names and templates, read from `data_root` (None:
    `mmcl.data.datasets.data_root`; image folders ``cifar10/train`` or torchvision's files;
    `download` lets torchvision fetch them). `cifar10_root`, the older way: that data root,
    and CIFAR-10 last when no style names it.

    Task t draws its scenes with seed ``1000 * seed + t``, so no two tasks share a scene; the
    test sets come from the scenes' "test" split, disjoint from every "train" scene.
    `held_out` names scene views ("shape", "colour", ...) scored zero-shot after every task,
    `test_size` items each (`mmcl.continual.held_out`)."""
    held_out_sets = scene_held_out_sets(list(held_out), test_size, image_size, seed)
    if not styles and cifar10_root is None:
        raise ValueError("scene_styles_stream: name at least one style or give cifar10_root")
    styles = list(styles)
    if cifar10_root is not None and CIFAR10_TASK not in styles:
        styles.append(CIFAR10_TASK)
    tasks = []
    for index, style in enumerate(styles):
        if style == CIFAR10_TASK:
            sizes = (train_size, test_size)
            root = data_root if cifar10_root is None else cifar10_root
            train, test = _cifar10_captions(root, download, image_size, seed, sizes)
            tasks.append(CaptionedTask(CIFAR10_TASK, index, train, test))
            continue
        transform = style_transform(style)
        train, test = (
            CaptionedPairs(
                SceneCaptions(split, size, image_size, 1000 * seed + index, tokenizer=tokenize),
                transform,
            )
            for split, size in (("train", train_size), ("test", test_size))
        )
        tasks.append(CaptionedTask(style, index, train, test))
    return CaptionedStream(tasks, seed, name="scene-styles", held_out=held_out_sets)


def _cifar10_captions(
    root: str | Path | None, download: bool, image_size: int, seed: int, sizes: Sequence[int]
):
    """CIFAR-10's train and test sets from the data root (image folders or torchvision's
    files), `sizes` items each drawn with `seed`, captioned from the class names: the train
    set with the zero-shot templates in turn, the test set with the first alone ("a photo of
    a {}."). Its captions then repeat by class, every copy counts as a match
    (`retrieval_recall_at_1`), and R@1 reads as class retrieval. With every template on the
    test set too, a match would also need the template, which no image tells (R@1 would
    stay near 1/18 however well the classes are learnt)."""
    meta = load_zero_shot_metadata("cifar10")
    parts = []
    for split, size in zip(("train", "test"), sizes, strict=True):
        found = find_dataset("cifar10", split, data_root(root), download)
        found.check_classes(meta.classnames)
        picks = sorted(
            random.Random(f"cifar10-captions:{seed}:{split}").sample(
                range(len(found.labels)), min(size, len(found.labels))
            )
        )
        images = found.subset(picks, get_preprocess(image_size))
        templates = meta.templates if split == "train" else meta.templates[:1]
        parts.append(CaptionedPairs(LabelCaptions(images, meta.classnames, templates, picks)))
    return parts[0], parts[1]


class LabelCaptions(Dataset):
    """``(image, caption tokens)`` for the ``(image, label)`` items of `data`: item i is
    captioned ``class_caption(classnames[label], templates, indices[i])`` (templates in turn
    by the item's index in the whole data set, as `ClassCaptions` does)."""

    def __init__(self, data, classnames, templates, indices: Sequence[int]):
        self.data, self.classnames, self.templates = data, list(classnames), list(templates)
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        image, label = self.data[index]
        caption = class_caption(self.classnames[label], self.templates, self.indices[index])
        return image, tokenize([caption])[0]
