"""Zero-shot classification on held-out sets, measured after every task of a captioned stream.

Continual contrastive pre-training asks two questions after each task: are the stream's
pairs still retrieved (the R@1 matrix), and is the model still a zero-shot classifier on data
it is never trained on? A :class:`HeldOutSet` is such a classification set (e.g. a view of the
built-in scenes: "shape", "colour", "count", "position"), with its class names and prompt
templates. The runner records each set's accuracy before training and after every task in
``progress.json`` (``"held_out": {"initial": {set: acc}, "rows": [{set: acc}, ...]}``); the
report adds ``held_out_<set>``, the accuracy after the last task, to the metrics.

>>> record = {"initial": {"shape": 0.5}, "rows": [{"shape": 0.4}, {"shape": 0.25}]}
>>> summarize_held_out(record)
{'held_out_shape': 0.25}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mmcl.data.scenes import SceneClassification, view_classnames, view_templates
from mmcl.eval.zero_shot import build_zero_shot_classifier
from mmcl.io.tokenizer import tokenize

PREFIX = "held_out_"  # the metrics' keys (report.HELD_OUT_PREFIX)
SCENE_VIEWS = ("shape", "colour", "count", "position")


@dataclass(frozen=True, eq=False)
class HeldOutSet:
    """A classification set no task of the stream trains on: ``(image, label)`` items, labels
    indexing `classnames`, and the templates its zero-shot prompts are made from."""

    name: str
    data: Dataset
    classnames: Sequence[str]
    templates: Sequence[str]


def scene_held_out_sets(
    views: Sequence[str], size: int, image_size: int = 32, seed: int = 0
) -> tuple[HeldOutSet, ...]:
    """The scenes' classification views named in `views`, each `size` test-split items."""
    unknown = [view for view in views if view not in SCENE_VIEWS]
    if unknown:
        raise ValueError(
            f"held-out sets {unknown}: not a view of the built-in scenes; choose among "
            f"{', '.join(SCENE_VIEWS)}"
        )
    if len(set(views)) != len(views):
        raise ValueError(f"held-out sets: a view is named twice in {list(views)}")
    return tuple(
        HeldOutSet(
            view,
            SceneClassification(view, "test", size, image_size, seed),
            view_classnames(view),
            view_templates(view),
        )
        for view in views
    )


@torch.no_grad()
def held_out_accuracy(model, held_out: HeldOutSet, batch_size: int = 256) -> float:
    """Top-1 zero-shot accuracy of `model` on `held_out`: each image goes to the class whose
    prompt-ensembled text embedding (the templates' mean, normalised) is most similar."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        classifier = build_zero_shot_classifier(
            model, tokenize, list(held_out.classnames), list(held_out.templates), device=device
        )
        for images, labels in DataLoader(held_out.data, batch_size=batch_size):
            features = model.encode_image(images.to(device), normalize=True).float()
            predicted = (features @ classifier).argmax(dim=1).cpu()
            correct += int((predicted == labels).sum())
            total += len(labels)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError(f"held-out set {held_out.name!r} is empty")
    return correct / total


def evaluate_held_out(model, sets: Sequence[HeldOutSet], batch_size: int = 256) -> dict[str, float]:
    """``{set name: zero-shot accuracy}`` for every set."""
    return {held_out.name: held_out_accuracy(model, held_out, batch_size) for held_out in sets}


def summarize_held_out(record: Mapping[str, Any]) -> dict[str, float]:
    """``held_out_<set>``: each set's accuracy after the last task (the last row)."""
    rows = record["rows"]
    if not rows:
        raise ValueError("the held-out record holds no row (no task was trained)")
    return {f"{PREFIX}{name}": value for name, value in rows[-1].items()}
