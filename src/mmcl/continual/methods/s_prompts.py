"""S-Prompts, S-liPrompts (Wang et al. 2022, "S-Prompts Learning with Pre-trained Transformers:
An Occam's Razor for Domain Incremental Learning", NeurIPS): one set of language and image
prompts per domain, learned independently, and the domain chosen at test time by the nearest
key.

Every task of the stream is a domain with its own prompts: ``prompt_length`` image prompts
inserted after the image tower's class token, and a CoOp context (``[SOT] ctx_1 .. ctx_M
classname . [EOT]``, `mmcl.continual.methods.coop`) started from "a photo of a". While task s
trains, only domain s's prompts train and both towers use them; other domains' prompts are
never touched, so nothing learned earlier is overwritten.

Keys: when task s ends, the frozen, unprompted image tower embeds the task's training images
and k-means (`centres` centres, Lloyd's iterations from a seeded choice of starting points)
summarises them; the centres are domain s's keys. At test time each image's unprompted feature
goes to its nearest key (Euclidean distance between normalised features, so cosine order), and
the image is classified with that key's domain prompts on both towers. Before any task has
ended there are no keys and the model is the zero-shot CLIP it started as.

How it plugs in: ``setup`` freezes the model and registers the prompts on it
(``model.s_prompts``: one entry per task) so they are checkpointed with the model; the keys are
the method's state. Training takes the features from ``image_features`` / ``class_features``
(the current domain's prompts); evaluation goes through ``predict``, which routes every image.

Differences from the paper:
- The defaults (10 image prompt tokens, a context started from "a photo of a", 5 centres per
  domain) are this library's choices, not tuned to the paper's data; k-means is plain Lloyd's
  (`kmeans` below, 20 iterations at most from seeded starting points).
- Keys come from the image tower of the model being prompted, before any prompt; the paper
  keys its domains with a frozen pre-trained image encoder too, which here is the same tower.
- Any stream is accepted: a class-incremental one makes every task a "domain", and the nearest
  key then guesses the task.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from mmcl.continual.methods.base import Method
from mmcl.continual.methods.coop import class_tokens, context_phrase, phrase_context
from mmcl.models.text_transformer import TextTransformer
from mmcl.models.vision_transformer import VisionTransformer

PROMPT_INIT_STD = 0.02
KMEANS_ITERATIONS = 20


class DomainPrompts(nn.Module):
    """One domain's prompts: ``image_embeddings`` ``(length, image width)`` and a text context."""

    def __init__(self, context: nn.Module, length: int, image_width: int):
        super().__init__()
        self.context = context
        self.image_embeddings = nn.Parameter(torch.randn(length, image_width) * PROMPT_INIT_STD)


class SPrompts(Method):
    name = "s_prompts"
    needs_text_tower = True

    def __init__(
        self,
        prompt_length: int = 10,
        centres: int = 5,
        context_init: str | None = "a photo of a",
        n_ctx: int | None = None,
    ):
        for argument, value in (("prompt_length", prompt_length), ("centres", centres)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"s_prompts: {argument} must be a positive integer, got {value!r}")
        self.phrase_ids, self.n_ctx = context_phrase("s_prompts", context_init, n_ctx)
        self.prompt_length = prompt_length
        self.centres = centres
        self.context_init = context_init
        self.domain: int | None = None  # the domain being trained; None: route by key
        self.keys: list[torch.Tensor] = []  # per trained domain: (centres, embed_dim)
        self.seed = 0

    # --- hooks ---------------------------------------------------------------------------------

    def setup(self, model, run) -> None:
        visual = getattr(model, "visual", None)
        if not isinstance(visual, VisionTransformer):
            raise ValueError(
                f"s_prompts: inserts prompts into a ViT image tower, but this model's is "
                f"{type(visual).__name__}; choose a ViT model"
            )
        if not isinstance(getattr(model, "text", None), TextTransformer):
            raise ValueError("s_prompts: needs a CLIP model with mmcl's causal text tower")
        if self.n_ctx + 4 > model.text.context_length:
            raise ValueError(
                f"s_prompts: {self.n_ctx} context vectors leave no room for a class name in "
                f"the text tower's context length {model.text.context_length}"
            )
        model.requires_grad_(False)
        width = visual.class_embedding.shape[-1]
        domains = nn.ModuleList(
            DomainPrompts(
                phrase_context(model, self.phrase_ids, self.n_ctx), self.prompt_length, width
            )
            for _ in range(len(run.scenario))
        )
        model.s_prompts = domains.to(visual.class_embedding.device)
        self.domain, self.keys, self.seed = None, [], run.config.seed

    def before_task(self, task, model, run) -> None:
        self.domain = task.index
        self.keys = self.keys[: task.index]  # a resumed task recomputes its own keys
        for index, prompts in enumerate(model.s_prompts):
            prompts.requires_grad_(index == task.index)

    def image_features(self, model, images):
        if self.domain is None:
            return None
        return self.prompted_images(model, images, self.domain), {}

    def class_features(self, model, space):
        if self.domain is None:
            return None
        return self.prompted_classes(model, space.names, self.domain), {}

    def after_task(self, task, model, run) -> None:
        self.domain = None
        model.s_prompts[task.index].requires_grad_(False)
        features = _frozen_features(model, run.stream_data(task.index))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + task.index)
        self.keys.append(kmeans(features, self.centres, generator).cpu())

    def predict(self, model, images, space, run):
        if self.domain is not None or not self.keys:
            return None  # before any key exists: the zero-shot classifier
        domains = self.route(model, images)
        logits = torch.empty(len(images), len(space), device=images.device)
        for domain in domains.unique().tolist():
            rows = domains == domain
            image = self.prompted_images(model, images[rows], domain).float()
            text = self.prompted_classes(model, space.names, domain)
            logits[rows] = image @ text.T
        return logits

    def state_dict(self):
        return {"keys": list(self.keys)}

    def load_state_dict(self, state) -> None:
        self.keys = [key.cpu() for key in state.get("keys", [])]

    # --- prompts and routing -------------------------------------------------------------------

    @torch.no_grad()
    def route(self, model, images) -> torch.Tensor:
        """The domain of each image: the owner of its nearest key."""
        query = model.encode_image(images, normalize=True).float()
        keys = torch.cat(self.keys).to(query.device)  # (domains * centres, dim)
        owners = torch.arange(len(self.keys), device=query.device).repeat_interleave(
            torch.tensor([len(k) for k in self.keys], device=query.device)
        )
        return owners[torch.cdist(query, keys).argmin(dim=1)]

    def prompted_images(self, model, images, domain: int) -> torch.Tensor:
        prompts = model.s_prompts[domain].image_embeddings
        features = model.visual(images, prompt_embeddings=prompts)
        return F.normalize(features.float(), dim=-1).to(features.dtype)

    def prompted_classes(self, model, names, domain: int) -> torch.Tensor:
        context = model.s_prompts[domain].context
        tokens = class_tokens(names).to(context.embeddings.device)
        features = model.text(tokens, prefix_embeddings=context())
        return F.normalize(features.float(), dim=-1)

    def __repr__(self) -> str:
        return (
            f"SPrompts(prompt_length={self.prompt_length}, centres={self.centres}, "
            f"context_init={self.context_init!r}, n_ctx={self.n_ctx})"
        )


@torch.no_grad()
def _frozen_features(model, data, batch_size: int = 256) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        parts = [
            model.encode_image(images.to(device), normalize=True).float()
            for images, _ in DataLoader(data, batch_size=batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def kmeans(
    points: torch.Tensor, k: int, generator: torch.Generator, iterations: int = KMEANS_ITERATIONS
) -> torch.Tensor:
    """``(min(k, len(points)), dim)`` centres by Lloyd's algorithm, started from distinct
    points drawn with `generator`; a centre that loses all its points keeps its place."""
    if points.dim() != 2 or not len(points):
        raise ValueError(f"k-means needs a (points, dim) matrix, got {tuple(points.shape)}")
    k = min(k, len(points))
    start = torch.randperm(len(points), generator=generator)[:k].to(points.device)
    centres = points[start].clone()
    for _ in range(iterations):
        nearest = torch.cdist(points, centres).argmin(dim=1)
        moved = centres.clone()
        for c in range(k):
            members = points[nearest == c]
            if len(members):
                moved[c] = members.mean(dim=0)
        if torch.equal(moved, centres):
            break
        centres = moved
    return centres
