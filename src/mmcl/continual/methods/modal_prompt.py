"""Soft prompts per task with key matching, after ModalPrompt (Zeng et al. 2024, "ModalPrompt:
Dual-Modality Guided Prompt for Continual Learning of Large Multimodal Models"): the whole
model frozen, `length` learned prompt vectors per task put before the language model's input
embeddings, and at test time each input gets the prompts of the task whose key it matches.

Training task t: every row gets task t's prompts (`mmcl.nn.lm_prompts`), which alone train;
the batches' inputs are added to task t's key (`task_keys.TaskKeys`): the mean image token
beside the mean embedding of the instruction's text (`task_keys.input_keys`, as `task_lora`).
Inference: `routes` gives each row the prompts of its nearest task's key, all rows in one
call (the prompts are chosen per row). Before any task has trained, the base model answers.

Where mmcl differs from ModalPrompt: one task's prompts per input (ModalPrompt selects the
top-k prototype prompts across tasks and fuses them); the keys are the frozen bridge's own
features of each task's training inputs, image and instruction text, averaged (ModalPrompt
matches the image and the instruction against its prototypes with CLIP's encoders, and
learns the prototypes); no prompt-alignment loss. The prompts of all tasks are created when the run starts, as extra
keys ``lm_prompts.embeddings.<task>`` of the model's state dict, so a resumed run finds them.
"""

from __future__ import annotations

from mmcl.continual.methods.base import Method
from mmcl.continual.methods.moe_lora import check_int
from mmcl.continual.methods.task_keys import TaskKeys, input_keys, instruction_tokens
from mmcl.nn.lm_prompts import TaskPrompts, attach_lm_prompts

PROMPTS_NAME = "lm_prompts"  # the prompts' submodule on the model


class ModalPrompt(Method):
    name = "modal_prompt"
    takes_instructions = True
    takes_classes = False

    def __init__(self, length: int = 8):
        check_int(self.name, "length", length, 1)
        self.length = length
        self.keys = TaskKeys()
        self.task: int | None = None
        self.prompts: TaskPrompts | None = None

    def setup(self, model, run) -> None:
        lm = getattr(model, "language_model", None)
        if lm is None or not hasattr(model, "encode_image"):
            raise ValueError(
                f"modal_prompt: puts prompts before a bridge's language model; a "
                f"{type(model).__name__} has none"
            )
        if hasattr(model, PROMPTS_NAME):
            raise ValueError(f"modal_prompt: the model already carries {PROMPTS_NAME}")
        model.requires_grad_(False)
        embeddings = lm.get_input_embeddings().weight
        prompts = TaskPrompts(len(run.scenario), self.length, embeddings.shape[1])
        prompts.to(device=embeddings.device, dtype=embeddings.dtype)
        setattr(model, PROMPTS_NAME, prompts)
        attach_lm_prompts(lm, prompts)
        self.prompts = prompts
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
        self.task = None
        self._switch()

    def routes(self, model, images, ids=None, mask=None):
        """One route: every row, under the prompts of its nearest task's key (None while a
        task trains or before any has). `ids` and `mask`: the prompts, whose instruction text
        the keys match."""
        if images is None or self.task is not None or not self.keys.tasks:
            return None
        if ids is None or mask is None:
            raise ValueError(
                "modal_prompt: routes needs the prompts' ids and mask (its keys match the "
                "instruction text as well as the image)"
            )
        features = input_keys(model, images, ids, instruction_tokens(model, ids, mask))
        choice = self.keys.choose(features)
        return [(choice.new_tensor(range(len(images))), self.prompts.choosing(choice))]

    def state_dict(self) -> dict:
        return {"task": self.task, "keys": self.keys.state_dict()}

    def load_state_dict(self, state) -> None:
        if state:
            self.task = state["task"]
            self.keys.load_state_dict(state["keys"])
            self._switch()

    def _switch(self) -> None:
        if self.prompts is None:
            return
        for index, embeddings in enumerate(self.prompts.embeddings):
            embeddings.requires_grad_(index == self.task)
        self.prompts.choose(self.task)  # None: no prompts until `routes` chooses

    def __repr__(self) -> str:
        return f"ModalPrompt(length={self.length})"
