"""Mod-X (Ni et al. 2023, "Continual Vision-Language Representation Learning with Off-Diagonal
Information", ICML): keep the old model's off-diagonal similarity distribution, so that the two
towers' spaces do not drift apart ("spatial disorder").

At the start of every task but the first, a frozen copy of the model (the old model) is taken.
On every batch both models compute the batch's image-text similarity matrix z
(`mmcl.continual.methods.similarity`: captions in a contrastive stream, class prompts in a
classification one). The old model's matrix, with its diagonal replaced by the student's own
(detached) diagonal, is the target, so the matched pairs are left to the task's loss and only
how each image relates to the batch's *other* texts (and each text to the other images) is
held:

    t~ = z_old with t~_ii = z_new_ii (no gradient)
    mod_x = lambda * (mean_i KL(softmax(t~_i / T) || softmax(z_new_i / T))       image -> text
                      + mean_j KL(softmax(t~_.j / T) || softmax(z_new_.j / T)))   text -> image

It is zero whenever the new model's off-diagonal similarities equal the old model's, whatever
the diagonal.

Differences from the paper:
- The paper trains on a stream of captioned data sets from a model trained on the first; here
  the term is added to whatever the task trains (the contrastive loss on captions, or the
  classification loss, with class prompts standing in for captions, so two images of a class
  share a text and the off-diagonal holds same-class pairs too).
- Only the off-diagonal distillation is implemented, with the model as the task starts as the
  old model. Taking the target's diagonal from the new model is this library's reading of
  "selectively aligning the off-diagonal information distribution"; check it against the
  authors' code before comparing figures with the paper's.
- The first task has no old model and trains without the term; lambda and T are free
  arguments (defaults 1), not tuned to the paper's data.

Resuming: the teacher is not saved; `before_task` runs again on resume with the model as it was
at the task's start, so the same teacher is taken. The step count (which prompt template comes
next) is the state.
"""

from __future__ import annotations

import math

import torch

from mmcl.continual.captioned import is_captioned_stream
from mmcl.continual.methods.base import Method
from mmcl.continual.methods.lwf import frozen_copy
from mmcl.continual.methods.similarity import ClassPrompts, paired_similarities, row_kl


class ModX(Method):
    name = "mod_x"
    takes_captions = True
    needs_text_tower = True

    def __init__(self, lambda_: float = 1.0, temperature: float = 1.0):
        _check_weight("mod_x", lambda_, temperature)
        self.lambda_ = float(lambda_)
        self.temperature = float(temperature)
        self.teacher: torch.nn.Module | None = None
        self.prompts: ClassPrompts | None = None
        self.calls = 0

    def before_task(self, task, model, run) -> None:
        self.calls = 0
        self.teacher = None  # free the last task's teacher before copying the model
        if task.index == 0:
            return
        captioned = is_captioned_stream(run.scenario)  # captions: no class prompts
        self.prompts = None if captioned else ClassPrompts(run.training_space(task.index))
        self.teacher = frozen_copy(model)

    def extra_losses(self, model, batch, outputs) -> dict[str, torch.Tensor]:
        if self.teacher is None:
            return {}
        student, old = paired_similarities(
            model, self.teacher, batch, outputs, self.prompts, self.calls
        )
        self.calls += 1
        return {"mod_x": self.lambda_ * off_diagonal_distillation(old, student, self.temperature)}

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state) -> None:
        self.calls = int(state.get("calls", 0))

    def __repr__(self) -> str:
        return f"ModX(lambda_={self.lambda_}, temperature={self.temperature})"


def off_diagonal_distillation(
    old: torch.Tensor, new: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Mod-X's term for square similarity matrices `old` (target) and `new` (student): the
    row-softmax KL in both directions, with the target's diagonal taken from `new` (detached).
    """
    if old.shape != new.shape or old.dim() != 2 or old.shape[0] != old.shape[1]:
        raise ValueError(f"mod_x: needs two square matrices of one shape, got {old.shape}")
    diagonal = torch.eye(len(old), dtype=torch.bool, device=old.device)
    target = torch.where(diagonal, new.detach().float(), old.float())
    rows = row_kl(target, new, temperature).mean()
    columns = row_kl(target.T, new.T, temperature).mean()
    return rows + columns


def _check_weight(method: str, lambda_, temperature) -> None:
    if not (isinstance(lambda_, (int, float)) and math.isfinite(lambda_) and lambda_ >= 0):
        raise ValueError(f"{method}: lambda_ must be a finite number >= 0, got {lambda_!r}")
    if not (
        isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"{method}: temperature must be a finite number > 0, got {temperature!r}")
