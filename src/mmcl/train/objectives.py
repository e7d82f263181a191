"""What a training step minimises: contrastive image-text loss, contrastive plus captioning
(CoCa), BLIP's ITC + ITM + LM (`mmcl.train.blip_objective`), or classification by prompts.

An objective maps a batch to named loss terms (summed by the engine) and the model outputs
that plugins may reuse (e.g. a distillation plugin reads the image features):

    terms, outputs = objective(model, images, targets)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

from mmcl.data.zeroshot import format_prompts
from mmcl.io.tokenizer import tokenize
from mmcl.train.blip_objective import BlipObjective
from mmcl.train.losses import ClipLoss, CoCaLoss, SigLipLoss


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


class CoCaObjective:
    """CoCa's contrastive plus captioning loss (`CoCaLoss`) on (images, caption tokens)
    batches; the captions are the targets of the caption decoder, shifted by one token."""

    def __init__(self, caption_weight: float = 2.0, contrastive_weight: float = 1.0):
        self.loss_fn = CoCaLoss(caption_weight, contrastive_weight)

    def check(self, model) -> None:
        if not hasattr(model, "caption_logits"):
            raise ValueError(
                "loss 'coca' needs a captioning model with a caption decoder: a coca_* config "
                "(e.g. tiny-coca or coca_ViT-B-32)"
            )

    def __call__(self, model, images, texts):
        outputs = model(images, texts, output_dict=True)
        unwrapped = getattr(model, "module", model)  # DistributedDataParallel keeps it there
        terms = self.loss_fn(
            outputs["image_features"],
            outputs["text_features"],
            outputs["logit_scale"],
            outputs["caption_logits"],
            texts,
            unwrapped.pad_id,
        )
        return terms, outputs


def default_objective(loss: str, albef_queue_size: int = 65536, albef_momentum: float = 0.995):
    """The objective a run's `loss` setting names: "clip", "siglip", "coca", "albef" or
    "blip"."""
    if loss == "blip":
        return BlipObjective()
    if loss == "albef":
        from mmcl.train.albef_objective import AlbefObjective

        return AlbefObjective(queue_size=albef_queue_size, momentum=albef_momentum)
    return CoCaObjective() if loss == "coca" else ContrastiveObjective(loss)


class ClassificationObjective:
    """Cross-entropy over class-name prompts (the text tower is the classifier head).

    Fine-tuning CLIP this way keeps the image and text embeddings aligned, as in FLYP
    (Goyal et al. 2023) and ZSCL (Zheng et al. 2023). Each step embeds one prompt per class;
    the template cycles with the step so every template is seen.

    `label_ids[k]` is the dataset label of `classnames[k]` (class-incremental tasks keep
    global labels); labels not among them are an error. `templates` is one list shared by all
    classes, or one list per class (classes from different data sets are prompted their own way).

    A caller may compute either side its own way (a continual method's learned prompts):
    ``image_features(model, images)`` and ``class_features(model, templates)`` (``templates``:
    this step's one template per class) return ``(normalised features, {name: loss term})``,
    or None for the towers' own computation. Their terms join the objective's, so a side
    computation's auxiliary loss is returned with the features, never kept on a module. They
    get the unwrapped model; the wrapper's forward still runs once a step (for what no hook
    gave), as DistributedDataParallel needs: parameters used outside it are reduced through
    their gradient hooks, which holds with `find_unused_parameters=False`.
    """

    def __init__(
        self,
        classnames: Sequence[str],
        templates: Sequence[str] | Sequence[Sequence[str]],
        label_ids: Sequence[int] | None = None,
        tokenizer=tokenize,
        image_features: Callable | None = None,
        class_features: Callable | None = None,
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
        # Step s prompts every class with its template s (cycling through its own list).
        self.step_templates = [
            [[own[step % len(own)]] for own in templates] for step in range(cycle)
        ]
        self.prompts = [
            tokenizer(
                [
                    format_prompts(name, own)[0]
                    for name, own in zip(classnames, self.step_templates[step], strict=True)
                ]
            )
            for step in range(cycle)
        ]
        self.position = label_positions(label_ids)
        self.image_features, self.class_features = image_features, class_features
        self.calls = 0

    def __call__(self, model, images, labels):
        step = self.calls % len(self.prompts)
        self.calls += 1
        unwrapped = getattr(model, "module", model)  # DistributedDataParallel keeps it there
        image = self.image_features(unwrapped, images) if self.image_features else None
        text = (
            self.class_features(unwrapped, self.step_templates[step])
            if self.class_features
            else None
        )
        tokens = self.prompts[step].to(images.device) if text is None else None
        outputs = model(images if image is None else None, tokens, output_dict=True)
        terms = {}
        for key, computed in (("image_features", image), ("text_features", text)):
            if computed is not None:
                outputs[key], extra = computed
                terms.update(extra)
        image_features = outputs["image_features"]
        text_features = outputs["text_features"].to(image_features.dtype)
        logits = outputs["logit_scale"] * image_features @ text_features.T
        targets = class_targets(self.position, labels)
        outputs["logits"] = logits
        return {"classification": F.cross_entropy(logits, targets), **terms}, outputs

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
