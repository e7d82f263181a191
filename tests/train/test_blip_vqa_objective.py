"""BLIP's VQA fine-tuning loss and masks, against hand-worked cases: the answer tokens and
[SEP] are the only targets, each answer's token losses are summed (not averaged) and the sum
averaged over the questions, as BLIP's ``loss.sum() / batch``; the question's padding is
masked from the decoder; the items carry ``[ENC] question [SEP]`` and ``[DEC] answer [SEP]``."""

from __future__ import annotations

import math

import pytest
import torch

import mmcl
from mmcl.data.conversations import Conversation
from mmcl.data.vqa_pairs import VQAPairs
from mmcl.train.blip_losses import IGNORE
from mmcl.train.blip_vqa_objective import BlipVqaObjective, answer_loss, answer_targets

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

PAD, A, B, SEP, DEC = 0, 1, 2, 3, 5  # a vocabulary of 6 ids


def test_targets_are_the_answer_and_sep_only():
    answers = torch.tensor([[DEC, B, SEP, PAD], [DEC, A, B, SEP]])
    expected = torch.tensor([[IGNORE, B, SEP, IGNORE], [IGNORE, A, B, SEP]])
    assert torch.equal(answer_targets(answers, PAD), expected)


def test_loss_sums_each_answers_tokens_and_averages_over_questions():
    targets = answer_targets(torch.tensor([[DEC, B, SEP, PAD], [DEC, A, B, SEP]]), PAD)
    uniform = torch.zeros(2, 4, 6)  # -log p = ln 6 for every token, smoothed or not
    # Row 1: 2 answer tokens, row 2: 3. BLIP: (2 + 3) ln 6 / 2 questions. A mean over the 5
    # tokens would give ln 6; a target at the padding, 3 ln 6; at [DEC], 3 ln 6.
    loss = answer_loss(uniform, targets)
    assert loss.item() == pytest.approx(2.5 * math.log(6), rel=1e-6)
    weighted = answer_loss(uniform, targets, weights=torch.tensor([2.0, 0.0]))
    assert weighted.item() == pytest.approx(2 * 2 * math.log(6) / 2, rel=1e-6)


def test_label_smoothing_by_hand():
    # One answer token (B) then [SEP]; at the first position logit ln 5 on B, 0 elsewhere:
    # p(B) = 5 / 10, each other id 1 / 10. Smoothed by 0.1 over 6 ids:
    # 0.9 (-ln 0.5) + 0.1 (ln 2 + 5 ln 10) / 6. At the second, uniform logits: ln 6.
    logits = torch.zeros(1, 3, 6)
    logits[0, 0, B] = math.log(5)
    targets = answer_targets(torch.tensor([[DEC, B, SEP]]), PAD)
    first = 0.9 * math.log(2) + 0.1 * (math.log(2) + 5 * math.log(10)) / 6
    assert answer_loss(logits, targets).item() == pytest.approx(first + math.log(6), rel=1e-6)
    unsmoothed = answer_loss(logits, targets, label_smoothing=0.0)
    assert unsmoothed.item() == pytest.approx(math.log(2) + math.log(6), rel=1e-6)


def test_an_answer_without_a_token_is_an_error_not_a_zero_loss():
    targets = answer_targets(torch.tensor([[DEC, A, SEP], [DEC, PAD, PAD]]), PAD)
    with pytest.raises(ValueError, match=r"answer rows \[1\] have no answer token"):
        answer_loss(torch.zeros(2, 3, 6), targets)


def tiny_vqa_blip():
    torch.manual_seed(0)
    return mmcl.create_model(
        "tiny-blip",
        parts=["text_encoder", "text_decoder"],
        share_text_weights=False,
        blip_vision={"width": 32, "layers": 1, "mlp_width": 64},
        blip_text={"width": 32, "layers": 1, "mlp_width": 64},
    ).eval()


def test_question_padding_is_masked_from_the_encoder_and_the_answer_decoder():
    model = tiny_vqa_blip()
    tokenizer = model.tokenizer
    images = torch.randn(2, 3, 32, 32)
    questions = ["what colour is the star?", "how many circles are there in the image?"]
    batch = tokenizer(questions, first_token="[ENC]").input_ids  # the first row padded
    answers = tokenizer(["red", "3"], first_token="[DEC]").input_ids
    assert (batch[0] == PAD).any() and not (batch[1] == PAD).any()
    unpadded = batch[:1, : int((batch[0] != PAD).sum())]
    with torch.no_grad():
        together = model.answer_logits(model.encode_image_tokens(images), batch, answers)
        alone = model.answer_logits(model.encode_image_tokens(images[:1]), unpadded, answers[:1])
        generated = model.answer(images, batch, max_new_tokens=4).tokens
        generated_alone = model.answer(images[:1], unpadded, max_new_tokens=4).tokens
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=0)
    assert [t for t in generated[0].tolist() if t] == [t for t in generated_alone[0].tolist() if t]


def test_objective_is_the_loss_of_the_trimmed_pairs():
    model = tiny_vqa_blip()
    images = torch.randn(2, 3, 32, 32)
    conversations = [
        (image, Conversation(f"s{i}", None, ((question, answer),)))
        for i, (image, question, answer) in enumerate(
            zip(
                images,
                ["<image>\nwhat colour is the star?", "how many hearts?"],
                ["red", "2"],
                strict=True,
            )
        )
    ]
    items = [VQAPairs(conversations, model.tokenizer, 32)[i] for i in range(2)]
    pairs = torch.stack([ids for _, ids in items])
    assert pairs.shape == (2, 2, 32)
    terms, outputs = BlipVqaObjective()(model, images, pairs)
    question = model.tokenizer(
        ["what colour is the star?", "how many hearts?"], first_token="[ENC]"
    )
    answer = model.tokenizer(["red", "2"], first_token="[DEC]").input_ids
    with torch.no_grad():
        logits = model.answer_logits(model.encode_image_tokens(images), question.input_ids, answer)
    expected = answer_loss(logits, answer_targets(answer, PAD))
    torch.testing.assert_close(terms["vqa"], expected, atol=1e-6, rtol=0)
    assert outputs["answer_logits"].shape == (2, answer.shape[1], model.tokenizer.vocab_size)


def test_items_hold_the_enc_question_and_the_dec_answer():
    model = tiny_vqa_blip()
    tokenizer = model.tokenizer
    data = [
        (
            torch.zeros(3, 32, 32),
            Conversation("s", None, (("<image>\nwhere is the star?", "left"),)),
        )
    ]
    _, ids = VQAPairs(data, tokenizer, 12)[0]
    words = tokenizer.encode("where is the star?")
    assert ids[0].tolist() == [tokenizer.enc_token_id, *words, SEP] + [PAD] * (10 - len(words))
    assert ids[1].tolist() == [DEC, *tokenizer.encode("left"), SEP] + [PAD] * 9
