"""L2P (Wang et al. 2022, "Learning to Prompt for Continual Learning"): a frozen image tower
that chooses its own prompts from a learned pool.

Every image is first encoded by the frozen tower without prompts; that feature is the query.
The ``top_n`` prompts of a :class:`mmcl.nn.prompts.PromptPool` whose keys are most
cosine-similar to the query are inserted after the class token (after the patch and position
embeddings), and the image feature is the class token's output as usual. Nothing tells the
model which task an image comes from: similar images select similar prompts, which is what
lets the pool hold knowledge of old tasks while new ones use other prompts. Training updates
only the pool: the prompts through the classification loss, the keys through the matching
loss ``key_weight * mean over images of sum over selected i of (1 - cos(query, key_i))``.

Classes are scored against CLIP's zero-shot text classifier (the frozen text tower with the
stream's prompt templates) where the paper trains a linear head; that keeps the text side
shared by all tasks, like the rest of this package's methods.

How it plugs in: ``setup`` freezes the model and registers the pool on it (``model.l2p_pool``)
so it is optimised, checkpointed and resumed with the model's state. ``image_features``
prompts the images and returns their features with the batch's matching loss; the
classification objective adds that loss to its own, and evaluation scores the same prompted
features, so the model itself is never hooked and no loss is kept between calls.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from mmcl.continual.methods.base import Method
from mmcl.models.vision_transformer import VisionTransformer
from mmcl.nn.prompts import PromptPool


class L2P(Method):
    name = "l2p"
    needs_text_tower = True

    def __init__(
        self,
        pool_size: int = 10,
        prompt_length: int = 5,
        top_n: int = 5,
        key_weight: float = 0.1,
    ):
        # Defaults: the paper's pool of M = 10 prompts of length 5, N = 5 chosen per image;
        # key_weight as in the widely used PyTorch reproduction (its pull_constraint_coeff).
        for name, value in (("pool_size", pool_size), ("prompt_length", prompt_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"l2p: {name} must be a positive integer, got {value!r}")
        if isinstance(top_n, bool) or not isinstance(top_n, int) or not 1 <= top_n <= pool_size:
            raise ValueError(f"l2p: top_n must be an integer in [1, pool_size={pool_size}]")
        if not (isinstance(key_weight, int | float) and math.isfinite(key_weight)):
            raise ValueError(f"l2p: key_weight must be a finite number, got {key_weight!r}")
        if key_weight < 0:
            raise ValueError(f"l2p: key_weight must be >= 0, got {key_weight}")
        self.pool_size = pool_size
        self.prompt_length = prompt_length
        self.top_n = top_n
        self.key_weight = float(key_weight)

    # --- hooks ---------------------------------------------------------------------------------

    def setup(self, model, run) -> None:
        visual = getattr(model, "visual", None)
        if not isinstance(visual, VisionTransformer):
            raise ValueError(
                f"l2p: inserts prompts into a ViT image tower, but this model's is "
                f"{type(visual).__name__}; choose a ViT model"
            )
        model.requires_grad_(False)
        pool = PromptPool(
            self.pool_size,
            self.prompt_length,
            width=visual.class_embedding.shape[-1],
            key_dim=visual.proj.shape[1],  # the query is the tower's output feature
            top_n=self.top_n,
        )
        model.l2p_pool = pool.to(visual.proj.device)

    def before_task(self, task, model, run) -> None:
        model.l2p_pool.requires_grad_(True)

    def image_features(self, model, images):
        prompts, matching = _choose(model.l2p_pool, model.visual, images)
        features = model.visual(images, prompt_embeddings=prompts)
        normalised = F.normalize(features.float(), dim=-1).to(features.dtype)
        return normalised, {"key_matching": self.key_weight * matching}

    def __repr__(self) -> str:
        return (
            f"L2P(pool_size={self.pool_size}, prompt_length={self.prompt_length}, "
            f"top_n={self.top_n}, key_weight={self.key_weight})"
        )


def _choose(pool: PromptPool, visual, images: torch.Tensor):
    """Prompts for each image, chosen by its unprompted feature, and the matching loss."""
    with torch.no_grad():
        query = visual(images, prompt_embeddings=None)
    return pool(query)
