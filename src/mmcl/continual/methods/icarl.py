"""iCaRL (Rebuffi et al. 2017, "iCaRL: Incremental Classifier and Representation Learning")
for CLIP: exemplars chosen by herding, distillation from the model as it was before the task,
and a nearest-mean-of-exemplars classifier.

Memory. At most `memory_size` exemplars in all: memory_size // (classes seen so far) per
class. After each task the exemplar sets of earlier classes are cut to that size, keeping their
first exemplars (herding orders a set by priority, so a prefix is the best smaller set), and the
task's classes get theirs by herding. Exemplars are references ``(task, index)`` into the tasks'
stream data, not images. A task trains on its own data concatenated with every exemplar, as in
the paper. The memory must hold at least one exemplar per class of the stream, which is checked
before training starts.

Herding (Welling 2009). On the L2-normalised image features of a class's training items under
the model as it is after the task, the k-th exemplar is the item that brings the mean of the
first k exemplars closest to the mean of all the items. When a class comes back in a later
task (domain-incremental streams) its current exemplars compete with the new items.

Classification: nearest mean of exemplars. A class's prototype is the normalised mean of its
exemplars' normalised features under the current model; an image scores the cosine similarity
of its normalised feature with each prototype, so the top score is the nearest prototype.
Classes of the space that have no exemplars (future tasks evaluated zero-shot before they are
trained, or a class with no training items) score the cosine with their zero-shot text
classifier column instead. Image-to-image cosines usually run higher than image-to-text ones,
so such a class seldom wins against classes with exemplars. Until the first task ends there are
no exemplars and the zero-shot classifier is used for every class.

Distillation. iCaRL trains with a binary cross-entropy per class output, the old classes'
targets being the sigmoid outputs of the network before the task. Here the classification term
stays the objective's cross-entropy, and the method adds

    distillation = distill_weight * mean over batch and old classes of BCE(sig(s), sig(t))

where s are the old classes' columns of the objective's logits (student image and text towers,
this step's prompt template) and t the same logits of a frozen copy of the model taken before
the task (its text embeddings of the old classes' prompts are computed once per template). Old
classes are those trained before the task. CLIP logits share a large arbitrary offset
(logit_scale * cosine is about 25 for every class of a pretrained model), which a softmax
ignores but a sigmoid saturates on, so each row is centred (its mean over the old classes
subtracted) before the sigmoid.

A plain image classifier (`mmcl.models.image_classifier`) is iCaRL's own setting: s and t are the head's
columns for the old classes (student and teacher forward passes), not centred, and the
nearest-mean classifier compares the backbone's normalised features. Classes without exemplars
cannot be scored by prompts, so they get no score (-inf) while any class of the space has
prototypes; a space with none is scored by the head.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from mmcl.continual import classes
from mmcl.continual.heads import head_logits, is_classifier
from mmcl.continual.methods.base import Method
from mmcl.continual.methods.replay import ReplayItems
from mmcl.data.zeroshot import format_prompts
from mmcl.io.tokenizer import tokenize
from mmcl.train.sampler import SeededItems


class ICaRL(Method):
    name = "icarl"
    mixes_past_data = True

    def __init__(self, memory_size: int = 500, distill_weight: float = 1.0):
        if isinstance(memory_size, bool) or not isinstance(memory_size, int):
            raise ValueError(f"icarl: memory_size must be an integer, got {memory_size!r}")
        if memory_size < 1:
            raise ValueError(f"icarl: memory_size must be at least 1, got {memory_size}")
        if not (math.isfinite(distill_weight) and distill_weight >= 0):
            raise ValueError(
                f"icarl: distill_weight must be a finite number >= 0, got {distill_weight}"
            )
        self.memory_size = memory_size
        self.distill_weight = distill_weight
        # Per class (stream label), its exemplars in herding order: (task, index) references.
        self.memory: dict[int, list[tuple[int, int]]] = {}
        self._calls = 0  # the objective's step counter, to use the same prompt template
        self._forget_task_state()

    # --- memory --------------------------------------------------------------------------------

    def setup(self, model, run) -> None:
        scenario = run.scenario
        every = classes.union([classes.task_classes(scenario, i) for i in range(len(scenario))])
        if self.memory_size < len(every):
            raise ValueError(
                f"icarl: memory_size {self.memory_size} cannot hold one exemplar for each of "
                f"the {len(every)} classes of the stream"
            )
        self.memory = {}
        self._forget_task_state()

    def train_data(self, task, run) -> Dataset:
        current = run.stream_data(task.index)
        if not self.memory:
            return current
        return ConcatDataset([current, self._exemplars(run)])

    def after_task(self, task, model, run) -> None:
        self._forget_task_state()
        current = classes.task_classes(run.scenario, task.index).labels
        seen = set(self.memory) | set(current)
        per_class = self.memory_size // len(seen)
        for exemplars in self.memory.values():  # herding order: a prefix is the best subset
            del exemplars[per_class:]
        candidates: dict[int, list[tuple[int, int]]] = {label: [] for label in current}
        for index, label in enumerate(run.stream_data(task.index).targets):
            if label in candidates:
                candidates[label].append((task.index, index))
        for label in current:  # a class seen before competes with its old exemplars
            candidates[label] += self.memory.get(label, [])
        references = [r for label in current for r in candidates[label]]
        labels = [label for label in current for _ in candidates[label]]
        features = encode_items(model, run, references, labels).cpu()
        start = 0
        for label in current:
            block = features[start : start + len(candidates[label])]
            start += len(block)
            if len(block):
                chosen = herding(block, min(per_class, len(block)))
                self.memory[label] = [candidates[label][k] for k in chosen]

    def _exemplars(self, run) -> ReplayItems:
        references = [r for exemplars in self.memory.values() for r in exemplars]
        labels = [label for label, exemplars in self.memory.items() for _ in exemplars]
        return ReplayItems(run, references, labels)

    # --- distillation --------------------------------------------------------------------------

    def before_task(self, task, model, run) -> None:
        self._forget_task_state()
        self._calls = 0  # a new objective starts at its first template
        if task.index == 0:
            return
        old = run.training_space(task.index - 1)
        space = run.training_space(task.index)
        # Training on past data too, the objective's classes include every old class.
        self._old_columns = space.positions(torch.tensor(old.labels))
        teacher = copy.deepcopy(model).requires_grad_(False).eval()
        if is_classifier(model):
            self._teacher, self._old_labels = teacher, old.labels
            return
        cycle = max(len(templates) for templates in space.templates)  # as the objective cycles
        self._teacher_text = torch.stack(
            [prompt_features(teacher, old, step) for step in range(cycle)]
        )
        self._teacher = teacher

    def extra_losses(self, model, batch, outputs) -> dict[str, torch.Tensor]:
        if self._teacher is None:
            return {}
        images = batch[0]
        step = self._calls
        self._calls += 1
        if next(self._teacher.parameters()).device != images.device:  # the engine moved the model
            self._teacher.to(images.device)
            self._old_columns = self._old_columns.to(images.device)
        student = outputs["logits"][:, self._old_columns].float()
        if self._teacher_text is None:  # a plain classifier: the heads' old columns, as in iCaRL
            with torch.no_grad():
                target = head_logits(self._teacher, images, self._old_labels).float()
            loss = F.binary_cross_entropy_with_logits(student, torch.sigmoid(target))
            return {"distillation": self.distill_weight * loss}
        self._teacher_text = self._teacher_text.to(images.device)
        with torch.no_grad():
            past = self._teacher(images, None, output_dict=True)
            target = past["logit_scale"].float() * past["image_features"].float()
            target = target @ self._teacher_text[step % len(self._teacher_text)].float().T
        loss = F.binary_cross_entropy_with_logits(
            _centred(student), torch.sigmoid(_centred(target))
        )
        return {"distillation": self.distill_weight * loss}

    def after_optimizer_step(self, trainer) -> None:
        # Follow the objective's own counter, so the teacher's template stays the student's.
        self._calls = getattr(trainer.objective, "calls", self._calls)

    # --- nearest mean of exemplars -------------------------------------------------------------

    def predict(self, model, images, space, run):
        if not self.memory:
            return None
        # Prototypes (and zero-shot columns) are computed once per evaluation, not per batch:
        # the cache holds while the model is the same object with unchanged weights (every
        # in-place update, by an optimiser or a state-dict load, bumps a tensor's version).
        key = (id(model), tuple(p._version for p in model.parameters()))
        if self._cache.get("model") != key:
            self._cache = {"model": key, "columns": self._prototypes(model, run)}
        columns = self._cache["columns"]
        if is_classifier(model):  # no prompts to fall back on: unscored, or the head's logits
            if all(columns.get(label) is None for label in space.labels):
                return head_logits(model, images, space.labels)
            columns = {label: columns.get(label) for label in space.labels}
        missing = [k for k, label in enumerate(space.labels) if label not in columns]
        if missing:
            zero_shot = classes.ClassSpace(
                [space.names[k] for k in missing],
                [space.labels[k] for k in missing],
                [space.templates[k] for k in missing],
            ).classifier(model)
            for position, k in enumerate(missing):
                columns[space.labels[k]] = zero_shot[:, position].float()
        features = model.encode_image(images, normalize=True).float()
        unscored = [k for k, label in enumerate(space.labels) if columns[label] is None]
        weights = torch.stack(
            [
                torch.zeros(features.shape[1]) if columns[label] is None else columns[label].cpu()
                for label in space.labels
            ],
            dim=1,
        )
        scores = features @ weights.to(features.device)
        scores[:, unscored] = -math.inf
        return scores

    def _prototypes(self, model, run) -> dict[int, torch.Tensor]:
        exemplars = self._exemplars(run)
        features = encode_items(model, run, exemplars.references, exemplars.targets)
        targets = torch.tensor(exemplars.targets, device=features.device)
        return {
            label: F.normalize(features[targets == label].mean(0), dim=0)
            for label in self.memory
            if self.memory[label]
        }

    # --- state ---------------------------------------------------------------------------------

    def _forget_task_state(self) -> None:
        self._teacher = None
        self._teacher_text = None
        self._old_columns = None
        self._old_labels: list[int] = []
        self._cache: dict[str, Any] = {}  # prototypes under the model of the last evaluation

    def state_dict(self) -> dict[str, Any]:
        rows = [(label, t, i) for label, refs in self.memory.items() for t, i in refs]
        return {
            "memory": torch.tensor(rows, dtype=torch.long).reshape(-1, 3),
            "calls": self._calls,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._cache = {}
        if "memory" not in state:
            return
        self.memory = {}
        for label, task, index in state["memory"].tolist():
            self.memory.setdefault(label, []).append((task, index))
        self._calls = int(state.get("calls", 0))

    def __repr__(self) -> str:
        return f"ICaRL(memory_size={self.memory_size}, distill_weight={self.distill_weight})"


def herding(features: torch.Tensor, count: int) -> list[int]:
    """Rows of `features` (n, d) chosen one at a time so that the mean of the rows chosen so far
    stays as close as possible to the mean of all rows; their positions, in the order chosen.

    >>> herding(torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]]), 5)
    [3, 2, 1, 4, 0]
    """
    if not 0 <= count <= len(features):
        raise ValueError(f"cannot choose {count} of {len(features)} items")
    features = features.detach().double().cpu()
    target = features.mean(dim=0)
    total = torch.zeros_like(target)
    free = torch.ones(len(features), dtype=torch.bool)
    chosen: list[int] = []
    for k in range(1, count + 1):
        distances = ((target - (total + features) / k) ** 2).sum(dim=1)
        distances[~free] = math.inf
        pick = int(distances.argmin())  # ties: the first item
        chosen.append(pick)
        free[pick] = False
        total += features[pick]
    return chosen


@torch.no_grad()
def encode_items(
    model, run, references: Sequence[tuple[int, int]], labels: Sequence[int]
) -> torch.Tensor:
    """Normalised float32 image features of past training items, in eval mode; each item's
    random augmentation (if any) is seeded, so the features are reproducible."""
    device = next(model.parameters()).device
    dataset = SeededItems(ReplayItems(run, references, labels), run.config.seed)
    loader = DataLoader(
        dataset,
        batch_size=run.config.batch_size,
        sampler=[(0, k) for k in range(len(references))],
        num_workers=run.config.workers,
    )
    was_training = model.training
    model.eval()
    try:
        chunks = [
            model.encode_image(images.to(device), normalize=True).float() for images, _ in loader
        ]
    finally:
        model.train(was_training)
    if not chunks:
        return torch.zeros(0, 0, device=device)
    return torch.cat(chunks)


@torch.no_grad()
def prompt_features(model, space: classes.ClassSpace, step: int) -> torch.Tensor:
    """Normalised text embeddings ``(len(space), embed_dim)`` of one prompt per class, the one
    `ClassificationObjective` uses at `step` (each class cycles through its own templates)."""
    prompts = [
        format_prompts(name, [templates[step % len(templates)]])[0]
        for name, templates in zip(space.names, space.templates, strict=True)
    ]
    device = next(model.parameters()).device
    return model.encode_text(tokenize(prompts).to(device), normalize=True).float()


def _centred(logits: torch.Tensor) -> torch.Tensor:
    return logits - logits.mean(dim=1, keepdim=True)
