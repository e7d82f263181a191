"""Mod-X (Ni et al. 2023, "Continual Vision-Language Representation Learning with Off-Diagonal
Information", ICML): keep the old model's off-diagonal similarity distribution, so that the two
towers' spaces do not drift apart ("spatial disorder").

At the start of every task but the first, a frozen copy of the model (the old model) is taken.
On every batch both models compute the batch's image-text cosine matrix c
(`mmcl.continual.methods.similarity` with `scaled=False`: captions in a contrastive stream,
class prompts in a classification one). The old model's rows are the targets where it ranks
the matched text first; a row it gets wrong is replaced by the student's own (detached) row,
which adds nothing ("cognition alignment" in the authors' code). Each direction on its own:

    t_i = c_old_i if row i of c_old ranks a match first, else c_new_i (no gradient)
    mod_x = lambda * (sum_i KL(softmax(t_i / T) || softmax(c_new_i / T))        image -> text
                      + sum_j KL(softmax(t_.j / T) || softmax(c_new_.j / T))) / 2  text -> image

Whole rows are aligned, the diagonal included: the "off-diagonal information" is how a row's
distribution spreads around its match, and the softmax ties the two together.

Source: the authors' code, github.com/ZixuanNi/Mod-X: `ModX_Training/continue_train_model.py`
(`cognition_align`, and the `F.kl_div(..., reduction='sum')` terms of its training loop, on
cosines without the logit scale) and `ModX_Training/modx_5phase.sh` (alpha 20). The defaults
are theirs: lambda 20, T 1 on the plain cosines, summed over rows, the two directions averaged.
With cosines in [-1, 1] the softmaxes are flat and the per-row KL small, hence the large weight.
The built-in streams keep these defaults; their tiny models' cosines spread little, so the term
stays small beside the task's loss there: raise lambda_ to hold the old model harder.

Differences from the authors' code:
- They train CLIP on a stream of captioned data sets (Flickr30K in five parts after COCO); here
  the term is added to whatever the task trains (the contrastive loss on captions, or the
  classification loss, with class prompts standing in for captions). In a classification batch
  the images of one class share a text, so any same-class entry is a match, where the authors
  count a row right only when its largest entry is the diagonal.
- A row whose largest entry ties with a match counts as right; their `torch.max` index counts
  it right only when the match comes first.
- The sum over rows makes the term grow with the batch while the task's loss is a mean: their
  batch was 280 pairs (70 on each of 4 GPUs), the built-in streams' is 64, so at the same
  lambda the term weighs about a quarter as much against the task's loss.
- T is an extra argument (theirs is fixed at 1). The first task has no old model and trains
  without the term; their optimiser and schedule belong to the run's configuration here.

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
from mmcl.continual.methods.similarity import (
    ClassPrompts,
    matched_pairs,
    paired_similarities,
    ranks_a_match_first,
    row_kl,
)


class ModX(Method):
    name = "mod_x"
    takes_captions = True
    needs_text_tower = True

    def __init__(self, lambda_: float = 20.0, temperature: float = 1.0):
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
            model, self.teacher, batch, outputs, self.prompts, self.calls, scaled=False
        )
        self.calls += 1
        term = aligned_distillation(old, student, self.temperature, matched_pairs(batch))
        return {"mod_x": self.lambda_ * term}

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state) -> None:
        self.calls = int(state.get("calls", 0))

    def __repr__(self) -> str:
        return f"ModX(lambda_={self.lambda_}, temperature={self.temperature})"


def aligned_distillation(
    old: torch.Tensor,
    new: torch.Tensor,
    temperature: float = 1.0,
    matched: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mod-X's term for square similarity matrices `old` (target) and `new` (student): the
    row-softmax KL summed over rows, averaged over the two directions, each row of `old` that
    does not rank a `matched` entry first (default: the diagonal) replaced by `new`'s."""
    if old.shape != new.shape or old.dim() != 2 or old.shape[0] != old.shape[1]:
        raise ValueError(f"mod_x: needs two square matrices of one shape, got {old.shape}")
    if matched is None:
        matched = torch.eye(len(old), dtype=torch.bool, device=old.device)
    elif matched.shape != old.shape or matched.dtype != torch.bool:
        raise ValueError(f"mod_x: matched must be booleans of shape {tuple(old.shape)}")
    total = new.new_zeros((), dtype=torch.float32)
    for target, student, pairs in ((old, new, matched), (old.T, new.T, matched.T)):
        right = ranks_a_match_first(target, pairs)
        aligned = torch.where(right[:, None], target.float(), student.detach().float())
        total = total + row_kl(aligned, student, temperature).sum()
    return total / 2


def _check_weight(method: str, lambda_, temperature) -> None:
    if not (isinstance(lambda_, (int, float)) and math.isfinite(lambda_) and lambda_ >= 0):
        raise ValueError(f"{method}: lambda_ must be a finite number >= 0, got {lambda_!r}")
    if not (
        isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"{method}: temperature must be a finite number > 0, got {temperature!r}")
