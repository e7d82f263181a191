"""CogVLM's visual expert (Wang et al. 2023) put into a Hugging Face LLaMA-family model, not forked.

In every decoder layer, image tokens get their own QKV, output-projection and FFN weights,
initialised as copies of the language weights; attention stays joint over all tokens. Every
`nn.Linear` in a layer's `self_attn` and `mlp` is token-wise (rotary embeddings, the attention
itself and the MLP's activation have no weights), so routing each of those Linears by token is
the same as CogVLM's separate QKV / dense / FFN experts, for any LLaMA-family layer (LLaMA,
Qwen2's biased QKV, Mistral) without touching its code.

The mechanism: each such Linear becomes an `ExpertLinear`, which keeps the language weights
under their own names (``q_proj.weight``: a plain LM's state dict is a subset of the routed
one) and adds ``q_proj.expert.weight``. All of them read one `TokenRoute`, the "is image" mask of
the forward in progress:

- `TokenRoute.set_next(mask)` arms the mask ``(batch, length)`` for the LM's *next* forward
  (a bridge does it where it writes the image tokens into the input embeddings);
- a forward pre-hook on the LM takes the armed mask as that forward's mask and disarms it, so
  a forward nobody armed runs every token as text. That is what decoding with a KV cache
  needs: the image tokens are only in the prompt, whose keys and values (computed with the
  expert's K/V weights) sit in the cache; each later step feeds only new text tokens.
- The mask stays the current one until the next forward starts, so non-reentrant activation
  checkpointing, which re-runs a layer in the backward pass, routes as the forward did (as
  long as no other forward of the LM ran in between).

>>> import torch
>>> from torch import nn
>>> route = TokenRoute()
>>> layer = ExpertLinear(nn.Linear(4, 3), route)
>>> x = torch.randn(1, 2, 4)
>>> route.start_forward()  # nothing armed: all text
>>> torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
True
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class TokenRoute:
    """The per-token "is image" mask that every `ExpertLinear` of one LM reads."""

    def __init__(self):
        self.pending: torch.Tensor | None = None  # armed for the next forward
        self.image_mask: torch.Tensor | None = None  # the forward in progress (None: all text)

    def set_next(self, image_mask: torch.Tensor | None) -> None:
        """Arm `image_mask` (bool ``(batch, length)``, True at image tokens) for the LM's next
        forward."""
        self.pending = image_mask if image_mask is not None and bool(image_mask.any()) else None

    def start_forward(self, *_) -> None:
        """The LM's forward pre-hook: the armed mask becomes this forward's, and is disarmed."""
        self.image_mask, self.pending = self.pending, None

    def mask_for(self, hidden: torch.Tensor) -> torch.Tensor | None:
        mask = self.image_mask
        if mask is None:
            return None
        if tuple(mask.shape) != tuple(hidden.shape[:-1]):
            raise ValueError(
                f"the visual expert's image-token mask is {tuple(mask.shape)} but the language "
                f"model runs {tuple(hidden.shape[:-1])} tokens; arm the mask for the same "
                f"inputs the LM runs next (the bridge's embed() does it)"
            )
        return mask


class ExpertLinear(nn.Linear):
    """A Linear whose image tokens (per `route`) go through `expert` instead of its own
    weights. Its `weight` and `bias` are the language Linear's own parameters."""

    def __init__(self, language: nn.Linear, route: TokenRoute):
        nn.Module.__init__(self)  # no new weights: it adopts the language Linear's
        self.in_features, self.out_features = language.in_features, language.out_features
        self.weight, self.bias = language.weight, language.bias
        self.expert = nn.Linear(
            self.in_features,
            self.out_features,
            bias=language.bias is not None,
            device=language.weight.device,
            dtype=language.weight.dtype,
        )
        self.copy_language_weights()
        self.route = route

    @torch.no_grad()
    def copy_language_weights(self) -> None:
        """The expert's weights := the language ones (CogVLM's initialisation)."""
        self.expert.weight.copy_(self.weight)
        if self.bias is not None:
            self.expert.bias.copy_(self.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        mask = self.route.mask_for(hidden)
        if mask is None:  # text only: exactly the language Linear
            return F.linear(hidden, self.weight, self.bias)
        # Each row goes through one set of weights only: the expert's gradient comes from the
        # image rows alone, the language weights' from the text rows alone.
        text = F.linear(hidden[~mask], self.weight, self.bias)
        image = self.expert(hidden[mask])
        out = text.new_empty(*hidden.shape[:-1], self.out_features)
        out[~mask] = text
        out[mask] = image.to(text.dtype)
        return out


def add_visual_expert(language_model: nn.Module, route: TokenRoute) -> list[str]:
    """Turns every Linear of each decoder layer's ``self_attn`` and ``mlp`` in
    `language_model` (a transformers LLaMA-family causal LM) into an `ExpertLinear` reading
    `route`, and hooks the route onto the LM's forward. Returns the replaced modules' names."""
    layers = getattr(getattr(language_model, "model", None), "layers", None)
    if layers is None or not all(
        hasattr(layer, "self_attn") and hasattr(layer, "mlp") for layer in layers
    ):
        kind = getattr(getattr(language_model, "config", None), "model_type", "?")
        raise ValueError(
            f"the visual expert needs a LLaMA-family language model (model.layers[i].self_attn "
            f"and .mlp, e.g. llama, qwen2, mistral), not {kind!r}"
        )
    replaced = []
    for index, layer in enumerate(layers):
        for part in ("self_attn", "mlp"):
            block = getattr(layer, part)
            linears = [
                (name, child)
                for name, child in block.named_children()
                if type(child) is nn.Linear  # noqa: E721 (an ExpertLinear is not routed again)
            ]
            for name, child in linears:
                setattr(block, name, ExpertLinear(child, route))
                replaced.append(f"model.layers.{index}.{part}.{name}")
    if not replaced:
        raise ValueError("the visual expert found no Linear layers in the language model")
    # A bound method: a deep copy of the model (a teacher snapshot) hooks its own route copy.
    language_model.register_forward_pre_hook(route.start_forward)
    return replaced


def expert_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The visual expert's own parameters (those of every `ExpertLinear.expert`)."""
    return [
        p for m in module.modules() if isinstance(m, ExpertLinear) for p in m.expert.parameters()
    ]


def copy_language_weights_to_expert(module: nn.Module) -> None:
    """Every `ExpertLinear` in `module` starts again from its language weights."""
    for layer in module.modules():
        if isinstance(layer, ExpertLinear):
            layer.copy_language_weights()
