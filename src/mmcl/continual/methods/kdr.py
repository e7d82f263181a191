"""KDR (Cui et al. 2024, "Continual Vision-Language Retrieval via Dynamic Knowledge
Rectification", AAAI; the paper calls it DKR): distil the old model's cross-modal similarity
matrix on batches that mix replayed pairs with the new task's, rectifying the old model's
knowledge where it is wrong.

Replay is experience replay's (`mmcl.continual.methods.replay`): a reservoir buffer of past
training items, and every task trains on its data plus an equal share drawn from the buffer.
At the start of every task but the first, a frozen copy of the model (the old model) is taken;
on every batch (new and replayed items together) both models compute the batch's image-text
similarity matrix z (`mmcl.continual.methods.similarity`). Each row's target distribution is
rectified by who ranks a matched text first (the largest entry is a match, ties going to it):

    the old model:                 p_i = softmax(z_old_i / T)   (its knowledge is kept)
    only the new model:            p_i = softmax(z_new_i / T)   (no gradient: rectified with the
                                                                 new affinity, adds nothing)
    neither:                       p_i = the paired label: uniform over the row's matches
                                         (one-hot on the diagonal for captions)
    kdr = lambda * (mean_i KL(p_i || softmax(z_new_i / T)) + the same over the columns)

With `rectify=False` every row takes the old model's distribution (plain distillation).

Source: the paper's abstract ("for the new data that can only be correctly retrieved by the
new model, we rectify them with the corresponding new affinity ... for those that can not be
retrieved by either the old or the new model, we introduce paired ground-truth labels"). The
authors' code was not found (the paper links none) and its equations were not at hand. The
defaults are this library's: lambda 1 (the best value in the paper's sweep, by a summary of
it), T 1 on the logit-scaled similarities, as the contrastive loss sees them.

Differences from the paper (as far as its abstract shows it):
- The exact forms are this library's reading: the temperature, the mean over rows and the sum
  of the two directions, and how the paired label enters (here it replaces the row). A further
  term that, by a summary of the paper, strengthens the new-affinity rectification on new data
  (its Eq. 8) is not implemented.
- The paper's setting is retrieval with captions; a classification stream's batches pair each
  image with a prompt of its class, so the images of one class share a text and all of them
  are the row's matches.
- The buffer is ER's reservoir of `buffer_size` items; the first task has no old model and
  trains on its data alone, without the term.

Resuming: the buffer is the state (as ER's); the teacher is taken again by `before_task`.
"""

from __future__ import annotations

import torch

from mmcl.continual.captioned import is_captioned_stream
from mmcl.continual.methods.base import Method
from mmcl.continual.methods.lwf import frozen_copy
from mmcl.continual.methods.mod_x import _check_weight
from mmcl.continual.methods.replay import ExperienceReplay
from mmcl.continual.methods.similarity import (
    ClassPrompts,
    matched_pairs,
    paired_similarities,
    ranks_a_match_first,
    row_kl_to,
)


class KDR(Method):
    name = "kdr"
    takes_captions = True
    needs_text_tower = True
    mixes_past_data = True

    def __init__(
        self,
        lambda_: float = 1.0,
        temperature: float = 1.0,
        buffer_size: int = 500,
        rectify: bool = True,
    ):
        _check_weight("kdr", lambda_, temperature)
        if not isinstance(rectify, bool):
            raise ValueError(f"kdr: rectify must be True or False, got {rectify!r}")
        try:
            self.replay = ExperienceReplay(buffer_size)
        except ValueError as error:
            raise ValueError(str(error).replace("er:", "kdr:", 1)) from None
        self.lambda_ = float(lambda_)
        self.temperature = float(temperature)
        self.buffer_size = buffer_size
        self.rectify = rectify
        self.teacher: torch.nn.Module | None = None
        self.prompts: ClassPrompts | None = None
        self.calls = 0

    def setup(self, model, run) -> None:
        self.replay.setup(model, run)

    def before_task(self, task, model, run) -> None:
        self.calls = 0
        self.teacher = None
        if task.index == 0:
            return
        captioned = is_captioned_stream(run.scenario)  # captions: no class prompts
        self.prompts = None if captioned else ClassPrompts(run.training_space(task.index))
        self.teacher = frozen_copy(model)

    def train_data(self, task, run):
        return self.replay.train_data(task, run)

    def extra_losses(self, model, batch, outputs) -> dict[str, torch.Tensor]:
        if self.teacher is None:
            return {}
        student, old = paired_similarities(
            model, self.teacher, batch, outputs, self.prompts, self.calls
        )
        self.calls += 1
        loss = rectified_distillation(
            old, student, self.temperature, self.rectify, matched_pairs(batch)
        )
        return {"kdr": self.lambda_ * loss}

    def after_task(self, task, model, run) -> None:
        self.replay.after_task(task, model, run)

    def state_dict(self):
        return {**self.replay.state_dict(), "calls": self.calls}

    def load_state_dict(self, state) -> None:
        self.replay.load_state_dict(state)
        self.calls = int(state.get("calls", 0))

    def __repr__(self) -> str:
        return (
            f"KDR(lambda_={self.lambda_}, temperature={self.temperature}, "
            f"buffer_size={self.buffer_size}, rectify={self.rectify})"
        )


def rectified_distillation(
    old: torch.Tensor,
    new: torch.Tensor,
    temperature: float = 1.0,
    rectify: bool = True,
    matched: torch.Tensor | None = None,
) -> torch.Tensor:
    """KDR's term for square similarity matrices `old` (teacher) and `new` (student): the mean
    row-softmax KL over the rows plus the same over the columns, each target row rectified (with
    `rectify`) by whether `old`, else `new`, ranks a `matched` entry (default: the diagonal)
    first, else replaced by the uniform distribution over the row's matched entries."""
    if old.shape != new.shape or old.dim() != 2 or old.shape[0] != old.shape[1]:
        raise ValueError(f"kdr: needs two square matrices of one shape, got {old.shape}")
    if matched is None:
        matched = torch.eye(len(old), dtype=torch.bool, device=old.device)
    elif matched.shape != old.shape or matched.dtype != torch.bool or not matched.any(-1).all():
        raise ValueError(
            f"kdr: matched must be booleans of shape {tuple(old.shape)}, a match in every row"
        )
    total = new.new_zeros((), dtype=torch.float32)
    for target, student, pairs in ((old, new, matched), (old.T, new.T, matched.T)):
        kept = torch.softmax(target.float() / temperature, dim=-1)
        if rectify:
            current = student.detach().float()
            label = pairs.float() / pairs.sum(dim=-1, keepdim=True)
            rectified = torch.where(
                ranks_a_match_first(current, pairs)[:, None],
                torch.softmax(current / temperature, dim=-1),
                label,
            )
            kept = torch.where(ranks_a_match_first(target, pairs)[:, None], kept, rectified)
        total = total + row_kl_to(kept, student, temperature).mean()
    return total
