"""What the regularising methods (`lwf`, `ewc`, `zscl`) compute on an instruction stream,
where a batch is ``(images, targets)`` with targets ``(batch, 3, length)``: ids, labels
(`IGNORE_INDEX` outside the assistant's answers) and attention mask
(`mmcl.train.lm_objective`).

The logits at position t predict token t + 1, so the *answer positions* are the t whose
label at t + 1 is given: exactly the positions the LM loss trains. Distillation and the
Fisher are taken there only; the prompt's next-token distributions are not what a task
teaches.
"""

from __future__ import annotations

import torch

from mmcl.data.chat_template import IGNORE_INDEX
from mmcl.train.lm_objective import answer_loss, llava_logits


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """``(batch, length - 1)`` booleans: where the logits predict a labelled answer token."""
    return labels[:, 1:] != IGNORE_INDEX


def next_token_kl(teacher_logits, student_logits, labels, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) at every answer position, averaged
    over the positions (of the whole batch); logits ``(batch, length, vocab)``.

    >>> teacher = torch.zeros(1, 2, 2)
    >>> student = torch.tensor([[[0.0, 2.0], [5.0, 0.0]]])
    >>> labels = torch.tensor([[IGNORE_INDEX, 1]])
    >>> round(float(next_token_kl(teacher, student, labels, 1.0)), 4)  # one position
    0.4338
    """
    from mmcl.continual.methods.lwf import distillation  # lwf imports this module

    where = answer_positions(labels)
    if not where.any():
        return student_logits.sum() * 0.0  # no answer here: nothing to hold, still a graph
    return distillation(teacher_logits[:, :-1][where], student_logits[:, :-1][where], temperature)


def bridge_logits(model, images, targets) -> torch.Tensor:
    """The bridge's logits ``(batch, length, vocab)`` for an encoded batch."""
    input_ids, _, attention_mask = targets.unbind(1)
    return llava_logits(model, input_ids, images, attention_mask)


def encoded_batches(data, encoder, batch_size: int):
    """``(images, targets)`` batches of `data` (``(image, Conversation)`` items, in order),
    encoded and collated as the engine trains them."""
    from mmcl.continual.generative import training_parts

    encoded, collate, _ = training_parts(data, encoder)
    for start in range(0, len(encoded), batch_size):
        yield collate([encoded[i] for i in range(start, min(start + batch_size, len(encoded)))])


def lm_importance(model, batches, estimator: str, generator: torch.Generator) -> dict:
    """The diagonal importance of the trainable weights under the LM loss on the answers.

    ``"sample"``: the Fisher of the model's own next-token distributions, per conversation:
    at each answer position a token is drawn from the model's prediction (on the true
    prefix, with `generator`), and F = mean over conversations of the squared gradient of
    the summed log-probabilities of the drawn tokens. ``"minibatch"``: the mean over
    `batches` of the squared gradient of the batch's LM loss with the true answers (as
    `ewc.minibatch_importance`). Eval mode; frozen weights get no entry.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    importance = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in trainable}
    if not trainable:
        return importance
    device = trainable[0][1].device
    count = 0
    was_training = model.training
    model.eval()
    try:
        for images, targets in batches:
            images, targets = images.to(device), targets.to(device)
            if estimator == "minibatch":
                losses = [answer_loss(bridge_logits(model, images, targets), targets[:, 1])]
            else:
                losses = [
                    _drawn_log_likelihood(model, images[i : i + 1], targets[i : i + 1], generator)
                    for i in range(len(images))
                ]
            for loss in losses:
                gradients = torch.autograd.grad(loss, [p for _, p in trainable], allow_unused=True)
                for (name, _), gradient in zip(trainable, gradients, strict=True):
                    if gradient is not None:
                        importance[name] += gradient.float() ** 2
                count += 1
    finally:
        model.train(was_training)
    for value in importance.values():
        value /= max(count, 1)
    return importance


def _drawn_log_likelihood(model, images, targets, generator) -> torch.Tensor:
    log_probs = bridge_logits(model, images, targets)[:, :-1].float().log_softmax(dim=-1)
    chosen = log_probs[answer_positions(targets[:, 1])]  # (positions, vocab)
    drawn = torch.multinomial(chosen.detach().exp().cpu(), 1, generator=generator)
    return chosen.gather(1, drawn.to(chosen.device)).sum()
