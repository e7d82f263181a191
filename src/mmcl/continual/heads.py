"""Training a plain image classifier (`mmcl.models.image_classifier`) on a task stream.

Continual-learning benchmarks before CLIP train a network with a linear output layer over every
class of the stream, not a text tower. The runner and the methods that make sense without text
(fine-tuning, joint, EWC, LwF, ER, iCaRL, DER, WiSE-FT) accept such a model: wherever a CLIP
model builds a classifier from prompts, an `ImageClassifier` takes its head's columns for the
space's stream labels. Methods that need a text tower (ZSCL, CoOp, MoE adapters, L2P, CPE-CLIP,
S-Prompts, Mod-X, KDR) refuse it before training starts.

>>> import torch
>>> from mmcl.models.cifar_resnet import cifar_resnet18
>>> model = cifar_resnet18(num_classes=10, width=8)
>>> objective = HeadObjective([3, 7])
>>> terms, outputs = objective(model, torch.zeros(2, 3, 32, 32), torch.tensor([7, 3]))
>>> outputs["logits"].shape, outputs["all_logits"].shape
(torch.Size([2, 2]), torch.Size([2, 10]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mmcl.continual.classes import ClassSpace
from mmcl.models.image_classifier import ImageClassifier
from mmcl.train.objectives import ClassificationObjective, class_targets, label_positions


def is_classifier(model: nn.Module) -> bool:
    """Whether `model` (or the module a DDP wrapper holds) is a plain `ImageClassifier`."""
    return isinstance(getattr(model, "module", model), ImageClassifier)


class HeadObjective:
    """Cross-entropy over the head's columns for `label_ids` (stream labels), in that order.

    Outputs: ``logits`` over those classes, ``all_logits`` over every column of the head.
    """

    def __init__(self, label_ids: Sequence[int]):
        if not label_ids:
            raise ValueError("a head objective needs at least one class")
        self.labels = torch.tensor(list(label_ids))
        self.position = label_positions(label_ids)

    def __call__(self, model, images, labels):
        all_logits = model(images)
        if all_logits.shape[1] <= int(self.labels.max()):
            raise ValueError(
                f"the model's head has {all_logits.shape[1]} outputs but the stream has class "
                f"label {int(self.labels.max())}: build it with num_classes >= "
                f"{int(self.labels.max()) + 1}"
            )
        logits = all_logits[:, self.labels.to(all_logits.device)]
        targets = class_targets(self.position, labels)
        outputs = {"logits": logits, "all_logits": all_logits}
        return {"classification": F.cross_entropy(logits, targets)}, outputs

    def state_dict(self) -> dict[str, int]:
        return {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        pass


def classification_objective(model: nn.Module, space, method=None):
    """What a task over `space` (a `ClassSpace`) trains: the head's columns for a plain
    classifier; for a CLIP model, image features against class features, each computed by
    `method`'s `image_features` / `class_features` hooks where it gives them, else by the
    towers (class features from the prompts)."""
    if is_classifier(model):
        return HeadObjective(space.labels)
    if method is None:
        return ClassificationObjective(space.names, space.templates, space.labels)

    def class_features(model, templates):
        return method.class_features(model, ClassSpace(space.names, space.labels, templates))

    return ClassificationObjective(
        space.names,
        space.templates,
        space.labels,
        image_features=method.image_features,
        class_features=class_features,
    )


def head_logits(model: nn.Module, images: torch.Tensor, labels: Sequence[int]) -> torch.Tensor:
    """A plain classifier's logits for the classes `labels` (stream labels), in that order."""
    return model(images)[:, torch.as_tensor(list(labels), device=images.device)]
