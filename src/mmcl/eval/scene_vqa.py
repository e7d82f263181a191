"""VQA accuracy on held-out scene questions, per question kind: a model answers each
`SceneQuestions` item greedily, and the answer is scored with the VQA v2 normalisation
against the known answer.

One suite scores every kind of model on the same questions; an *answerer* says how a model
answers a batch, ``answerer(model, images, questions) -> answers``:

* `ChatAnswerer`: a chatting bridge (LLaVA, BLIP-2, MiniGPT-4) answers from the chat
  template's prompt, padded on the left, through mmcl's generation loop (`answer_tokens`: the
  image encoded once, the LM's cache reused);
* `BlipAnswerer`: BLIP's answer decoder (`Blip.answer`) over the image-grounded encoding of
  the question, which starts with [ENC] as in BLIP's VQA fine-tuning.
"""

from __future__ import annotations

import torch

from mmcl.data.chat_template import ConversationEncoder, left_pad
from mmcl.data.conversations import IMAGE_PLACEHOLDER
from mmcl.data.scene_qa import SceneQuestions
from mmcl.eval.vqa import vqa_scores
from mmcl.io.transforms import image_transform
from mmcl.models.bridges.causal_lm import answer_tokens


class ChatAnswerer:
    """A chatting bridge's greedy answers, from `encoder`'s prompt of each question."""

    def __init__(self, encoder: ConversationEncoder, max_new_tokens: int = 8):
        self.encoder, self.max_new_tokens = encoder, max_new_tokens

    def __call__(self, model, images: torch.Tensor, questions: list[str]) -> list[str]:
        tokenizer = self.encoder.tokenizer
        prompts = [
            self.encoder.encode_prompt([], f"{IMAGE_PLACEHOLDER}\n{question}")
            for question in questions
        ]
        ids, mask = left_pad(prompts, tokenizer.pad_token_id)
        device = images.device
        new = answer_tokens(
            model,
            ids.to(device),
            images,
            mask.to(device),
            self.max_new_tokens,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
        )
        return tokenizer.batch_decode(new.cpu(), skip_special_tokens=True)


class BlipAnswerer:
    """BLIP's answers (`Blip.answer`: greedy unless `options` say ``beams`` or ``top_p``), the
    questions tokenized by the model's own WordPiece tokenizer."""

    def __init__(self, max_new_tokens: int = 8, **options):
        self.max_new_tokens, self.options = max_new_tokens, options

    def __call__(self, model, images: torch.Tensor, questions: list[str]) -> list[str]:
        tokenizer = model.tokenizer
        if tokenizer is None:
            raise ValueError("this BLIP has no tokenizer: load a folder that holds its vocabulary")
        question = tokenizer(questions, model.context_length, first_token="[ENC]").input_ids
        question = question.to(images.device)
        answers = model.answer(images, question, self.max_new_tokens, **self.options).tokens
        return [tokenizer.decode(row) for row in answers[:, 1:].cpu()]


class SceneVQASuite:
    """``suite(model) -> {"vqa/overall": .., "vqa/colour": .., ...}`` (VQA accuracy in [0, 1]).

    `answerer`: how the model answers a batch (`ChatAnswerer`, `BlipAnswerer`)."""

    def __init__(
        self,
        answerer,
        split: str = "test",
        size: int = 200,
        image_size: int = 32,
        batch_size: int = 64,
        seed: int = 0,
    ):
        data = SceneQuestions(split, size, image_size, seed, image_transform(image_size))
        self.images = torch.stack([data[i][0] for i in range(size)])
        records = [data.record(i) for i in range(size)]
        self.kinds = [record.kind for record in records]
        self.answers = [record.answer for record in records]
        self.questions = [record.question for record in records]
        self.answerer, self.batch_size = answerer, batch_size

    def predictions(self, model) -> list[str]:
        device = next(model.parameters()).device
        answers = []
        for start in range(0, len(self.questions), self.batch_size):
            images = self.images[start : start + self.batch_size].to(device)
            answers += self.answerer(model, images, self.questions[start : start + self.batch_size])
        return [answer.strip() for answer in answers]

    def __call__(self, model) -> dict[str, float]:
        scores = vqa_scores(self.predictions(model), [[answer] * 10 for answer in self.answers])
        metrics = {"vqa/overall": sum(scores) / len(scores)}
        for kind in dict.fromkeys(self.kinds):
            own = [score for score, k in zip(scores, self.kinds, strict=True) if k == kind]
            metrics[f"vqa/{kind}"] = sum(own) / len(own)
        return metrics
