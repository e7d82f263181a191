"""Contrastive losses for image-text training: CLIP's softmax InfoNCE and SigLIP's sigmoid loss.

Distributed training: the ONE way
---------------------------------
With W ranks of B rows each, mmcl's losses equal the single-process loss on the concatenated
global batch of N = W*B rows, and so do the gradients after DistributedDataParallel (DDP)
averages them. Each rank gathers features from every rank *with gradient*
(`all_gather_with_grad`) and scores only its own B rows against all N columns, with labels
offset by rank*B. The value it returns, L_r, is the mean over its own rows, so the global loss
is the mean of the per-rank values: L = (1/W) * sum_r L_r (all-reduce AVG it for logging).
The gather's backward sums the gradient of the gathered features over ranks, so rank r's
features receive sum_s dL_s/dx_r = W * dL/dx_r: the full global-batch gradient, times W,
including the terms from the other ranks' losses, where our rows are negatives. DDP divides
parameter gradients by W when it averages them, which cancels that factor exactly; the
temperature (and SigLIP's bias), replicated on every rank, gets dL_r/dt on rank r, whose
average over ranks is dL/dt. Nothing to configure: "local loss" (each rank scores only its
rows, B*N logits instead of N*N) and "gather with grad" (the gathered features carry gradient
back to their owners) are both always on. Gathering without gradient, or a gather whose
backward keeps only the local loss's gradient, drops the cross-rank terms and is not exact.
Without DDP, average the gradients yourself (`mmcl.train.distributed.average_gradients`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmcl.train.distributed import all_gather_with_grad, rank


class ClipLoss(nn.Module):
    """CLIP's symmetric InfoNCE loss (Radford et al. 2021, Figure 3's pseudocode).

    loss = (CE(t * I @ T.T, labels) + CE(t * T @ I.T, labels)) / 2, with L2-normalised image
    features I, text features T, temperature (logit scale) t and the matching pairs on the
    diagonal. `logit_scale` is the multiplier t itself (the model's `exp()`'d, clamped scale).
    Distributed: see the module docstring; the mean over ranks of the returned value is the
    loss of the global batch and DDP-averaged gradients are exact.

    >>> import torch
    >>> from torch.nn import functional as F
    >>> features = F.normalize(torch.randn(4, 8), dim=-1)
    >>> loss = ClipLoss()(features, features, torch.tensor(100.0))  # perfect pairs
    >>> bool(loss < 1e-3)
    True
    """

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> Tensor:
        local_batch = image_features.shape[0]
        all_images = all_gather_with_grad(image_features)
        all_texts = all_gather_with_grad(text_features)
        # Our row i matches global column rank*B + i.
        labels = torch.arange(local_batch, device=image_features.device) + rank() * local_batch
        logits_per_image = logit_scale * image_features @ all_texts.T
        logits_per_text = logit_scale * text_features @ all_images.T
        return (
            F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
        ) / 2


class SigLipLoss(nn.Module):
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023, Algorithm 1).

    logits = t * I @ T.T + b; labels z = +1 on the matching pairs (the diagonal), -1 elsewhere;
    loss = -sum_ij log sigmoid(z_ij * logits_ij) / |B|: every pair is an independent binary
    classification, and the sum is divided by the batch size (the paper's normalisation, not
    by the number of pairs). `logit_scale` is the multiplier t = exp(t') and `logit_bias` is b;
    the paper starts from t' = log 10, b = -10 (`siglip_init`).

    Distributed: each rank scores its own images against the texts of every rank (gathered
    with gradient) and divides by its local batch size; as for `ClipLoss`, the mean over ranks
    is the global loss and DDP-averaged gradients are exact (see the module docstring). An
    all-gather replaces the paper's ring exchange of text chunks: same result, more memory.

    >>> import torch
    >>> from torch.nn import functional as F
    >>> features = F.normalize(torch.randn(4, 8), dim=-1)
    >>> scale, bias = siglip_init()
    >>> loss = SigLipLoss()(features, features, torch.tensor(scale).exp(), torch.tensor(bias))
    >>> loss.shape
    torch.Size([])
    """

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor,
    ) -> Tensor:
        local_batch = image_features.shape[0]
        all_texts = all_gather_with_grad(text_features)
        logits = logit_scale * image_features @ all_texts.T + logit_bias
        labels = torch.full_like(logits, -1.0)
        labels.diagonal(offset=rank() * local_batch).fill_(1.0)  # our row i <-> column rank*B + i
        return -F.logsigmoid(labels * logits).sum() / local_batch


class SigLipInit(NamedTuple):
    """Initial values of SigLIP's learnable parameters: the log temperature t' and bias b."""

    logit_scale: float
    logit_bias: float


def siglip_init() -> SigLipInit:
    """The paper's initialisation (Zhai et al. 2023): t' = log 10, b = -10.

    The bias starts very negative so that the many negative pairs do not dominate the first
    steps. Store t' as the parameter and pass `exp(t')` to `SigLipLoss`.

    >>> import torch
    >>> scale, bias = siglip_init()
    >>> logit_scale = torch.nn.Parameter(torch.tensor(scale))  # log space
    >>> logit_bias = torch.nn.Parameter(torch.tensor(bias))
    >>> round(logit_scale.exp().item(), 6), logit_bias.item()
    (10.0, -10.0)
    """
    return SigLipInit(logit_scale=math.log(10.0), logit_bias=-10.0)


def caption_loss(logits: Tensor, tokens: Tensor, pad_id: int = 0) -> Tensor:
    """Next-token cross-entropy of a captioner (CoCa's, BLIP's language-model loss).

    Position i of ``logits`` ``(batch, length, vocab)`` predicts token i + 1 of ``tokens``
    ``(batch, length)``: ``logits[:, :-1]`` against ``tokens[:, 1:]``. Targets equal to
    `pad_id` are ignored, and the mean is over the remaining tokens of the whole batch (as
    open_clip's `CoCaLoss`, whose pad id 0 is also CLIP's token "!": those are ignored too).
    `logits` may cover fewer positions than `tokens` when the rest is padding (CoCa's forward
    stops at the longest text). Distributed, each rank averages its own tokens.

    >>> import torch
    >>> logits = torch.zeros(1, 3, 5)  # uniform over 5 tokens
    >>> round(caption_loss(logits, torch.tensor([[4, 2, 0]])).item(), 4)  # one target: 2
    1.6094
    """
    length, vocab = logits.shape[1], logits.shape[2]
    targets = tokens[:, 1:length]  # logits may stop early, where the rest is padding
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, vocab).float(), targets.reshape(-1), ignore_index=pad_id
    )


class CoCaLoss(nn.Module):
    """CoCa's objective (Yu et al. 2022, eq. 4): ``contrastive_weight * ClipLoss +
    caption_weight * caption_loss``; the weights default to open_clip's training defaults
    (1 and 2). Returns the two weighted terms."""

    def __init__(self, caption_weight: float = 2.0, contrastive_weight: float = 1.0):
        super().__init__()
        self.caption_weight, self.contrastive_weight = caption_weight, contrastive_weight
        self.clip_loss = ClipLoss()

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        caption_logits: Tensor,
        tokens: Tensor,
        pad_id: int = 0,
    ) -> dict[str, Tensor]:
        contrastive = self.clip_loss(image_features, text_features, logit_scale)
        return {
            "contrastive": self.contrastive_weight * contrastive,
            "caption": self.caption_weight * caption_loss(caption_logits, tokens, pad_id),
        }
