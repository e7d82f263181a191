"""VQA accuracy of a LLaVA-style model on held-out scene questions, per question kind: the
model answers each `SceneQuestions` item from the chat template's prompt, greedily, and the
answer is scored with the VQA v2 normalisation against the known answer.

Prompts are padded on the left and answered a batch at a time through mmcl's generation loop
(`answer_tokens`: the image encoded once, the LM's cache reused), for any chatting bridge
(LLaVA, BLIP-2, MiniGPT-4).
"""

from __future__ import annotations

import torch

from mmcl.data.chat_template import ConversationEncoder, left_pad
from mmcl.data.conversations import IMAGE_PLACEHOLDER
from mmcl.data.scene_qa import SceneQuestions
from mmcl.eval.vqa import vqa_scores
from mmcl.io.transforms import image_transform
from mmcl.models.bridges.causal_lm import answer_tokens


class SceneVQASuite:
    """``suite(model) -> {"vqa/overall": .., "vqa/colour": .., ...}`` (VQA accuracy in [0, 1])."""

    def __init__(
        self,
        encoder: ConversationEncoder,
        split: str = "test",
        size: int = 200,
        image_size: int = 32,
        batch_size: int = 64,
        max_new_tokens: int = 8,
        seed: int = 0,
    ):
        data = SceneQuestions(split, size, image_size, seed, image_transform(image_size))
        self.images = torch.stack([data[i][0] for i in range(size)])
        records = [data.record(i) for i in range(size)]
        self.kinds = [record.kind for record in records]
        self.answers = [record.answer for record in records]
        self.prompts = [
            encoder.encode_prompt([], f"{IMAGE_PLACEHOLDER}\n{record.question}")
            for record in records
        ]
        self.tokenizer = encoder.tokenizer
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens

    def predictions(self, model) -> list[str]:
        device = next(model.parameters()).device
        pad = self.tokenizer.pad_token_id
        answers = []
        for start in range(0, len(self.prompts), self.batch_size):
            ids, mask = left_pad(self.prompts[start : start + self.batch_size], pad)
            images = self.images[start : start + self.batch_size].to(device)
            new = answer_tokens(
                model,
                ids.to(device),
                images,
                mask.to(device),
                self.max_new_tokens,
                self.tokenizer.eos_token_id,
                pad,
            )
            answers += self.tokenizer.batch_decode(new.cpu(), skip_special_tokens=True)
        return [answer.strip() for answer in answers]

    def __call__(self, model) -> dict[str, float]:
        scores = vqa_scores(self.predictions(model), [[answer] * 10 for answer in self.answers])
        metrics = {"vqa/overall": sum(scores) / len(scores)}
        for kind in dict.fromkeys(self.kinds):
            own = [score for score, k in zip(scores, self.kinds, strict=True) if k == kind]
            metrics[f"vqa/{kind}"] = sum(own) / len(own)
        return metrics
