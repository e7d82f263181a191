"""What a training step minimises: contrastive image-text loss, or classification by prompts.

An objective maps a batch to named loss terms (summed by the engine) and the model outputs
that plugins may reuse (e.g. a distillation plugin reads the image features):

    terms, outputs = objective(model, images, targets)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from mmcl.data.zeroshot import format_prompts
from mmcl.io.tokenizer import tokenize
from mmcl.train.losses import ClipLoss, SigLipLoss


class ContrastiveObjective:
    """CLIP's InfoNCE or SigLIP's sigmoid loss on (images, caption tokens) batches."""

    def __init__(self, loss: str = "clip"):
        self.loss = loss
        self.loss_fn = SigLipLoss() if loss == "siglip" else ClipLoss()

    def check(self, model) -> None:
        if self.loss == "siglip" and getattr(model, "logit_bias", None) is None:
            raise ValueError(
                "loss 'siglip' needs a model with a logit bias: set init_logit_bias (e.g. -10) "
                "in the model config"
            )

    def feature_loss(self, model, image_features, text_features, logit_scale) -> torch.Tensor:
        if self.loss == "siglip":
            return self.loss_fn(image_features, text_features, logit_scale, model.logit_bias)
        return self.loss_fn(image_features, text_features, logit_scale)

    def __call__(self, model, images, texts):
        outputs = model(images, texts, output_dict=True)
        unwrapped = getattr(model, "module", model)  # DistributedDataParallel keeps it there
        loss = self.feature_loss(
            unwrapped, outputs["image_features"], outputs["text_features"], outputs["logit_scale"]
        )
        return {"contrastive": loss}, outputs


class ClassificationObjective:
    """Cross-entropy over class-name prompts (the text tower is the classifier head).

    Fine-tuning CLIP this way keeps the image and text embeddings aligned, as in FLYP
    (Goyal et al. 2023) and ZSCL (Zheng et al. 2023). Each step embeds one prompt per class;
    the template cycles with the step so every template is seen.

    `label_ids[k]` is the dataset label of `classnames[k]` (class-incremental tasks keep
    global labels); labels not among them are an error. `templates` is one list shared by all
    classes, or one list per class (classes from different data sets are prompted their own way).
    """

    def __init__(
        self,
        classnames: Sequence[str],
        templates: Sequence[str] | Sequence[Sequence[str]],
        label_ids: Sequence[int] | None = None,
        tokenizer=tokenize,
    ):
        if not classnames:
            raise ValueError("a classification objective needs at least one class name")
        label_ids = list(range(len(classnames))) if label_ids is None else list(label_ids)
        if len(label_ids) != len(classnames):
            raise ValueError(f"{len(classnames)} class names but {len(label_ids)} label ids")
        if not templates:
            raise ValueError("a classification objective needs at least one prompt template")
        if isinstance(templates[0], str):
            templates = [list(templates)] * len(classnames)
        if len(templates) != len(classnames) or not all(templates):
            raise ValueError(f"{len(classnames)} class names but {len(templates)} template lists")
        cycle = max(len(t) for t in templates)
        self.prompts = [
            tokenizer(
                [
                    format_prompts(name, [own[step % len(own)]])[0]
                    for name, own in zip(classnames, templates, strict=True)
                ]
            )
            for step in range(cycle)
        ]
        self.position = label_positions(label_ids)
        self.calls = 0

    def __call__(self, model, images, labels):
        tokens = self.prompts[self.calls % len(self.prompts)].to(images.device)
        self.calls += 1
        outputs = model(images, tokens, output_dict=True)
        logits = outputs["logit_scale"] * outputs["image_features"] @ outputs["text_features"].T
        targets = class_targets(self.position, labels)
        outputs["logits"] = logits
        return {"classification": F.cross_entropy(logits, targets)}, outputs

    def state_dict(self) -> dict[str, int]:
        return {"calls": self.calls}  # which template comes next, for an exact resume

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.calls = int(state["calls"])


def label_positions(label_ids: Sequence[int]) -> torch.Tensor:
    """A lookup table: entry `label_ids[k]` holds k, every other entry -1."""
    position = torch.full((max(label_ids) + 1,), -1, dtype=torch.long)
    position[torch.tensor(list(label_ids))] = torch.arange(len(label_ids))
    return position


def class_targets(position: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each label's column (see `label_positions`); a label outside the table is an error."""
    known = (labels >= 0) & (labels < len(position))
    targets = position.to(labels.device)[labels.clamp(0, len(position) - 1)]
    targets = torch.where(known, targets, -1)
    if (targets < 0).any():
        unknown = sorted(set(labels[targets < 0].tolist()))
        raise ValueError(f"labels {unknown} are not among the objective's classes")
    return targets
