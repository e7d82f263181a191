"""Learnable prompts: soft text context (CoOp) and a key-matched prompt pool (L2P).

Both are plain parameter holders; a tower consumes them through its own entry point
(``TextTransformer.forward(tokens, prefix_embeddings=...)``,
``VisionTransformer.forward(images, prompt_embeddings=...)``), so the towers never know who
learned the vectors or why.

:class:`TextContext` (Zhou et al. 2022, "Learning to Prompt for Vision-Language Models"):
``length`` vectors in the text tower's token-embedding space that stand in for a prompt's
words. Initialised from the token embeddings of a phrase such as "a photo of a", the context
reproduces that hand-written prompt exactly; otherwise the vectors start as N(0, 0.02^2).

:class:`PromptPool` (Wang et al. 2022, "Learning to Prompt for Continual Learning"): a pool
of ``pool_size`` prompts, each ``prompt_length`` tokens long, with one learnable key per
prompt. An input's query (a frozen feature of it) selects the ``top_n`` prompts whose keys are
most cosine-similar to it, so related inputs share prompts without a task identity; the
matching loss ``sum over selected i of (1 - cos(query, key_i))``, averaged over the batch,
pulls the selected keys towards the queries that chose them.

The learnable tensors are named ``*embeddings`` where they live in a tower's token space, so
the optimiser's rule of not decaying embeddings applies to them too.

>>> pool = PromptPool(pool_size=4, prompt_length=2, width=8, key_dim=3, top_n=2)
>>> prompts, loss = pool(torch.randn(5, 3))
>>> prompts.shape, loss.shape
(torch.Size([5, 4, 8]), torch.Size([]))
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

CONTEXT_INIT_STD = 0.02  # CoOp's random initialisation


class TextContext(nn.Module):
    """``length`` learnable context vectors of size ``width``.

    ``init`` (``(length, width)``): starting values, e.g. the token embeddings of a phrase;
    without it the vectors are drawn from N(0, 0.02^2).
    """

    def __init__(self, length: int, width: int, init: torch.Tensor | None = None):
        super().__init__()
        _check_positive(length=length, width=width)
        if init is None:
            values = torch.randn(length, width) * CONTEXT_INIT_STD
        else:
            if tuple(init.shape) != (length, width):
                raise ValueError(
                    f"init must have shape ({length}, {width}), got {tuple(init.shape)}"
                )
            values = init.detach().clone().float()
        self.embeddings = nn.Parameter(values)

    @property
    def length(self) -> int:
        return self.embeddings.shape[0]

    def forward(self) -> torch.Tensor:
        return self.embeddings

    def extra_repr(self) -> str:
        return f"length={self.embeddings.shape[0]}, width={self.embeddings.shape[1]}"


class PromptPool(nn.Module):
    """``pool_size`` prompts of ``prompt_length`` tokens (``width`` wide) and their keys.

    ``forward(query)`` with ``query`` ``(batch, key_dim)`` returns the selected prompts of every
    input, ``(batch, top_n * prompt_length, width)`` in order of similarity, and the matching
    loss (a scalar that trains only the keys).
    """

    def __init__(self, pool_size: int, prompt_length: int, width: int, key_dim: int, top_n: int):
        super().__init__()
        _check_positive(
            pool_size=pool_size,
            prompt_length=prompt_length,
            width=width,
            key_dim=key_dim,
            top_n=top_n,
        )
        if top_n > pool_size:
            raise ValueError(f"top_n ({top_n}) cannot exceed pool_size ({pool_size})")
        self.top_n = top_n
        # Uniform in [-1, 1]: keys point every way at the start, so early queries spread
        # over the pool instead of all choosing the same few prompts.
        self.prompt_embeddings = nn.Parameter(
            torch.empty(pool_size, prompt_length, width).uniform_(-1, 1)
        )
        self.keys = nn.Parameter(torch.empty(pool_size, key_dim).uniform_(-1, 1))

    @property
    def pool_size(self) -> int:
        return self.keys.shape[0]

    def similarity(self, query: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``(batch, pool_size)`` between each query and each key."""
        if query.dim() != 2 or query.shape[1] != self.keys.shape[1]:
            raise ValueError(
                f"query must be (batch, {self.keys.shape[1]}), got {tuple(query.shape)}"
            )
        return F.normalize(query.float(), dim=-1) @ F.normalize(self.keys.float(), dim=-1).T

    @torch.no_grad()
    def select(self, query: torch.Tensor) -> torch.Tensor:
        """Indices ``(batch, top_n)`` of the most similar keys, most similar first."""
        return self.similarity(query).topk(self.top_n, dim=-1).indices

    def matching_loss(self, query: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of ``sum over selected i of (1 - cos(query, key_i))``."""
        chosen = self.similarity(query).gather(1, indices)
        return (1 - chosen).sum(dim=1).mean()

    def prompts(self, indices: torch.Tensor) -> torch.Tensor:
        """The prompts at ``indices`` ``(batch, n)``, concatenated: ``(batch, n * length, width)``."""
        picked = self.prompt_embeddings[indices]  # (batch, n, length, width)
        return picked.flatten(1, 2)

    def forward(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        query = query.detach()  # the query is a frozen feature: only the keys learn from it
        indices = self.select(query)
        return self.prompts(indices), self.matching_loss(query, indices)

    def extra_repr(self) -> str:
        pool, length, width = self.prompt_embeddings.shape
        return (
            f"pool_size={pool}, prompt_length={length}, width={width}, "
            f"key_dim={self.keys.shape[1]}, top_n={self.top_n}"
        )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
