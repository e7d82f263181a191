"""BLIP's pre-training losses (Li et al. 2022, section 3.2), as pure functions.

- ITC: CLIP's InfoNCE on the projected class tokens (`contrastive_loss`; BLIP adds a momentum
  encoder and queue on top, which ALBEF's objective supplies).
- ITM with hard negatives (`sample_hard_negatives`, `itm_pairs`, `itm_loss`): for each image
  one negative text, for each text one negative image, drawn with `multinomial` from the
  in-batch softmax similarities with the positive and every pair sharing an image id
  excluded: 1 positive to 2 negatives.
- LM (`lm_targets`, `lm_loss`): next-token cross-entropy of the decoder, with the padding and
  the caption prompt ("[DEC] a picture of") left out of the loss.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from mmcl.train.losses import ClipLoss

IGNORE = -100  # the target `cross_entropy` skips
# BLIP's and ALBEF's learned ITC temperature is clamped into this range at every step.
TEMPERATURE_RANGE = (0.001, 0.5)


def contrastive_loss(image_features: Tensor, text_features: Tensor, temperature: Tensor) -> Tensor:
    """ITC: symmetric InfoNCE of normalised features at `temperature` (BLIP learns it,
    clamped to [0.001, 0.5])."""
    return ClipLoss()(image_features, text_features, 1.0 / temperature)


def pair_ids(images: Tensor, texts: Tensor) -> Tensor:
    """A group id per row: rows with equal images or equal texts (and, by chaining, those
    linked through them) share one, so no pair of a group is an ITM negative."""
    same = _equal_rows(images.flatten(1)) | _equal_rows(texts)
    for _ in range(max(1, len(same)).bit_length()):  # transitive closure by squaring
        same = (same.float() @ same.float()) > 0
    return same.float().argmax(dim=1)  # the group's first row


def _equal_rows(rows: Tensor) -> Tensor:
    inverse = torch.unique(rows, dim=0, return_inverse=True)[1]
    return inverse.view(-1, 1) == inverse.view(1, -1)


def sample_hard_negatives(
    similarity: Tensor,
    image_ids: Tensor | None = None,
    generator: torch.Generator | None = None,
    floor: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """For ``similarity`` ``(batch, batch)`` (image i against text j, logits), the index of a
    negative text for each image and of a negative image for each text, each drawn from the
    softmax over its row with the positive and every pair sharing an image id (`image_ids`
    ``(batch,)``; default: every row its own) given weight 0. `floor` is added to the softmax
    before that (ALBEF's 1e-4): at low temperatures the other weights underflow to 0 and a row
    would have nothing left to draw."""
    if image_ids is None:
        image_ids = torch.arange(similarity.shape[0], device=similarity.device)
    negative_texts = draw_negatives(similarity, image_ids, image_ids, generator, floor)
    negative_images = draw_negatives(similarity.t(), image_ids, image_ids, generator, floor)
    return negative_texts, negative_images


@torch.no_grad()
def draw_negatives(
    similarity: Tensor,
    row_ids: Tensor,
    column_ids: Tensor,
    generator: torch.Generator | None = None,
    floor: float = 0.0,
) -> Tensor:
    """One column per row of ``similarity`` ``(rows, columns)`` (logits), drawn with
    `multinomial` from ``softmax(row) + floor`` with weight 0 on every column whose id
    (`column_ids`) is the row's (`row_ids`): the positive and the pairs sharing an image."""
    same = row_ids.view(-1, 1) == column_ids.view(1, -1)
    if same.all(dim=1).any():
        raise ValueError(
            "sample_hard_negatives: a row shares its image id with every other row, so it has "
            "no negative; batch captions of more than one image"
        )
    weights = (F.softmax(similarity.float(), dim=1) + floor).masked_fill(same, 0.0)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def itm_pairs(
    image_tokens: Tensor, tokens: Tensor, negative_texts: Tensor, negative_images: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The ITM batch: ``(3 * batch)`` image tokens, text tokens and labels (1: match): the
    positive pairs, then each image with its negative text, then each text with its negative
    image."""
    batch = tokens.shape[0]
    images = torch.cat([image_tokens, image_tokens, image_tokens[negative_images]])
    texts = torch.cat([tokens, tokens[negative_texts], tokens])
    labels = torch.cat(
        [torch.ones(batch, dtype=torch.long), torch.zeros(2 * batch, dtype=torch.long)]
    ).to(tokens.device)
    return images, texts, labels


def itm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the ITM head's ``(pairs, 2)`` logits."""
    return F.cross_entropy(logits.float(), labels)


def lm_targets(tokens: Tensor, prompt_length: int = 0, pad_id: int = 0) -> Tensor:
    """The decoder's targets: `tokens` with the padding and the first `prompt_length` tokens
    (the start token and the prompt words, e.g. 4 for "[DEC] a picture of") set to
    `IGNORE`."""
    targets = tokens.masked_fill(tokens == pad_id, IGNORE)
    targets[:, :prompt_length] = IGNORE
    return targets


def lm_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.1) -> Tensor:
    """Next-token cross-entropy: ``logits[:, :-1]`` against ``targets[:, 1:]`` (from
    `lm_targets`), mean over the targets not ignored. BLIP smooths the labels by 0.1."""
    vocab = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, vocab).float(),
        targets[:, 1:].reshape(-1),
        ignore_index=IGNORE,
        label_smoothing=label_smoothing,
    )
