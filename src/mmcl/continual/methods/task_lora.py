"""Per-task LoRA with a task selector, in the manner of MoE adapters' selector (Yu et al.
2024, CVPR) and HiDe-LLaVA (Guo et al. 2025, "HiDe-LLaVA: Hierarchical Decoupling for
Continual Instruction Tuning of Multimodal Large Language Model", ACL): one LoRA per task on
the language model, trained on that task alone and then frozen; at test time each image goes
to the LoRA of the task whose key (the mean image feature of its training images) is nearest.

Training task t: only adapter ``task_t`` computes and trains (`mmcl.nn.task_loras`), and the
images of every batch are added to task t's key (`task_keys.TaskKeys`). Inference: `routes`
sends each row to the LoRA of its nearest task, so an image the selector places in task s
gets exactly task s's model. Before any task has trained, the base model answers.

Where mmcl differs: HiDe-LLaVA keeps task-specific LoRA only in the last layer and fuses the
others, and matches image *and* text features to its keys with CLIP; mmcl keeps a whole LoRA
per task and matches the bridge's own image tokens (their mean, cosine similarity); MoE
adapters' selector is an autoencoder per task with a threshold that can fall back to the
zero-shot model, where this one always picks a task. Adapters of all tasks are created when
the run starts (the untrained ones inactive), so a resumed run finds every tensor in place.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmcl.continual.methods.base import Method
from mmcl.continual.methods.moe_lora import check_int, lora_spec, refuse_carried_lora
from mmcl.continual.methods.task_keys import TaskKeys, image_keys, routes_by_task
from mmcl.nn.task_loras import add_task_loras, task_adapter, task_loras, use_task_loras


class TaskLoRA(Method):
    name = "task_lora"
    takes_instructions = True
    takes_classes = False

    def __init__(
        self,
        r: int = 8,
        alpha: float = 16.0,
        target: str = "language_model",
        modules: str | Sequence[str] = ("q_proj", "v_proj"),
    ):
        check_int(self.name, "r", r, 1)
        self.spec = lora_spec(self.name, target, modules, r, alpha)
        # Under the constructor's names, as `method_arguments` reads a method built directly.
        self.r, self.alpha, self.target, self.modules = r, alpha, target, self.spec.modules
        if self.spec.target != "language_model":
            raise ValueError(
                f"task_lora: target must be language_model (the selector reads the image "
                f"tokens, which a LoRA on {self.spec.target!r} would change), got {target!r}"
            )
        self.keys = TaskKeys()
        self.task: int | None = None  # the task being trained
        self.model = None  # set by `setup`

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
        images = batch[0]
        if self.task is not None and images is not None and len(images):
            self.keys.add(self.task, image_keys(model, images))
        return {}

    def after_task(self, task, model, run) -> None:
        self.keys.gather(task.index)
        self.task = None
        self._switch()

    def routes(self, model, images):
        """``[(rows, context)]``: each row under the LoRA of its nearest task (`run_routes`
        runs them); None while a task trains or before any has (the model as it is)."""
        if images is None or self.task is not None or not self.keys.tasks:
            return None
        choice = self.keys.choose(image_keys(model, images))
        return routes_by_task(choice, lambda t: task_loras(model, [task_adapter(t)]))

    def state_dict(self) -> dict:
        return {"task": self.task, "keys": self.keys.state_dict()}

    def load_state_dict(self, state) -> None:
        if state:
            self.task = state["task"]
            self.keys.load_state_dict(state["keys"])
            self._switch()

    def _switch(self) -> None:
        """While task t trains, its adapter alone computes and trains; otherwise none computes
        until `routes` chooses one."""
        if self.model is None:
            return
        if self.task is None:
            use_task_loras(self.model, [])
        else:
            name = task_adapter(self.task)
            use_task_loras(self.model, [name], train=name)

    def __repr__(self) -> str:
        return f"TaskLoRA(r={self.spec.r}, modules={self.spec.modules})"
