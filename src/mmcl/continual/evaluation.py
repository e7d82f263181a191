"""Accuracy of a model (through its method) on one task's test set."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from mmcl.continual.classes import evaluation_space, stream_data
from mmcl.continual.heads import head_logits, is_classifier


@torch.no_grad()
def task_accuracy(
    model, method, scenario, task_index: int, evaluated_after: int, run, batch_size: int = 256
) -> float:
    """Top-1 accuracy on task `task_index` after training task `evaluated_after` (-1: before
    any), over the classes `evaluation_space` names; the method's `predict` may replace the
    zero-shot classifier (or, for a plain classifier, the head's columns), and its
    `image_features` / `class_features` the towers' features."""
    task = scenario.tasks[task_index]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    space = evaluation_space(scenario, task_index, evaluated_after)
    classifier = None
    correct = total = 0
    try:
        for images, labels in DataLoader(
            stream_data(scenario, task_index, "test"), batch_size=batch_size
        ):
            images = images.to(device)
            logits = method.predict(model, images, space, run)
            if logits is None and is_classifier(model):
                logits = head_logits(model, images, space.labels)
            if logits is None:
                if classifier is None:
                    own = method.class_features(model, space)
                    classifier = space.classifier(model) if own is None else own[0].T
                    classifier = classifier.float()
                own = method.image_features(model, images)
                features = model.encode_image(images, normalize=True) if own is None else own[0]
                logits = features.float() @ classifier
            if logits.shape[1] != len(space):
                raise ValueError(
                    f"{method.name}.predict gave {logits.shape[1]} columns for {len(space)} classes"
                )
            predicted = logits.argmax(dim=1).cpu()
            correct += int((predicted == space.positions(labels)).sum())
            total += len(labels)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError(f"task {task.name!r} has an empty test set")
    return correct / total
