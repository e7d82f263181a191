"""Per-task LoRA with a task selector, in the manner of MoE adapters' selector (Yu et al.
2024, CVPR) and HiDe-LLaVA (Guo et al. 2025, "HiDe-LLaVA: Hierarchical Decoupling for
Continual Instruction Tuning of Multimodal Large Language Model", ACL): one LoRA per task on
the language model, trained on that task alone and then frozen; at test time each input goes
to the LoRA of the task whose key (the mean feature of its training inputs: image and
instruction text) is nearest, or to the base model when it is far from every task.

Training task t: only adapter ``task_t`` computes and trains (`mmcl.nn.task_loras`), and the
inputs of every batch are added to task t's key (`task_keys.TaskKeys`): the mean image token
beside the mean embedding of the instruction's text (`task_keys.input_keys`). The text is
what tells apart tasks that share their images (scene captions and scene questions); on the
instruction stream, image keys alone chose the right task for few scene items and sent many
to the CIFAR-10 and MNIST LoRAs (measured in the README, "Continual learning of a bridge").
After task t, its threshold is the `base_quantile` quantile of the similarity of its first
training inputs (up to `CALIBRATION_ITEMS`) to its key: a test input less similar to its
nearest key than that task's threshold is answered by the base model, as MoE adapters' selector
sends what no task recognises to the frozen zero-shot model (`base_quantile` 0.05: about one
in twenty of a task's own inputs falls below, as moe_adapters' `selector_quantile` 0.95 sets
its autoencoders' thresholds; None: always a task's LoRA). Inference: `routes` sends each row
to the LoRA of its chosen task, so an input the selector places in task s gets exactly task
s's model. Before any task has trained, the base model answers.

Where mmcl differs: HiDe-LLaVA keeps task-specific LoRA only in the last layer and fuses the
others, and matches image and text features to its keys with CLIP's encoders; mmcl keeps a
whole LoRA per task and matches the bridge's own image tokens and the LM's input embeddings
(their means, cosine similarity). MoE adapters' selector is an autoencoder per task with a
threshold on its reconstruction error; here the threshold is on the similarity to the key.
Adapters of all tasks are created when the run starts (the untrained ones inactive), so a
resumed run finds every tensor in place.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmcl.continual.methods.base import Method
from mmcl.continual.methods.moe_lora import check_int, lora_spec, refuse_carried_lora
from mmcl.continual.methods.task_keys import (
    TaskKeys,
    input_keys,
    instruction_tokens,
    routes_by_task,
)
from mmcl.nn.task_loras import add_task_loras, task_adapter, task_loras, use_task_loras

CALIBRATION_ITEMS = 1024  # training inputs per task whose similarities set its threshold


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
        base_quantile: float | None = 0.05,
    ):
        check_int(self.name, "r", r, 1)
        if base_quantile is not None and (
            isinstance(base_quantile, bool)
            or not isinstance(base_quantile, (int, float))
            or not 0 <= base_quantile < 1
        ):
            raise ValueError(
                f"task_lora: base_quantile must be a number in [0, 1) or None (no fallback "
                f"to the base model), got {base_quantile!r}"
            )
        self.base_quantile = None if base_quantile is None else float(base_quantile)
        self.spec = lora_spec(self.name, target, modules, r, alpha)
        # Under the constructor's names, as `method_arguments` reads a method built directly.
        self.r, self.alpha, self.target, self.modules = r, alpha, target, self.spec.modules
        if self.spec.target != "language_model":
            raise ValueError(
                f"task_lora: target must be language_model (the selector reads the image "
                f"tokens, which a LoRA on {self.spec.target!r} would change), got {target!r}"
            )
        self.keys = TaskKeys(hold=0 if base_quantile is None else CALIBRATION_ITEMS)
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
            ids, labels, mask = batch[1].unbind(dim=1)  # an instruction batch's targets
            text = instruction_tokens(model, ids, mask, labels)
            self.keys.add(self.task, input_keys(model, images, ids, text))
        return {}

    def after_task(self, task, model, run) -> None:
        self.keys.gather(task.index)
        if self.base_quantile is not None:
            self.keys.calibrate(task.index, self.base_quantile)
        self.task = None
        self._switch()

    def routes(self, model, images, ids=None, mask=None):
        """``[(rows, context)]``: each row under the LoRA of its chosen task, or the base
        model (`run_routes` runs them); None while a task trains or before any has (the model
        as it is). `ids` and `mask`: the prompts, whose instruction text the keys match."""
        if images is None or self.task is not None or not self.keys.tasks:
            return None
        if ids is None or mask is None:
            raise ValueError(
                "task_lora: routes needs the prompts' ids and mask (its keys match the "
                "instruction text as well as the image)"
            )
        features = input_keys(model, images, ids, instruction_tokens(model, ids, mask))
        choice = self.keys.choose(features, fallback=self.base_quantile is not None)
        return routes_by_task(
            choice, lambda t: task_loras(model, [task_adapter(t)] if t >= 0 else [])
        )

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
        return (
            f"TaskLoRA(r={self.spec.r}, modules={self.spec.modules}, "
            f"base_quantile={self.base_quantile})"
        )
