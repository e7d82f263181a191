"""O-LoRA (Wang et al. 2023, "Orthogonal Subspace Learning for Language Model Continual
Learning", Findings of EMNLP): a new LoRA for each task, the earlier ones frozen, and the new
one's A kept orthogonal to theirs.

Task t trains only its own adapter (``task_t`` on every adapted layer, `mmcl.nn.task_loras`)
while the adapters of tasks 0..t-1 stay active and frozen, so the model is always

    W x + sum_{s <= t} alpha / r * B_s A_s x

(the merged model is the base plus the sum of the task deltas). The loss adds

    lambda_orth * sum_layers sum_{s < t} sum_{j,k} |(A_s A_t^T)_{jk}|
    + lambda_l2 * sum_layers (||A_t||_F + ||B_t||_F)

as the authors' code computes them (absolute entries; unsquared norms). No task identity is
needed at test time: every adapter trained so far computes.

Where mmcl differs: the adapters of all tasks are created when the run starts (the
untrained ones inactive), so a resumed run finds every tensor in place; the LoRA goes on the
layers named by `modules` of `target` (the authors adapt T5's / LLaMA's attention q and v,
which is also mmcl's default); the authors merge the finished task's A and B into one growing
"old" adapter, mmcl keeps them per task (the same sums). Defaults lambda_orth = 0.5,
lambda_l2 = 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mmcl.continual.methods.base import Method
from mmcl.continual.methods.moe_lora import check_int, lora_spec, refuse_carried_lora
from mmcl.nn.task_loras import (
    add_task_loras,
    l2_loss,
    orthogonality_loss,
    task_adapter,
    use_task_loras,
)


class OLoRA(Method):
    name = "o_lora"
    takes_instructions = True
    takes_classes = False

    def __init__(
        self,
        lambda_orth: float = 0.5,
        lambda_l2: float = 0.0,
        r: int = 8,
        alpha: float = 16.0,
        target: str = "language_model",
        modules: str | Sequence[str] = ("q_proj", "v_proj"),
    ):
        for what, value in (("lambda_orth", lambda_orth), ("lambda_l2", lambda_l2)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"o_lora: {what} must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"o_lora: {what} must be >= 0, got {value}")
        check_int(self.name, "r", r, 1)
        self.spec = lora_spec(self.name, target, modules, r, alpha)
        # Under the constructor's names, as `method_arguments` reads a method built directly.
        self.r, self.alpha, self.target, self.modules = r, alpha, target, self.spec.modules
        self.lambda_orth, self.lambda_l2 = float(lambda_orth), float(lambda_l2)
        self.task: int | None = None  # the task being trained
        self.trained = 0  # tasks finished
        self.model = None  # set by `setup`: whose adapters `load_state_dict` switches

    def setup(self, model, run) -> None:
        refuse_carried_lora(self.name, model, self.spec.target)
        model.requires_grad_(False)
        add_task_loras(model, self.spec, len(run.scenario), self.name)
        self.model = model
        self._switch()

    def before_task(self, task, model, run) -> None:
        self.task = task.index
        self._switch()

    def extra_losses(self, model, batch, outputs) -> dict:
        if self.task is None:
            return {}
        new = task_adapter(self.task)
        old = [task_adapter(index) for index in range(self.task)]
        terms = {}
        if old and self.lambda_orth:
            terms["o_lora_orth"] = self.lambda_orth * orthogonality_loss(model, new, old)
        if self.lambda_l2:
            terms["o_lora_l2"] = self.lambda_l2 * l2_loss(model, new)
        return terms

    def after_task(self, task, model, run) -> None:
        self.task, self.trained = None, task.index + 1
        self._switch()  # every adapter so far computes; none trains

    def state_dict(self) -> dict:
        return {"task": self.task, "trained": self.trained}

    def load_state_dict(self, state) -> None:
        if state:
            self.task, self.trained = state["task"], state["trained"]
            self._switch()

    def _switch(self) -> None:
        """Tasks 0..t active while task t trains (only it takes gradients); afterwards every
        finished task's adapter."""
        if self.model is None:
            return  # before setup: applied there
        last = self.trained if self.task is None else self.task + 1
        active = [task_adapter(index) for index in range(last)]
        train = None if self.task is None else task_adapter(self.task)
        use_task_loras(self.model, active, train=train)

    def __repr__(self) -> str:
        return f"OLoRA(lambda_orth={self.lambda_orth}, lambda_l2={self.lambda_l2}, r={self.spec.r})"
