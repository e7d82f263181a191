"""ZSCL (Zheng et al. 2023, "Preventing Zero-Shot Transfer Degradation in Continual Learning of
Vision-Language Models"): distil the *initial* model on reference image-text pairs that belong
to no task, and average the weights along each task's training path.

Feature-space distillation. The teacher is the model the run started from (its zero-shot
ability is what should survive). Every training step draws a batch of reference pairs; student
and teacher embed its images and captions, and with z = logit_scale * cos(image_i, text_j)

    zscl = lambda * T**2 * (KL(softmax(z_t / T) || softmax(z_s / T))        image -> text
                            + KL(softmax(z_t.T / T) || softmax(z_s.T / T)))  text -> image

at T = 2, rows averaged (the T**2 keeps the gradient's size independent of T, as in the
authors' code; KL rather than their cross-entropy differs by a constant, so it is zero at the
start). The authors' code builds the student's logits with the teacher's text embeddings;
here the student's own text tower is used, so it is held too (this library trains both towers).

Reference data: the built-in captioned scenes (`mmcl.data.scenes.SceneCaptions`) of the "val"
split, rendered at the model's image size. Scene splits are disjoint by construction and the
built-in scene tasks and scene pre-training use "train" and "test" scenes, so no reference pair
is a task item. The authors draw images and sentences from unrelated sources; the loss needs no
pairing, so captions of the same scenes do as well. Batch number d is a seeded random choice of
`reference_batch_size` pairs (default: the run's batch size; at most `reference_pairs`) that
depends on d alone, so keeping d in the state makes a resumed run draw exactly what an
uninterrupted one would.

On an instruction stream (`mmcl.continual.instructions`, a LLaVA-style bridge) the reference
pairs become captioning conversations (a caption instruction of the scene conversations,
answered by the reference caption) and the term distils the initial model's next-token
distributions on them: z is the logits at the caption's (answer) positions,

    zscl = lambda * T**2 * KL(softmax(z_t / T) || softmax(z_s / T))   (mean over positions)

(`instruction_terms.next_token_kl`): generic captioning is the general ability a bridge
should keep, as zero-shot transfer is CLIP's.

Weight ensemble. Within a task the method keeps the running mean of the weights,
theta_avg <- (n * theta_avg + theta) / (n + 1): it starts as the task's initial weights (n = 1)
and takes in the weights every `average_every` optimizer steps (after steps 1, 1 + I, 1 + 2I,
..., the paper's iterations 0, I, 2I, ...). At the end of the task the model takes the average.
Parameters only: buffers (BatchNorm statistics) keep their last value, and parameters frozen
for the task leave the average at its first update (their mean is themselves), so checkpoints
of a run with a locked tower stay small. The average is part of the state, so resuming inside
a task is exact. A task of fewer than `average_every` + 2 steps averages its start with its first
step only, which undoes the task: the method warns then (take `average_every` near a tenth
of a task's steps, as the paper's 100 of 1,000).
"""

from __future__ import annotations

import math
import warnings

import torch

from mmcl.continual.generative import training_parts
from mmcl.continual.instructions import prompt_of
from mmcl.continual.methods.base import Method
from mmcl.continual.methods.instruction_terms import bridge_logits, next_token_kl
from mmcl.continual.methods.lwf import distillation
from mmcl.data.conversations import Conversation
from mmcl.data.scenes import SceneCaptions
from mmcl.io.tokenizer import tokenize

REFERENCE_SPLIT = "val"  # neither the tasks' scenes ("train", "test") nor pre-training's


class ZSCL(Method):
    name = "zscl"
    needs_text_tower = True
    takes_captions = True
    takes_instructions = True

    def __init__(
        self,
        lambda_: float = 1.0,
        temperature: float = 2.0,
        reference_pairs: int = 512,
        reference_batch_size: int | None = None,
        average_every: int = 100,
    ):
        if not (isinstance(lambda_, (int, float)) and math.isfinite(lambda_) and lambda_ >= 0):
            raise ValueError(f"zscl: lambda_ must be a finite number >= 0, got {lambda_!r}")
        if not (
            isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0
        ):
            raise ValueError(f"zscl: temperature must be a finite number > 0, got {temperature!r}")
        _check_count("reference_pairs", reference_pairs)
        if reference_batch_size is not None:
            _check_count("reference_batch_size", reference_batch_size)
        _check_count("average_every", average_every)
        self.lambda_ = float(lambda_)
        self.temperature = float(temperature)
        self.reference_pairs = reference_pairs
        self.reference_batch_size = reference_batch_size
        self.average_every = average_every
        self.teacher: torch.nn.Module | None = None
        self.reference: SceneCaptions | None = None
        self._rendered: tuple[torch.Tensor, torch.Tensor] | None = None
        self.batch_size = 0  # reference pairs per step, known once the run's batch size is
        self.seed = 0
        self.draws = 0  # reference batches drawn so far in the run
        self.instructions = False  # the stream holds conversations for a bridge
        self._encoder = None
        self.average: dict[str, torch.Tensor] | None = None
        self.members = 0  # weights in the average
        self.task_steps = 0  # optimizer steps in the current task

    def setup(self, model, run) -> None:
        self.teacher = None  # the initial weights are known once every method has set up
        self.seed = run.config.seed
        self._rendered = None
        self.instructions = getattr(run, "instructions", False)
        if self.instructions:
            self.reference = reference_conversations(
                self.reference_pairs, model.image_size, self.seed
            )
            self._encoder = run.encoder
            self.batch_size = min(
                self.reference_batch_size or run.config.batch_size, len(self.reference)
            )
            return
        self.reference = SceneCaptions(
            REFERENCE_SPLIT,
            self.reference_pairs,
            image_size=model.image_size,
            seed=self.seed,
            tokenizer=tokenize,
        )
        self.batch_size = min(
            self.reference_batch_size or run.config.batch_size, len(self.reference)
        )
        self._rendered: tuple[torch.Tensor, torch.Tensor] | None = None

    def before_task(self, task, model, run) -> None:
        if self.teacher is None:
            self.teacher = run.initial_model(model)
        self.average = {n: p.detach().clone() for n, p in _floating_parameters(model)}
        self.members = 1
        self.task_steps = 0

    def reference_batch(self, draw: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and caption tokens of reference batch number `draw` (a function of it)."""
        generator = torch.Generator().manual_seed(1_000_003 * self.seed + draw)
        picks = torch.randperm(len(self.reference), generator=generator)[: self.batch_size]
        if self._rendered is None and self.instructions:  # encoded once, collated per draw
            self._rendered = training_parts(self.reference, self._encoder)[:2]
        if self.instructions:
            encoded, collate = self._rendered
            return collate([encoded[i] for i in picks.tolist()])
        if self._rendered is None:  # render the reference set once, not a batch every step
            images, tokens = zip(
                *(self.reference[i] for i in range(len(self.reference))), strict=True
            )
            self._rendered = torch.stack(images), torch.stack(tokens)
        images, tokens = self._rendered
        return images[picks], tokens[picks]

    def extra_losses(self, model, batch, outputs) -> dict[str, torch.Tensor]:
        if self.teacher is None:
            raise RuntimeError("zscl: setup(model, run) must run before training")
        device = batch[0].device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)  # built before the engine moved the model
        images, tokens = (t.to(device) for t in self.reference_batch(self.draws))
        self.draws += 1
        t = self.temperature
        if self.instructions:
            student_logits = bridge_logits(model, images, tokens)
            with torch.no_grad():
                teacher_logits = bridge_logits(self.teacher, images, tokens)
            loss = next_token_kl(teacher_logits, student_logits, tokens[:, 1], t)
            return {"zscl": self.lambda_ * t**2 * loss}
        student = model(images, tokens, output_dict=True)
        with torch.no_grad():
            teacher = self.teacher(images, tokens, output_dict=True)
        student_logits = _logits(student)
        teacher_logits = _logits(teacher)
        loss = distillation(teacher_logits, student_logits, t) + distillation(
            teacher_logits.T, student_logits.T, t
        )
        return {"zscl": self.lambda_ * t**2 * loss}

    def after_optimizer_step(self, trainer) -> None:
        self.task_steps += 1
        # trainer.step counts the steps before this one: 0, I, 2I, ... as in the paper.
        if self.average is None or trainer.step % self.average_every:
            return
        with torch.no_grad():
            for name, parameter in _floating_parameters(trainer.model):
                if name not in self.average:
                    continue
                if not parameter.requires_grad:  # frozen for the task: its mean is itself
                    del self.average[name]
                    continue
                mean = self.average[name]
                if mean.device != parameter.device:  # loaded from a checkpoint on the CPU
                    self.average[name] = mean = mean.to(parameter.device)
                mean.mul_(self.members).add_(parameter.detach()).div_(self.members + 1)
        self.members += 1

    def after_task(self, task, model, run) -> None:
        if self.average is not None and self.members <= 2 < self.task_steps:
            # The task's start and its first step only: the task's training is averaged away.
            warnings.warn(
                f"zscl: the weight average of this task holds {self.members} weights of its "
                f"{self.task_steps} steps (average_every={self.average_every}), so the model "
                f"ends the task next to where it began; set average_every to about "
                f"{max(1, self.task_steps // 10)} (a tenth of the steps, as in the paper)",
                stacklevel=2,
            )
        if self.average is not None:
            with torch.no_grad():
                for name, parameter in _floating_parameters(model):
                    if name in self.average:
                        parameter.copy_(self.average[name])
        self.average, self.members = None, 0

    def state_dict(self):
        return {
            "draws": self.draws,
            "average": self.average,
            "members": self.members,
            "task_steps": self.task_steps,
        }

    def load_state_dict(self, state) -> None:
        self.draws = int(state.get("draws", 0))
        average = state.get("average")
        self.average = None if average is None else dict(average)
        self.members = int(state.get("members", 0))
        self.task_steps = int(state.get("task_steps", 0))

    def __repr__(self) -> str:
        return (
            f"ZSCL(lambda_={self.lambda_}, temperature={self.temperature}, "
            f"reference_pairs={self.reference_pairs}, "
            f"reference_batch_size={self.reference_batch_size}, "
            f"average_every={self.average_every})"
        )


def reference_conversations(size: int, image_size: int, seed: int) -> list:
    """The reference scenes as ``(image, Conversation)`` captioning items (a bridge's)."""
    from mmcl.data.scene_conversations import CAPTION_INSTRUCTIONS
    from mmcl.io.transforms import image_transform

    scenes = SceneCaptions(REFERENCE_SPLIT, size, image_size, seed, image_transform(image_size))
    items = []
    for index in range(len(scenes)):
        image, text = scenes[index]
        asked = prompt_of(CAPTION_INSTRUCTIONS[index % len(CAPTION_INSTRUCTIONS)])
        items.append((image, Conversation(f"reference-{index}", None, ((asked, text),))))
    return items


def _check_count(argument: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"zscl: {argument} must be an integer >= 1, got {value!r}")


def _floating_parameters(model):
    return [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]


def _logits(outputs) -> torch.Tensor:
    return outputs["logit_scale"] * outputs["image_features"] @ outputs["text_features"].T
