"""The batch's image-text similarity matrix, as a student and a teacher see it: what Mod-X and
KDR distil; which of its pairs are matched; and the row-wise KL they distil it with.

Row i of a batch pairs image i with text i. In a captioned batch (the targets are token rows,
as the contrastive objective trains on) text i is the image's caption; in a classification
batch (the targets are stream labels) it is a prompt of the image's class, one template per
step, cycling through each class's templates as the classification objective does. With
z_ij = logit_scale * cos(image_i, text_j),

    student: z from the model being trained, with gradients through both towers
    teacher: z from a frozen model, without

so the diagonal holds the matched pairs and the rest of a row the batch's other texts (in a
classification batch, images of one class share a text: `matched_pairs` marks those too). The
student's image features are the objective's own (`outputs["image_features"]`, so a method
that computes them its way is respected); its text features are the objective's for captions
and a fresh pass of the text tower for class prompts.

>>> import torch
>>> is_captioned((torch.zeros(2, 3, 8, 8), torch.zeros(2, 77, dtype=torch.long)))
True
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from mmcl.continual.classes import ClassSpace
from mmcl.data.zeroshot import format_prompts
from mmcl.io.tokenizer import tokenize


def is_captioned(batch) -> bool:
    """Whether the batch's targets are caption tokens (one row per image) rather than labels."""
    return batch[1].dim() == 2


class ClassPrompts:
    """One prompt per class of `space` for step s: each class's template s, cycling."""

    def __init__(self, space: ClassSpace):
        self.space = space
        self.cycle = max(len(templates) for templates in space.templates)
        self._tokens: dict[int, torch.Tensor] = {}

    def tokens(self, step: int) -> torch.Tensor:
        key = step % self.cycle
        if key not in self._tokens:
            space = self.space
            self._tokens[key] = tokenize(
                [
                    format_prompts(name, [templates[key % len(templates)]])[0]
                    for name, templates in zip(space.names, space.templates, strict=True)
                ]
            )
        return self._tokens[key]


def paired_similarities(
    model, teacher, batch, outputs, prompts: ClassPrompts | None, step: int, scaled: bool = True
):
    """``(student, teacher)``: the batch's similarity matrices ``(batch, batch)`` in float32.

    `prompts` gives the class prompts of a classification batch (unused for captions). With
    `scaled` False the matrices are the plain cosines, without each model's logit scale."""
    images, targets = batch[0], batch[1]
    if teacher_device(teacher) != images.device:
        teacher.to(images.device)  # taken before the engine moved the model
    image = outputs["image_features"].float()
    scale = outputs["logit_scale"].float()
    if is_captioned(batch):
        tokens = targets.to(images.device)
        text = outputs["text_features"].float()
        with torch.no_grad():
            old = teacher(images, tokens, output_dict=True)
            old_image, old_text = old["image_features"], old["text_features"]
            old_scale = old["logit_scale"]
    else:
        if prompts is None:
            raise ValueError("a classification batch needs the classes' prompts")
        positions = prompts.space.positions(targets.to(images.device))
        if (positions < 0).any():
            raise ValueError("labels of the batch are not among the task's classes")
        tokens = prompts.tokens(step).to(images.device)
        text = model.encode_text(tokens, normalize=True).float()[positions]
        with torch.no_grad():
            old_image = teacher.encode_image(images, normalize=True)
            old_text = teacher.encode_text(tokens, normalize=True)[positions]
            old_scale = teacher.logit_scale.exp()
    if not scaled:
        scale, old_scale = torch.ones_like(scale), torch.ones_like(old_scale)
    student = scale * image @ text.T
    with torch.no_grad():
        reference = old_scale.float() * old_image.float() @ old_text.float().T
    return student, reference


def matched_pairs(batch) -> torch.Tensor:
    """``(batch, batch)`` booleans: entry (i, j) pairs image i with a right text j. A caption
    belongs to its own image only; a class prompt to every image of the class, so in a
    classification batch the images of one class share their (identical) texts."""
    targets = batch[1]
    if is_captioned(batch):
        return torch.eye(len(targets), dtype=torch.bool, device=batch[0].device)
    labels = targets.to(batch[0].device)
    return labels[:, None] == labels[None, :]


def ranks_a_match_first(logits: torch.Tensor, matched: torch.Tensor) -> torch.Tensor:
    """``(rows,)`` booleans: whether each row's largest entry is a matched one (a tie with an
    unmatched entry counts as right, so identical class prompts never make a row wrong)."""
    best_match = logits.float().masked_fill(~matched, -math.inf).max(dim=-1).values
    return best_match >= logits.float().max(dim=-1).values


def teacher_device(teacher) -> torch.device:
    return next(teacher.parameters()).device


def row_kl(target_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float):
    """KL(softmax(target_i / T) || softmax(student_i / T)) for every row i: ``(rows,)``."""
    target = F.log_softmax(target_logits.float() / temperature, dim=-1)
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (target.exp() * (target - student)).sum(dim=-1)


def row_kl_to(target: torch.Tensor, student_logits: torch.Tensor, temperature: float):
    """KL(target_i || softmax(student_i / T)) for every row i of the probabilities `target`
    (zeros allowed: a one-hot row gives the cross-entropy of its entry): ``(rows,)``."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    target = target.float()
    return (torch.special.xlogy(target, target) - target * student).sum(dim=-1)
