"""KDR (Cui et al. 2024, "Continual Vision-Language Retrieval via Dynamic Knowledge
Rectification", AAAI): distil the old model's cross-modal similarity matrix on batches that mix
replayed pairs with the new task's, leaving out the old model's knowledge where it is wrong.

Replay is experience replay's (`mmcl.continual.methods.replay`): a reservoir buffer of past
training items, and every task trains on its data plus an equal share drawn from the buffer.
At the start of every task but the first, a frozen copy of the model (the old model) is taken;
on every batch (new and replayed items together) both models compute the batch's image-text
similarity matrix z (`mmcl.continual.methods.similarity`), and

    kdr = lambda * (mean over kept i of KL(softmax(z_old_i / T) || softmax(z_new_i / T))
                    + the same over the columns, text -> image)

Rectification: a row (or column) is kept only where the old model ranks the matched pair first
(its diagonal entry is the row's largest, ties broken towards the match); where it does not,
the old model's view of that item is wrong and is not distilled. With no row kept in a
direction, that direction adds zero.

Differences from the paper:
- The paper rectifies the old model's knowledge where it is wrong before distilling it; here
  the rule is the simplest form of that: rows the old model gets wrong are left out (weight
  zero), nothing is corrected.
- The paper's setting is retrieval with captions; a classification stream's batches pair each
  image with a prompt of its class, so two images of a class share a text (the old model then
  never ranks one of them strictly first: both are kept, ties going to the match).
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
from mmcl.continual.methods.similarity import ClassPrompts, paired_similarities, row_kl


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
        loss = rectified_distillation(old, student, self.temperature, self.rectify)
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
    old: torch.Tensor, new: torch.Tensor, temperature: float = 1.0, rectify: bool = True
) -> torch.Tensor:
    """KDR's term for square similarity matrices `old` (teacher) and `new` (student): the mean
    row-softmax KL over the rows, plus the same over the columns, counting with `rectify` only
    the rows/columns where `old` ranks the matched (diagonal) pair first."""
    if old.shape != new.shape or old.dim() != 2 or old.shape[0] != old.shape[1]:
        raise ValueError(f"kdr: needs two square matrices of one shape, got {old.shape}")
    total = new.new_zeros((), dtype=torch.float32)
    for target, student in ((old, new), (old.T, new.T)):
        divergence = row_kl(target, student, temperature)
        if rectify:
            kept = target.diagonal() >= target.max(dim=-1).values
            divergence = divergence[kept]
        if len(divergence):
            total = total + divergence.mean()
    return total
