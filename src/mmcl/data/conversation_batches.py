"""Conversations as training batches for a bridge into a causal LM: each ``(image,
Conversation)`` item encoded by the chat template, and a batch's ids, labels and mask packed
into the one target tensor the engine moves (`mmcl.train.lm_objective` unpacks it)."""

from __future__ import annotations

import torch

from mmcl.data.chat_template import ConversationEncoder, collate_for_training


def pack_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """`collate_for_training`'s ids, labels and mask as one ``(batch, 3, length)`` tensor."""
    return torch.stack([batch["input_ids"], batch["labels"], batch["attention_mask"]], dim=1)


class EncodedConversations(torch.utils.data.Dataset):
    """``(image, EncodedConversation)`` items of an ``(image, Conversation)`` data set."""

    def __init__(self, conversations, encoder: ConversationEncoder):
        self.conversations, self.encoder = conversations, encoder

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int):
        image, conversation = self.conversations[index]
        return image, self.encoder.encode(conversation, where=f"sample {index}")


class ConversationCollate:
    """Images stacked; ids, labels and mask right-padded and packed for the engine."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items):
        images = torch.stack([image for image, _ in items])
        encoded = [sample for _, sample in items]
        return images, pack_targets(collate_for_training(encoded, self.pad_token_id))
