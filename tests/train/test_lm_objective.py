"""The answers-only language-modelling loss, against a hand-worked case and transformers'."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mmcl.train.lm_objective import answer_loss

_ = -100


def test_the_loss_is_the_mean_over_labelled_next_tokens_only():
    # Vocabulary of 2; position t predicts the token at t+1. Labels: only positions 2 and 3.
    logits = torch.tensor([[[0.0, 0.0], [9.0, -9.0], [math.log(3), 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[_, _, 0, 1]])
    # t=1 predicts label 0 with logits (9, -9); t=2 predicts label 1 with (log 3, 0): p = 1/4
    expected = (math.log(1 + math.exp(-18)) + math.log(4)) / 2
    assert answer_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_the_loss_equals_transformers_causal_lm_loss():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=30,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 30, (2, 7))
    labels = ids.masked_fill(torch.rand(2, 7) < 0.5, _)
    labels[:, -1] = ids[:, -1]
    with torch.no_grad():
        output = model(input_ids=ids, labels=labels)
    assert answer_loss(output.logits, labels).item() == pytest.approx(output.loss.item(), rel=1e-5)


def test_a_batch_without_any_answer_token_is_an_error_not_a_zero_loss():
    with pytest.raises(ValueError, match="without a single labelled answer token"):
        answer_loss(torch.zeros(1, 3, 5), torch.tensor([[4, _, _]]))  # t=0 predicts nothing
