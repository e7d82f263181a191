"""BLIP-2 stage 1's losses (Li et al. 2023, section 3.2) over `QFormerPretrainer`'s outputs.

- ITC: the similarity of image i and text j is the maximum over i's queries of the query
  feature's dot product with text j's feature (`itc_similarity`); InfoNCE both ways.
- ITM: hard negatives drawn from those similarities as in ALBEF, excluding pairs that share
  an image id (`mmcl.train.blip_losses.sample_hard_negatives`); the score is the head's mean
  over the query outputs (`QFormerPretrainer.itm_logits`).
- LM: next-token cross-entropy of the image-grounded text generation
  (`mmcl.train.blip_losses.lm_loss`).

Stage 2 (`stage2_loss`): the frozen LM's next-token cross-entropy on the text after the soft
prompts, only the Q-Former and the projection learning.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from mmcl.train.blip_losses import (
    IGNORE,
    itm_loss,
    itm_pairs,
    lm_loss,
    lm_targets,
    sample_hard_negatives,
)


def itc_similarity(query_features: Tensor, text_features: Tensor) -> Tensor:
    """``(images, texts)``: for image i and text j, the largest dot product of one of image i's
    query features ``(images, Q, dim)`` with text j's feature ``(texts, dim)``."""
    return torch.einsum("iqd,jd->ijq", query_features, text_features).amax(dim=-1)


def itc_loss(query_features: Tensor, text_features: Tensor, temperature: Tensor | float) -> Tensor:
    """Symmetric InfoNCE over `itc_similarity` / `temperature`, pair i matching pair i."""
    logits = itc_similarity(query_features, text_features).float() / temperature
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def stage1_losses(
    model,
    image_features: Tensor,
    tokens: Tensor,
    image_ids: Tensor | None = None,
    dec_id: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The three terms for one batch: ``{"itc", "itm", "lm"}`` (the paper sums them).

    `image_ids` ``(batch,)``: captions of one image share an id and are never each other's
    negatives. `dec_id`: replaces the first token for the generation pass ([DEC])."""
    temperature = model.temperature.clamp(0.001, 0.5)
    query_features, text_features = model.itc_features(image_features, tokens)
    similarity = itc_similarity(query_features, text_features)
    negative_texts, negative_images = sample_hard_negatives(
        similarity / temperature, image_ids, generator
    )
    images, texts, labels = itm_pairs(image_features, tokens, negative_texts, negative_images)
    caption = tokens.clone()
    if dec_id is not None:
        caption[:, 0] = dec_id
    targets = lm_targets(caption, pad_id=model.config.pad_id)
    return {
        "itc": itc_loss(query_features, text_features, temperature),
        "itm": itm_loss(model.itm_logits(images, texts), labels),
        "lm": lm_loss(model.lm_logits(image_features, caption), targets),
    }


def stage2_loss(
    model,
    images: Tensor,
    input_ids: Tensor,
    labels: Tensor,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """BLIP-2 stage 2: the LM's next-token cross-entropy over `labels` ``(batch, text)`` (the
    targets of `input_ids`' positions, `IGNORE` where no loss is taken: prompts, padding,
    image placeholders). The soft prompts before the text take no loss."""
    logits = model(images, input_ids, attention_mask)[:, -labels.shape[1] :]
    vocab = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, vocab).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE,
    )
