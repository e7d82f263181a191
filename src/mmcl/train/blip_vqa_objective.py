"""BLIP's VQA fine-tuning (Li et al. 2022, section 5.4) on the one engine: the question is
encoded by the image-grounded text encoder (starting with [ENC]), and the answer decoder
generates the answer from [DEC], cross-attending to the question's states (not to the image):
a language-modelling loss on the answer tokens only.

The batches are ``(images, pairs)`` with ``pairs`` ``(batch, 2, length)``: each row's question
ids (``[ENC] question [SEP] [PAD]..``) and answer ids (``[DEC] answer [SEP] [PAD]..``) from the
model's WordPiece tokenizer (`mmcl.data.vqa_pairs`); padding columns are cut before the model
sees them.

The loss is BLIP's, which is not a mean over tokens: each answer's token losses are summed
(label smoothing 0.1), weighted by the answer's weight (VQA v2 gives a question several
answers; here one, weight 1) and averaged over the questions, so a long answer weighs more
than a short one (`answer_loss`).
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from mmcl.train.blip_losses import IGNORE, lm_targets
from mmcl.train.blip_objective import trim_padding

_NEEDED_PARTS = ("text_encoder", "text_decoder")


def answer_targets(answers: Tensor, pad_id: int) -> Tensor:
    """The decoder's targets for ``[DEC] answer [SEP] [PAD]..`` rows: the answer and [SEP],
    with the start token and the padding `IGNORE` (the question is not in the decoder's
    input at all: it reaches the decoder through cross-attention)."""
    return lm_targets(answers, prompt_length=1, pad_id=pad_id)


def answer_loss(
    logits: Tensor, targets: Tensor, weights: Tensor | None = None, label_smoothing: float = 0.1
) -> Tensor:
    """BLIP's VQA loss: for each row, the label-smoothed cross-entropy of ``logits[:, :-1]``
    against ``targets[:, 1:]`` summed over its answer tokens, times its weight (default 1),
    summed over the rows and divided by their number (BLIP's ``loss.sum() / batch``)."""
    if not (targets[:, 1:] != IGNORE).any(dim=1).all():
        empty = (~(targets[:, 1:] != IGNORE).any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"answer rows {empty} have no answer token: their loss would be zero")
    rows, length = targets.shape[0], targets.shape[1] - 1
    per_token = F.cross_entropy(
        logits[:, :-1].reshape(rows * length, -1).float(),
        targets[:, 1:].reshape(-1),
        ignore_index=IGNORE,
        label_smoothing=label_smoothing,
        reduction="none",
    )
    per_answer = per_token.view(rows, length).sum(dim=1)
    if weights is not None:
        per_answer = per_answer * weights
    return per_answer.sum() / rows


class BlipVqaObjective:
    """``terms, outputs = objective(model, images, pairs)``: {"vqa": `answer_loss`}."""

    def __init__(self, label_smoothing: float = 0.1):
        self.label_smoothing = label_smoothing

    def check(self, model) -> None:
        config = getattr(model, "config", None)
        parts = getattr(config, "parts", ())
        missing = [part for part in _NEEDED_PARTS if part not in parts]
        if not hasattr(config, "blip_text") or missing:
            raise ValueError(
                "BLIP VQA training needs a BLIP with its text encoder and decoder "
                f"(a {type(model).__name__}{f' lacking {missing}' if config else ''})"
            )

    def __call__(self, model, images: Tensor, pairs: Tensor):
        if pairs.dim() != 3 or pairs.shape[1] != 2:
            raise ValueError(
                f"BLIP VQA batches hold (batch, 2, length) question and answer ids, got shape "
                f"{tuple(pairs.shape)}"
            )
        unwrapped = getattr(model, "module", model)  # DistributedDataParallel keeps it there
        pad_id = unwrapped.config.blip_text.pad_id
        questions = trim_padding(pairs[:, 0], pad_id)
        answers = trim_padding(pairs[:, 1], pad_id)
        outputs = model(images, questions, answers=answers)
        targets = answer_targets(answers, pad_id)
        loss = answer_loss(outputs["answer_logits"], targets, None, self.label_smoothing)
        return {"vqa": loss}, outputs
