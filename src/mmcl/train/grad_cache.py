"""Gradient caching: a large contrastive batch's exact gradients on a small memory budget.

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup".
A contrastive loss couples every example with every other, so it cannot be split into
per-chunk losses; but the encoders process each example independently. The loss's gradient
therefore factorises through the features (the paper's Eq. 3-4):

    dL/dtheta = sum_i dL/df_i * df_i/dtheta

Step 1 embeds the batch chunk by chunk without a graph; step 2 computes the loss on all the
features and caches u_i = dL/df_i (the "representation gradient"); step 3 re-embeds each chunk
with a graph and backpropagates u_i through it. Peak memory is one chunk's activations plus
the features, and the parameter gradients equal the plain full-batch computation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmcl.models.clip import LOGIT_SCALE_MAX

LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def grad_cache_step(
    model: nn.Module,
    images: Tensor,
    tokens: Tensor,
    loss_fn: LossFn,
    chunk_size: int,
) -> Tensor:
    """Accumulate into `.grad` the gradients of `loss_fn` on the whole batch, chunk by chunk.

    `model` needs `encode_image(x, normalize=True)`, `encode_text(t, normalize=True)` and a
    `logit_scale` parameter (log space, like `mmcl.CLIP`); `loss_fn(image_features,
    text_features, logit_scale)` receives the normalised features of the whole batch and the
    scale `exp(logit_scale).clamp(max=100)`, like the model's forward. Parameters that
    `loss_fn` closes over (SigLIP's bias) get their gradients too. Returns the detached loss;
    call `optimizer.step()` afterwards as usual (gradients accumulate, so zero them before).

    Exactness notes:
    - Random layers (dropout) replay the same masks: the RNG state is saved before each chunk's
      no-grad pass and restored before its re-embedding, then left as after the first pass.
    - Buffers (BatchNorm running statistics) are restored after the no-grad pass, so they are
      updated once per step. In train mode BatchNorm normalises by *chunk* statistics, which
      differs from the full batch; use eval-mode BatchNorm (or a model without it) for exact
      equality.
    - Distributed losses (`ClipLoss`, `SigLipLoss`) work unchanged: their gather runs in step
      2 on every rank. Pass the bare module, not the `DistributedDataParallel` wrapper (DDP
      only synchronises a backward that follows its own forward), and then average the
      gradients with `mmcl.train.distributed.average_gradients(model.parameters())`.

    >>> import mmcl, torch
    >>> from mmcl.train.losses import ClipLoss
    >>> model = mmcl.create_model("tiny-vit")
    >>> images = torch.randn(6, 3, 32, 32)
    >>> tokens = mmcl.tokenize([f"caption {i}" for i in range(6)])
    >>> loss = grad_cache_step(model, images, tokens, ClipLoss(), chunk_size=4)
    >>> loss.requires_grad, model.logit_scale.grad is not None
    (False, True)
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if images.shape[0] != tokens.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {tokens.shape[0]} captions")
    chunks = list(zip(images.split(chunk_size), tokens.split(chunk_size), strict=True))

    # Step 1: features of the whole batch, no graph kept.
    buffers = _BufferSnapshot.capture(model)
    rng_states: list[_RngState] = []
    image_features, text_features = [], []
    with torch.no_grad():
        for image_chunk, token_chunk in chunks:
            rng_states.append(_RngState.capture())
            image_features.append(model.encode_image(image_chunk, normalize=True))
            text_features.append(model.encode_text(token_chunk, normalize=True))
    buffers.restore()
    rng_after_forward = _RngState.capture()

    # Step 2: the loss on the whole batch; cache dL/df on leaf copies of the features. The
    # logit scale keeps its graph, so its gradient (and loss_fn's own parameters') lands here.
    image_leaf = torch.cat(image_features).requires_grad_()
    text_leaf = torch.cat(text_features).requires_grad_()
    logit_scale = model.logit_scale.exp().clamp(max=LOGIT_SCALE_MAX)
    loss = loss_fn(image_leaf, text_leaf, logit_scale)
    loss.backward()

    # Step 3: re-embed each chunk with a graph and push the cached gradients through it.
    image_grads = _grad_or_zeros(image_leaf).split(chunk_size)
    text_grads = _grad_or_zeros(text_leaf).split(chunk_size)
    for (image_chunk, token_chunk), rng, image_grad, text_grad in zip(
        chunks, rng_states, image_grads, text_grads, strict=True
    ):
        rng.restore()
        chunk_image_features = model.encode_image(image_chunk, normalize=True)
        chunk_text_features = model.encode_text(token_chunk, normalize=True)
        torch.autograd.backward(
            [chunk_image_features, chunk_text_features], [image_grad, text_grad]
        )
    rng_after_forward.restore()
    return loss.detach()


def _grad_or_zeros(leaf: Tensor) -> Tensor:
    # A loss that ignores one modality leaves its grad unset.
    return leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)


@dataclass
class _RngState:
    """The CPU and (already initialised) CUDA generators' states, as torch.utils.checkpoint
    saves them to replay dropout."""

    cpu: Tensor
    cuda: list[Tensor] | None

    @classmethod
    def capture(cls) -> _RngState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


@dataclass
class _BufferSnapshot:
    """Copies of a module's buffers, to undo the no-grad pass's BatchNorm statistics updates."""

    buffers: list[tuple[Tensor, Tensor]]

    @classmethod
    def capture(cls, model: nn.Module) -> _BufferSnapshot:
        return cls([(buffer, buffer.clone()) for buffer in model.buffers()])

    def restore(self) -> None:
        with torch.no_grad():
            for buffer, saved in self.buffers:
                buffer.copy_(saved)
