"""The language-modelling loss of a bridge into a causal LM (LLaVA): cross-entropy of each
next token where a label is given, i.e. on the assistant's answers only (the labels come
from `mmcl.data.chat_template`, `IGNORE_INDEX` elsewhere).

The engine moves one tensor of targets per batch; here it is ``(batch, 3, length)``: the
input ids, the labels and the attention mask, stacked by
`mmcl.data.conversation_batches.pack_targets`.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from mmcl.data.chat_template import IGNORE_INDEX


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the token at t+1 predicted at t, over labelled positions."""
    if not (labels[:, 1:] != IGNORE_INDEX).any():
        raise ValueError(
            "a batch without a single labelled answer token: its loss would be zero (check "
            "the labels: every one is IGNORE_INDEX)"
        )
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
    )


def llava_logits(model, input_ids, images, attention_mask) -> torch.Tensor:
    return model(input_ids, images, attention_mask).logits


class CausalLMObjective:
    """``terms, outputs = objective(model, images, packed_targets)``: {"lm": answer loss}.
    `logits_of(model, input_ids, images, attention_mask)` calls the model's forward (the
    engine's, DDP-wrapped in a distributed run): LLaVA's by default."""

    def __init__(self, logits_of=llava_logits):
        self.logits_of = logits_of

    def check(self, model) -> None:
        if not hasattr(model, "language_model"):
            raise ValueError(
                "this objective trains a bridge into a language model (e.g. a LLaVA model), "
                f"not a {type(model).__name__}"
            )

    def __call__(self, model, images, targets):
        input_ids, labels, attention_mask = targets.unbind(1)
        logits = self.logits_of(model, input_ids, images, attention_mask)
        return {"lm": answer_loss(logits, labels)}, {"logits": logits}
