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
    global labels); labels not among them are an error.
    """

    def __init__(
        self,
        classnames: Sequence[str],
        templates: Sequence[str],
        label_ids: Sequence[int] | None = None,
        tokenizer=tokenize,
    ):
        if not classnames:
            raise ValueError("a classification objective needs at least one class name")
        label_ids = list(range(len(classnames))) if label_ids is None else list(label_ids)
        if len(label_ids) != len(classnames):
            raise ValueError(f"{len(classnames)} class names but {len(label_ids)} label ids")
        self.prompts = [
            tokenizer([format_prompts(name, [template])[0] for name in classnames])
            for template in templates
        ]
        self.position = torch.full((max(label_ids) + 1,), -1, dtype=torch.long)
        self.position[torch.tensor(label_ids)] = torch.arange(len(label_ids))
        self.calls = 0

    def __call__(self, model, images, labels):
        tokens = self.prompts[self.calls % len(self.prompts)].to(images.device)
        self.calls += 1
        outputs = model(images, tokens, output_dict=True)
        logits = outputs["logit_scale"] * outputs["image_features"] @ outputs["text_features"].T
        targets = self.position.to(labels.device)[labels]
        if (targets < 0).any():
            raise ValueError(f"labels {sorted(set(labels[targets < 0].tolist()))} are not classes")
        outputs["logits"] = logits
        return {"classification": F.cross_entropy(logits, targets)}, outputs
