"""Ready-made evaluations to run during and after training: each is `suite(model) -> metrics`.

Inputs are loaded once when a suite is built; each call only runs the model, so evaluating
every few hundred steps stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mmcl.data.datasets import find_dataset
from mmcl.data.images import ImageFiles, class_folders
from mmcl.data.scenes import SceneCaptions, SceneClassification, view_classnames, view_templates
from mmcl.data.zeroshot import load_zero_shot_metadata
from mmcl.eval.retrieval import retrieval_recall
from mmcl.eval.zero_shot import accuracy, build_zero_shot_classifier
from mmcl.io.tokenizer import tokenize


def _encode_images(model, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat(
        [
            model.encode_image(images[i : i + batch_size].to(device), normalize=True).float()
            for i in range(0, len(images), batch_size)
        ]
    )


class ZeroShotSuite:
    """Zero-shot top-1 accuracy on fixed labelled image sets, one per named task."""

    def __init__(
        self,
        tasks: dict[str, tuple[torch.Tensor, torch.Tensor, list[str], list[str]]],
        tokenizer=tokenize,
    ):
        # name -> (images, labels, class names, templates)
        self.tasks, self.tokenizer = tasks, tokenizer

    def __call__(self, model) -> dict[str, float]:
        metrics = {}
        for name, (images, labels, classnames, templates) in self.tasks.items():
            classifier = build_zero_shot_classifier(model, self.tokenizer, classnames, templates)
            logits = _encode_images(model, images) @ classifier.float()
            metrics[f"zeroshot/{name}"] = accuracy(logits.cpu(), labels, topk=(1,))["top1"]
        return metrics


def scene_views_suite(
    views: Sequence[str],
    split: str = "test",
    size: int = 500,
    image_size: int = 32,
    seed: int = 0,
    tokenizer=tokenize,
) -> ZeroShotSuite:
    tasks = {}
    for view in views:
        data = SceneClassification(view, split, size, image_size=image_size, seed=seed)
        images = torch.stack([data[i][0] for i in range(len(data))])
        labels = torch.tensor([data.label(i) for i in range(len(data))])
        tasks[f"scenes-{view}"] = (images, labels, view_classnames(view), view_templates(view))
    return ZeroShotSuite(tasks, tokenizer)


def folder_suite(
    root: str | Path, preprocess, dataset: str | None = None, max_images: int | None = None
) -> ZeroShotSuite:
    """Zero-shot accuracy on a class-folder image set (evenly thinned to `max_images`)."""
    paths, labels, folders = class_folders(root)
    if max_images and len(paths) > max_images:
        keep = torch.linspace(0, len(paths) - 1, max_images).long().tolist()
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    classnames = [f.replace("_", " ") for f in folders]
    templates = ["a photo of a {}."]
    if dataset:
        metadata = load_zero_shot_metadata(dataset)
        lookup = {name.lower(): name for name in metadata.classnames}
        missing = [c for c in classnames if c.lower() not in lookup]
        if missing:
            raise ValueError(f"{root}: folders {missing} are not {metadata.name} class names")
        classnames = [lookup[c.lower()] for c in classnames]
        templates = list(metadata.templates)
    loader = DataLoader(ImageFiles(paths, preprocess, labels), batch_size=256)
    images = torch.cat([batch[0] for batch in loader])
    name = dataset or Path(root).name
    return ZeroShotSuite({name: (images, torch.tensor(labels), classnames, templates)})


def dataset_suite(
    name: str,
    split: str,
    preprocess,
    max_images: int | None = None,
    root: str | Path | None = None,
    download: bool = False,
) -> ZeroShotSuite:
    """Zero-shot accuracy on a data set by name from the data root (image folders or
    torchvision's files, `mmcl.data.datasets`), with its shipped class names and templates;
    evenly thinned to `max_images`."""
    found = find_dataset(name, split, root, download)
    metadata = load_zero_shot_metadata(name)
    found.check_classes(metadata.classnames)
    keep = list(range(len(found.labels)))
    if max_images and len(keep) > max_images:
        keep = torch.linspace(0, len(keep) - 1, max_images).long().tolist()
    loader = DataLoader(found.subset(keep, preprocess), batch_size=256)
    images = torch.cat([batch[0] for batch in loader])
    labels = torch.tensor([found.labels[i] for i in keep])
    classes, templates = list(metadata.classnames), list(metadata.templates)
    return ZeroShotSuite({name: (images, labels, classes, templates)})


class RetrievalSuite:
    """Image<->text recall@1/5/10 on fixed pairs (caption t belongs to image text_to_image[t])."""

    def __init__(self, name: str, images: torch.Tensor, tokens: torch.Tensor, text_to_image):
        self.name, self.images, self.tokens = name, images, tokens
        self.text_to_image = torch.as_tensor(text_to_image)

    def __call__(self, model) -> dict[str, float]:
        device = next(model.parameters()).device
        texts = torch.cat(
            [
                model.encode_text(self.tokens[i : i + 256].to(device), normalize=True).float()
                for i in range(0, len(self.tokens), 256)
            ]
        )
        recalls = retrieval_recall(_encode_images(model, self.images), texts, self.text_to_image)
        return {f"retrieval/{self.name}/{key}": value for key, value in recalls.items()}


def scene_retrieval_suite(
    split: str = "test", size: int = 500, image_size: int = 32, seed: int = 0, tokenizer=tokenize
) -> RetrievalSuite:
    data = SceneCaptions(split, size, image_size=image_size, seed=seed)
    images = torch.stack([data[i][0] for i in range(size)])
    tokens = tokenizer([data.caption(i) for i in range(size)])
    return RetrievalSuite("scenes", images, tokens, list(range(size)))


class CombinedSuite:
    def __init__(self, suites: Sequence):
        self.suites = list(suites)

    def __call__(self, model) -> dict[str, float]:
        metrics = {}
        for suite in self.suites:
            metrics.update(suite(model))
        return metrics
