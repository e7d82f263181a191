"""LwF, Learning without Forgetting (Li & Hoiem 2017), for CLIP and LLaVA-style bridges: keep
the predictions on the old classes (a bridge's: next tokens) that the model made when the new
task began, using only the new task's inputs.

At the start of every task but the first, a frozen copy of the model (the teacher) is taken.
The old classes are those of the previous tasks (`mmcl.continual.classes.task_classes`; in a
class-incremental stream exactly the classes seen before this task), and CLIP's head over them
is their prompt embeddings: the student embeds the prompts with its text tower (with
gradients, so the text tower is held too) and the teacher with its own. On each batch of new
images x, with logits z = logit_scale * cos(image, prompt) over the old classes,

    lwf = lambda * KL(softmax(z_teacher / T) || softmax(z_student / T))    (mean over x)

which is the paper's cross-entropy with soft targets (T = 2, lambda = 1 there) minus the
teacher's entropy, a constant: the same gradient, and zero while nothing has changed. Each step
embeds one prompt per class, the template cycling with the step as in the training objective.
The first task has no old classes, so it trains without the term, as in the paper.

On a captioned stream (`mmcl.continual.captioned`) there are no classes: z is the batch's
image-text similarity matrix (`mmcl.continual.methods.similarity`), and the term is the KL
above over its rows (image -> text) plus over its columns (text -> image), each averaged.

On an instruction stream (`mmcl.continual.instructions`, a LLaVA-style bridge) z is the
next-token logits: the student's of this step and the teacher's on the same conversations
(the new task's), at the answer positions only (`instruction_terms.next_token_kl`: the
positions the LM loss trains), the KL averaged over those positions, T and lambda as above.

A plain image classifier (`mmcl.models.image_classifier`) has no prompts: z is its head's columns for
the old classes, from the student's forward pass of this step and from the teacher's.

Resuming: the teacher is not saved. The runner calls `before_task` again when it resumes a task,
with the model as it was at the task's start, so the snapshot taken there is the same teacher;
only the template position is part of the state.
"""

from __future__ import annotations

import copy
import math

import torch
from torch.nn import functional as F

from mmcl.continual.captioned import is_captioned_stream
from mmcl.continual.classes import ClassSpace, task_classes, union
from mmcl.continual.heads import head_logits, is_classifier
from mmcl.continual.methods.base import Method
from mmcl.continual.methods.instruction_terms import bridge_logits, next_token_kl
from mmcl.continual.methods.similarity import is_captioned, paired_similarities, row_kl
from mmcl.data.zeroshot import format_prompts
from mmcl.io.tokenizer import tokenize


class LwF(Method):
    name = "lwf"
    takes_captions = True
    takes_instructions = True

    def __init__(self, lambda_: float = 1.0, temperature: float = 2.0):
        if not (isinstance(lambda_, (int, float)) and math.isfinite(lambda_) and lambda_ >= 0):
            raise ValueError(f"lwf: lambda_ must be a finite number >= 0, got {lambda_!r}")
        if not (
            isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
        ):
            raise ValueError(f"lwf: temperature must be a finite number > 0, got {temperature!r}")
        self.lambda_ = float(lambda_)
        self.temperature = float(temperature)
        self.teacher: torch.nn.Module | None = None
        self.old_classes: ClassSpace | None = None
        self.calls = 0  # which template comes next
        self.instructions = False  # the stream holds conversations for a bridge
        self._tokens: dict[int, torch.Tensor] = {}

    def before_task(self, task, model, run) -> None:
        self.calls, self._tokens = 0, {}
        self.instructions = getattr(run, "instructions", False)
        if task.index == 0:
            self.teacher = self.old_classes = None
            return
        if not (is_captioned_stream(run.scenario) or self.instructions):  # no classes
            self.old_classes = union([task_classes(run.scenario, i) for i in range(task.index)])
        self.teacher = None  # free the last task's teacher before copying the model
        self.teacher = frozen_copy(model)

    def extra_losses(self, model, batch, outputs) -> dict[str, torch.Tensor]:
        if self.teacher is None:
            return {}
        images = batch[0]
        if self.instructions:
            if next(self.teacher.parameters()).device != images.device:
                self.teacher.to(images.device)
            with torch.no_grad():
                teacher = bridge_logits(self.teacher, images, batch[1])
            kl = next_token_kl(teacher, outputs["logits"], batch[1][:, 1], self.temperature)
            return {"lwf": self.lambda_ * kl}
        if is_captioned(batch):
            student, teacher = paired_similarities(model, self.teacher, batch, outputs, None, 0)
            t = self.temperature
            both = row_kl(teacher, student, t).mean() + row_kl(teacher.T, student.T, t).mean()
            return {"lwf": self.lambda_ * both}
        if next(self.teacher.parameters()).device != images.device:
            self.teacher.to(images.device)  # taken before the engine moved the model
        if is_classifier(model):
            old = torch.as_tensor(self.old_classes.labels, device=images.device)
            student = outputs["all_logits"][:, old]
            with torch.no_grad():
                teacher = head_logits(self.teacher, images, self.old_classes.labels)
            return {"lwf": self.lambda_ * distillation(teacher, student, self.temperature)}
        tokens = self.prompt_tokens(self.calls).to(images.device)
        self.calls += 1
        text = model.encode_text(tokens, normalize=True)
        student = outputs["logit_scale"] * outputs["image_features"] @ text.T
        with torch.no_grad():
            reference = self.teacher(images, tokens, output_dict=True)
            teacher = (
                reference["logit_scale"]
                * reference["image_features"]
                @ reference["text_features"].T
            )
        return {"lwf": self.lambda_ * distillation(teacher, student, self.temperature)}

    def prompt_tokens(self, step: int) -> torch.Tensor:
        """The old classes' prompts of `step`: one per class, its templates cycling."""
        space = self.old_classes
        cycle = max(len(templates) for templates in space.templates)
        key = step % cycle
        if key not in self._tokens:
            self._tokens[key] = tokenize(
                [
                    format_prompts(name, [templates[key % len(templates)]])[0]
                    for name, templates in zip(space.names, space.templates, strict=True)
                ]
            )
        return self._tokens[key]

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state) -> None:
        self.calls = int(state.get("calls", 0))

    def __repr__(self) -> str:
        return f"LwF(lambda_={self.lambda_}, temperature={self.temperature})"


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` that never trains: eval mode, no gradients (and none carried over)."""
    teacher = copy.deepcopy(model)
    for parameter in teacher.parameters():
        parameter.grad = None
    teacher.requires_grad_(False)
    return teacher.eval()


def distillation(teacher: torch.Tensor, student: torch.Tensor, temperature: float):
    """KL(softmax(teacher / T) || softmax(student / T)) per row, averaged over rows."""
    target = F.log_softmax(teacher.float() / temperature, dim=-1)
    log_probs = F.log_softmax(student.float() / temperature, dim=-1)
    return F.kl_div(log_probs, target, reduction="batchmean", log_target=True)
