"""ALBEF's pre-training objective (Li et al. 2021, section 3.2-3.3): ITC against a momentum
model and feature queues, ITM with hard negatives, and MLM distilled from the momentum model.

The pure pieces (`distillation_weight`, `soft_targets`, `queue_contrastive_loss`,
`mask_tokens`, `mlm_distillation_loss`, `momentum_update`, `enqueue`) are tested on hand-worked
cases; `AlbefObjective` puts them together on the one engine and keeps the momentum model, the
queues, its call count and its seed as its state, so a checkpoint resumes exactly.

The details ALBEF's code fixes and that we match on purpose:
- the temperature is clamped to [0.001, 0.5] at the start of every step;
- the momentum model is updated before it computes this step's features;
- the soft targets are ``alpha * softmax(momentum similarities over batch + queue) +
  (1 - alpha) * one-hot``, with alpha ramped linearly from 0 over the first epoch;
- the queues receive the momentum features of every rank, after the loss is computed;
- hard negatives are drawn from the in-batch softmax similarities (never the queue), the
  positive and pairs sharing an image id excluded: 1 positive to 2 negatives
  (`mmcl.train.blip_losses`). ALBEF's code scores online image features against momentum
  text features there; we use the online features of both, which need no momentum pass first;
- MLM masks 15% of the tokens (80% [MASK], 10% a random id, 10% unchanged), never the
  padding or the start token.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmcl.train.blip_losses import (
    IGNORE,
    TEMPERATURE_RANGE,
    itm_loss,
    itm_pairs,
    pair_ids,
    sample_hard_negatives,
)
from mmcl.train.distributed import all_gather_with_grad, rank


def distillation_weight(calls: int, ramp_calls: int | None, alpha: float) -> float:
    """ALBEF's ``alpha * min(1, i / len(data_loader))`` in the first epoch: 0 at the first
    step, `alpha` from the end of the first epoch (`ramp_calls` steps) on."""
    if not ramp_calls:
        return alpha
    return alpha * min(1.0, calls / ramp_calls)


def soft_targets(momentum_similarity: Tensor, alpha: float) -> Tensor:
    """``alpha * softmax(rows) + (1 - alpha) * one-hot``, for ``(batch, batch + queue)``
    momentum similarities whose first `batch` columns are the batch (row i's positive: i)."""
    batch = momentum_similarity.shape[0]
    one_hot = torch.zeros_like(momentum_similarity)
    one_hot[:, :batch] = torch.eye(batch, device=one_hot.device, dtype=one_hot.dtype)
    return alpha * F.softmax(momentum_similarity, dim=1) + (1 - alpha) * one_hot


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over rows of ``-sum(targets * log_softmax(logits))``."""
    return -(F.log_softmax(logits, dim=1) * targets).sum(dim=1).mean()


def queue_contrastive_loss(
    image_features: Tensor,
    text_features: Tensor,
    momentum_image_features: Tensor,
    momentum_text_features: Tensor,
    image_queue: Tensor,
    text_queue: Tensor,
    temperature: Tensor,
    alpha: float,
) -> Tensor:
    """ALBEF's ITC: each image against the momentum texts of the batch and the text queue
    (and each text against images), with `soft_targets` from the momentum similarities.
    Features are normalised rows; queues ``(queue_size, embed_dim)``. Computed in float32
    (the logits reach 1 / 0.001 at the clamp's end)."""
    image_features, text_features = image_features.float(), text_features.float()
    momentum_image_features = momentum_image_features.float()
    momentum_text_features = momentum_text_features.float()
    all_images = torch.cat([momentum_image_features, image_queue.float()])
    all_texts = torch.cat([momentum_text_features, text_queue.float()])
    with torch.no_grad():
        image_targets = soft_targets(momentum_image_features @ all_texts.T / temperature, alpha)
        text_targets = soft_targets(momentum_text_features @ all_images.T / temperature, alpha)
    image_to_text = image_features @ all_texts.T / temperature
    text_to_image = text_features @ all_images.T / temperature
    return (
        soft_cross_entropy(image_to_text, image_targets)
        + soft_cross_entropy(text_to_image, text_targets)
    ) / 2


def mask_tokens(
    tokens: Tensor,
    vocab_size: int,
    mask_id: int,
    pad_id: int,
    start_id: int,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking as ALBEF does it: each token other than padding and the start token is
    chosen with `probability`; a chosen token becomes [MASK] (80%), a random id (10%) or
    stays (10%). Returns the masked tokens and the targets (the original id where chosen,
    `IGNORE` elsewhere)."""

    def draw(chance: float) -> Tensor:
        full = torch.full(tokens.shape, chance, device=tokens.device)
        return torch.bernoulli(full, generator=generator).bool()

    chosen = draw(probability) & (tokens != pad_id) & (tokens != start_id)
    targets = tokens.masked_fill(~chosen, IGNORE)
    to_mask = draw(0.8) & chosen
    to_random = draw(0.5) & chosen & ~to_mask
    random_ids = torch.randint(vocab_size, tokens.shape, device=tokens.device, generator=generator)
    masked = tokens.masked_fill(to_mask, mask_id)
    masked = torch.where(to_random, random_ids, masked)
    return masked, targets


def mlm_distillation_loss(
    logits: Tensor, targets: Tensor, momentum_logits: Tensor, alpha: float
) -> Tensor:
    """``(1 - alpha) * cross-entropy(targets) + alpha * cross-entropy(softmax(momentum))``,
    each a mean over the chosen tokens; zero (with a graph) when none was chosen."""
    chosen = targets != IGNORE
    if not chosen.any():
        return logits.sum() * 0.0
    logits, momentum_logits = logits[chosen].float(), momentum_logits[chosen].float()
    hard = F.cross_entropy(logits, targets[chosen])
    soft = soft_cross_entropy(logits, F.softmax(momentum_logits, dim=1))
    return (1 - alpha) * hard + alpha * soft


@torch.no_grad()
def hard_negatives(
    similarity: Tensor,
    image_ids: Tensor | None = None,
    floor: float = 1e-4,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """`sample_hard_negatives` with ALBEF's weights ``softmax(row) + floor`` (the positive and
    pairs sharing an image id still 0). The floor keeps a row drawable when its softmax puts
    all the mass on the positive: at the clamp's low temperatures the others underflow to 0."""
    return sample_hard_negatives(similarity, image_ids, generator, floor=floor)


@torch.no_grad()
def momentum_update(momentum_model: nn.Module, model: nn.Module, momentum: float) -> None:
    """``theta_m <- momentum * theta_m + (1 - momentum) * theta``, parameter by parameter."""
    for averaged, current in zip(momentum_model.parameters(), model.parameters(), strict=True):
        averaged.mul_(momentum).add_(current.detach(), alpha=1 - momentum)


@torch.no_grad()
def enqueue(queue: Tensor, pointer: int, features: Tensor) -> int:
    """Writes `features` into the ring buffer `queue` from `pointer` on (wrapping around),
    and returns the next pointer."""
    size = queue.shape[0]
    if len(features) > size:
        features = features[-size:]
    rows = (pointer + torch.arange(len(features), device=queue.device)) % size
    queue[rows] = features.to(queue.dtype)
    return (pointer + len(features)) % size


class AlbefObjective:
    """ITC + ITM + MLM on (images, WordPiece tokens) batches for an `mmcl.models.Albef`.

    ALBEF's settings by default (queue 65,536, momentum 0.995, alpha 0.4, 15% masking); a
    short run on small data wants a shorter queue, since the queue starts as random unit
    vectors and is only replaced as batches arrive.
    """

    def __init__(
        self,
        queue_size: int = 65536,
        momentum: float = 0.995,
        alpha: float = 0.4,
        mlm_probability: float = 0.15,
    ):
        if queue_size < 1 or not 0 <= momentum < 1 or not 0 <= alpha <= 1:
            raise ValueError(
                f"ALBEF objective: queue_size must be >= 1, momentum in [0, 1) and alpha in "
                f"[0, 1]; got {queue_size}, {momentum}, {alpha}"
            )
        self.queue_size, self.momentum, self.alpha = queue_size, momentum, alpha
        self.mlm_probability = mlm_probability
        self.momentum_model: nn.Module | None = None
        self.image_queue = self.text_queue = None
        self.queue_pointer = 0
        self.calls = 0
        self.seed: int | None = None
        self.generator: torch.Generator | None = None
        self.ramp_calls: int | None = None  # the first epoch's steps, set by the engine

    def check(self, model: nn.Module) -> None:
        """Refuses a model that is not an ALBEF; builds the momentum copy and the queues
        (random unit vectors, as ALBEF starts them)."""
        from mmcl.models.albef import Albef

        if not isinstance(model, Albef):
            raise ValueError(
                f"loss 'albef' needs an ALBEF model (e.g. tiny-albef), got a {type(model).__name__}"
            )
        self.momentum_model = copy.deepcopy(model).requires_grad_(False)
        device, embed_dim = model.temp.device, model.config.embed_dim
        self.image_queue = F.normalize(
            torch.randn(self.queue_size, embed_dim, device=device), dim=1
        )
        self.text_queue = F.normalize(torch.randn(self.queue_size, embed_dim, device=device), dim=1)
        self.queue_pointer = 0
        # Masks and negatives draw from a generator of our own, seeded each step from (run
        # seed, step, rank): the global generator is also drawn by whatever runs between
        # steps (a new DataLoader iterator on resume), and only rank 0's state is saved, so
        # neither would give every rank the same draws after a resume.
        self.seed = int(torch.randint(2**62, ()))  # the same on every rank (seeded run)
        self.generator = torch.Generator(device=device)

    def set_epoch_steps(self, calls: int) -> None:
        """The number of calls in the first epoch, over which alpha ramps up."""
        self.ramp_calls = calls

    def __call__(self, model, images: Tensor, texts: Tensor):
        unwrapped = getattr(model, "module", model)  # DistributedDataParallel keeps it there
        if self.momentum_model is None:
            self.check(unwrapped)
        text_config = unwrapped.config.albef_text
        with torch.no_grad():
            unwrapped.temp.clamp_(*TEMPERATURE_RANGE)
        temperature = unwrapped.temp
        alpha = distillation_weight(self.calls, self.ramp_calls, self.alpha)
        self.generator.manual_seed(hash((self.seed, self.calls, rank())) % 2**63)
        masked, targets = mask_tokens(
            texts,
            text_config.vocab_size,
            text_config.mask_id,
            text_config.pad_id,
            text_config.cls_id,
            self.mlm_probability,
            self.generator,
        )
        with torch.no_grad():
            momentum_update(self.momentum_model, unwrapped, self.momentum)
            momentum = self.momentum_model(images, texts, masked_texts=masked)
        itm_labels = []

        def pick_pairs(image_features: Tensor, text_features: Tensor):
            similarity = image_features @ text_features.T / temperature.detach()
            negative_texts, negative_images = hard_negatives(
                similarity, pair_ids(images, texts), generator=self.generator
            )
            index = torch.arange(len(image_features), device=image_features.device)
            image_index, text_index, labels = itm_pairs(
                index, index, negative_texts, negative_images
            )
            itm_labels.append(labels)
            return image_index, text_index

        # One call of the (possibly DDP-wrapped) model computes every output with a gradient.
        outputs = model(images, texts, masked_texts=masked, pick_pairs=pick_pairs)
        terms = {
            "itc": queue_contrastive_loss(
                outputs["image_features"],
                outputs["text_features"],
                momentum["image_features"],
                momentum["text_features"],
                self.image_queue,
                self.text_queue,
                temperature,
                alpha,
            ),
            "itm": itm_loss(outputs["itm_logits"], itm_labels[0]),
            "mlm": mlm_distillation_loss(
                outputs["mlm_logits"], targets, momentum["mlm_logits"], alpha
            ),
        }
        with torch.no_grad():  # every rank's momentum features, in rank order
            image_rows = all_gather_with_grad(momentum["image_features"])
            text_rows = all_gather_with_grad(momentum["text_features"])
            enqueue(self.image_queue, self.queue_pointer, image_rows)
            self.queue_pointer = enqueue(self.text_queue, self.queue_pointer, text_rows)
        self.calls += 1
        outputs["alpha"], outputs["mlm_targets"] = alpha, targets
        return terms, outputs

    def state_dict(self) -> dict[str, Any]:
        if self.momentum_model is None:
            raise ValueError("the ALBEF objective has no state before check(model) built it")
        return {
            "momentum_model": self.momentum_model.state_dict(),
            "image_queue": self.image_queue,
            "text_queue": self.text_queue,
            "queue_pointer": self.queue_pointer,
            "calls": self.calls,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.momentum_model is None:
            raise ValueError("call check(model) before loading the ALBEF objective's state")
        self.momentum_model.load_state_dict(state["momentum_model"])
        if state["image_queue"].shape != self.image_queue.shape:
            raise ValueError(
                f"the checkpoint's ALBEF queue holds {tuple(state['image_queue'].shape)} "
                f"features, this objective {tuple(self.image_queue.shape)}: resume with the "
                f"same queue_size and model"
            )
        self.image_queue.copy_(state["image_queue"])
        self.text_queue.copy_(state["text_queue"])
        self.queue_pointer = int(state["queue_pointer"])
        self.calls = int(state["calls"])
        self.seed = int(state["seed"])
