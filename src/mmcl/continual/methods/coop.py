"""CoOp (Zhou et al. 2022, "Learning to Prompt for Vision-Language Models"): keep CLIP frozen
and learn the words of the prompt instead.

The text input of a class is ``[SOT] ctx_1 .. ctx_M classname . [EOT]``, where the ctx_i are
learned vectors in the token-embedding space (:class:`mmcl.nn.prompts.TextContext`) that
replace a hand-written template. Initialised from the token embeddings of "a photo of a", the
context reproduces that prompt exactly, so training starts from the zero-shot classifier of
that template. The contexts are shared by all classes; with ``per_task=True`` every task gets
its own, trained on that task and then frozen, and a class is always prompted with the context
of the task that introduced it.

How it plugs in, without the model or the engine knowing about it:

- ``setup`` freezes the model and registers the contexts on it (``model.coop_contexts``), so
  they are optimised, checkpointed and resumed with the model's own state.
- ``class_features`` embeds the classes with their learned contexts: the tokens of
  "classname." after the context, given to the text tower as ``prefix_embeddings``. The
  classification objective (training, where its cross-entropy trains the context) and
  evaluation both take the class features from it, so the model itself is never hooked.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mmcl.continual import classes
from mmcl.continual.methods.base import Method
from mmcl.io.tokenizer import get_tokenizer, tokenize
from mmcl.models.text_transformer import TextTransformer
from mmcl.nn.prompts import TextContext

DEFAULT_LENGTH = 16  # the paper's context length when it starts from random vectors


class CoOp(Method):
    name = "coop"
    needs_text_tower = True

    def __init__(
        self,
        context_init: str | None = "a photo of a",
        n_ctx: int | None = None,
        per_task: bool = False,
    ):
        if not isinstance(per_task, bool):
            raise ValueError(f"coop: per_task must be True or False, got {per_task!r}")
        self.phrase_ids, self.n_ctx = context_phrase("coop", context_init, n_ctx)
        self.context_init = context_init
        self.per_task = per_task
        self.owner: dict[int, int] = {}  # stream label -> index of the context that prompts it

    # --- hooks ---------------------------------------------------------------------------------

    def setup(self, model, run) -> None:
        if not isinstance(getattr(model, "text", None), TextTransformer):
            raise ValueError("coop: needs a CLIP model with mmcl's causal text tower")
        if self.n_ctx + 4 > model.text.context_length:  # start, a name, the full stop, end
            raise ValueError(
                f"coop: {self.n_ctx} context vectors leave no room for a class name in the "
                f"text tower's context length {model.text.context_length}"
            )
        scenario = run.scenario
        if self.per_task and scenario.kind == "domain-incremental":
            raise ValueError(
                "coop: per_task contexts need classes that belong to one task, but every task "
                "of a domain-incremental stream shares its classes; use per_task=False"
            )
        self.owner = {}
        for index in range(len(scenario)):
            for label in classes.task_classes(scenario, index).labels:
                self.owner.setdefault(label, index if self.per_task else 0)
        model.requires_grad_(False)
        count = len(scenario) if self.per_task else 1
        contexts = nn.ModuleList(
            phrase_context(model, self.phrase_ids, self.n_ctx) for _ in range(count)
        )
        model.coop_contexts = contexts.to(model.text.token_embedding.weight.device)

    def before_task(self, task, model, run) -> None:
        training = task.index if self.per_task else 0
        for index, context in enumerate(model.coop_contexts):  # earlier ones stay as learned
            context.requires_grad_(index == training)

    def class_features(self, model, space):
        return self.text_features(model, space.names, space.labels), {}

    # --- the learned prompts -------------------------------------------------------------------

    def text_features(self, model, names, labels):
        """Normalised float32 embeddings ``(len(names), embed_dim)`` of classes prompted with
        their learned contexts (``labels`` are stream labels, which choose the context)."""
        unknown = [label for label in labels if label not in self.owner]
        if unknown:
            raise ValueError(f"coop: labels {unknown} are not classes of the run's stream")
        contexts = model.coop_contexts
        device = contexts[0].embeddings.device
        prefix = _stacked(contexts)[[self.owner[label] for label in labels]]
        features = model.text(class_tokens(names).to(device), prefix_embeddings=prefix)
        return F.normalize(features.float(), dim=-1)

    def __repr__(self) -> str:
        init = repr(self.context_init)
        return f"CoOp(context_init={init}, n_ctx={self.n_ctx}, per_task={self.per_task})"


def context_phrase(method: str, context_init: str | None, n_ctx: int | None):
    """``(phrase token ids, context length)`` from a method's `context_init` / `n_ctx`
    arguments: the phrase's tokens fix the length; without a phrase, `n_ctx` (default 16)
    random vectors."""
    if context_init is not None and not isinstance(context_init, str):
        raise ValueError(f"{method}: context_init must be a phrase or None, got {context_init!r}")
    if n_ctx is not None and (isinstance(n_ctx, bool) or not isinstance(n_ctx, int)):
        raise ValueError(f"{method}: n_ctx must be a positive integer, got {n_ctx!r}")
    if n_ctx is not None and n_ctx < 1:
        raise ValueError(f"{method}: n_ctx must be a positive integer, got {n_ctx}")
    if context_init is None:
        return [], n_ctx or DEFAULT_LENGTH
    ids = get_tokenizer().encode(context_init)
    if not ids:
        raise ValueError(f"{method}: context_init {context_init!r} has no tokens")
    if n_ctx is not None and n_ctx != len(ids):
        raise ValueError(
            f"{method}: context_init {context_init!r} is {len(ids)} tokens, but n_ctx is "
            f"{n_ctx}; leave n_ctx out to use the phrase's length"
        )
    return ids, len(ids)


def phrase_context(model, phrase_ids: list[int], n_ctx: int) -> TextContext:
    """A learned text context for `model`'s text tower, starting as the phrase (if any)."""
    width = model.text.token_embedding.embedding_dim
    init = None
    if phrase_ids:
        init = model.text.token_embedding.weight[phrase_ids].detach().float().cpu()
    return TextContext(n_ctx, width, init)


def class_tokens(names) -> torch.Tensor:
    """CoOp's text after the context: the class name and a full stop, as tokens."""
    return tokenize([f"{name}." for name in names])


def _stacked(contexts: nn.ModuleList):
    return torch.stack([context() for context in contexts])  # (contexts, length, width)
