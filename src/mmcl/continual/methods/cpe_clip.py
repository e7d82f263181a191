"""CPE-CLIP (D'Alessandro et al. 2023, "Multimodal Parameter-Efficient Few-Shot Class
Incremental Learning", ICCV workshops): learned prompts on both towers of a frozen CLIP, the
visual prompts computed from the language prompts.

The text input of a class is CoOp's ``[SOT] ctx_1 .. ctx_M classname . [EOT]``
(`mmcl.continual.methods.coop`), its context initialised from "a photo of a" so training starts
from that template's classifier. The image tower receives M visual prompts after its class
token, and they are not free parameters: each is a linear function of the language prompt at
the same position,

    visual_i = W ctx_i + b        (W: text width -> image width)

so the two towers are prompted in step and every gradient that reaches a visual prompt also
moves the language prompt it comes from. Only the context and (W, b) train; they are shared by
all tasks, so each task starts from where the last left them.

How it plugs in: ``setup`` freezes the model and registers the prompts on it
(``model.cpe_clip``), so they are optimised, checkpointed and resumed with the model's state;
``class_features`` and ``image_features`` give the prompted features to the classification
objective and to evaluation.

Differences from the paper:
- Prompts enter at the towers' inputs only: the towers' entry points take input prompts, not
  prompts for deeper layers as multimodal prompt learning can use.
- The paper's prompt regularisation across incremental sessions is not implemented: every task
  trains the shared prompts with the task's loss alone (compose with a regulariser, e.g.
  ``cpe_clip+ewc``, for one).
- The stream need not be few-shot; the number of training items is the stream's.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mmcl.continual.methods.base import Method
from mmcl.continual.methods.coop import class_tokens, context_phrase, phrase_context
from mmcl.models.text_transformer import TextTransformer
from mmcl.models.vision_transformer import VisionTransformer


class CoupledPrompts(nn.Module):
    """A language context ``(length, text width)`` and the linear map that makes the visual
    prompts ``(length, image width)`` from it."""

    def __init__(self, context: nn.Module, image_width: int):
        super().__init__()
        self.context = context
        self.to_visual = nn.Linear(context.embeddings.shape[1], image_width)

    def language(self) -> torch.Tensor:
        return self.context()

    def visual(self) -> torch.Tensor:
        return self.to_visual(self.context())


class CPECLIP(Method):
    name = "cpe_clip"
    needs_text_tower = True

    def __init__(self, context_init: str | None = "a photo of a", n_ctx: int | None = None):
        self.phrase_ids, self.n_ctx = context_phrase("cpe_clip", context_init, n_ctx)
        self.context_init = context_init

    def setup(self, model, run) -> None:
        visual = getattr(model, "visual", None)
        if not isinstance(visual, VisionTransformer):
            raise ValueError(
                f"cpe_clip: inserts prompts into a ViT image tower, but this model's is "
                f"{type(visual).__name__}; choose a ViT model"
            )
        if not isinstance(getattr(model, "text", None), TextTransformer):
            raise ValueError("cpe_clip: needs a CLIP model with mmcl's causal text tower")
        if self.n_ctx + 4 > model.text.context_length:  # start, a name, the full stop, end
            raise ValueError(
                f"cpe_clip: {self.n_ctx} context vectors leave no room for a class name in "
                f"the text tower's context length {model.text.context_length}"
            )
        model.requires_grad_(False)
        prompts = CoupledPrompts(
            phrase_context(model, self.phrase_ids, self.n_ctx), visual.class_embedding.shape[-1]
        )
        model.cpe_clip = prompts.to(visual.class_embedding.device)

    def before_task(self, task, model, run) -> None:
        model.cpe_clip.requires_grad_(True)

    def class_features(self, model, space):
        device = model.cpe_clip.to_visual.weight.device
        features = model.text(
            class_tokens(space.names).to(device), prefix_embeddings=model.cpe_clip.language()
        )
        return F.normalize(features.float(), dim=-1), {}

    def image_features(self, model, images):
        features = model.visual(images, prompt_embeddings=model.cpe_clip.visual())
        return F.normalize(features.float(), dim=-1).to(features.dtype), {}

    def __repr__(self) -> str:
        return f"CPECLIP(context_init={self.context_init!r}, n_ctx={self.n_ctx})"
