"""Single-turn conversations as BLIP VQA training items: ``(image, ids)`` with ids ``(2,
length)``, the question's (``[ENC] question [SEP]``, as BLIP's VQA fine-tuning starts it) and
the answer's (``[DEC] answer [SEP]``), each padded to `length` so that batches stack.

The conversations are LLaVA's records (`mmcl.data.conversations`: the built-in
`SceneConversations` with ``max_turns=1``, or a user's LLaVA-format file); BLIP answers one
question at a time, so a conversation of more turns is an error naming it, as is a text too
long for `length` (a cut answer would be trained on silently).
"""

from __future__ import annotations

import torch

from mmcl.data.conversations import IMAGE_PLACEHOLDER


class VQAPairs(torch.utils.data.Dataset):
    """``(image, ids (2, length))`` items of an ``(image, Conversation)`` data set."""

    def __init__(self, conversations, tokenizer, length: int):
        if length < 3:
            raise ValueError(
                f"length must be at least 3 ([ENC]/[DEC], a piece, [SEP]), got {length}"
            )
        self.conversations, self.tokenizer, self.length = conversations, tokenizer, length

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int):
        image, conversation = self.conversations[index]
        where = f"sample {index} ({conversation.id})"
        if len(conversation.turns) != 1:
            raise ValueError(
                f"{where}: {len(conversation.turns)} turns; BLIP answers one question at a time "
                f"(give single-turn conversations: data.max_turns: 1 for the scenes)"
            )
        question, answer = conversation.turns[0]
        question = question.replace(IMAGE_PLACEHOLDER, "").strip()
        rows = []
        for name, text, first in (("question", question, "[ENC]"), ("answer", answer, "[DEC]")):
            pieces = len(self.tokenizer.encode(text))
            if not pieces or pieces + 2 > self.length:
                raise ValueError(
                    f"{where}: the {name} {text!r} takes {pieces} word pieces; it needs 1 to "
                    f"{self.length - 2} (the model's positions, less the start token and [SEP])"
                )
            ids = self.tokenizer(
                [text], self.length, first_token=first, pad_to_context_length=True
            ).input_ids
            rows.append(ids[0])
        return image, torch.stack(rows)
