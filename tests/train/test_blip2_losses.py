"""BLIP-2 stage 1's losses on hand-worked cases, and what the stage-1 model trains."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmcl.models.qformer import QFormerConfig, QFormerPretrainer
from mmcl.train import blip2_losses
from mmcl.train.blip2_losses import itc_loss, itc_similarity, stage1_losses

CONFIG = QFormerConfig(
    width=16,
    layers=2,
    heads=2,
    mlp_width=32,
    vision_width=12,
    queries=3,
    vocab_size=20,
    max_positions=8,
    embed_dim=8,
)


def test_itc_similarity_is_the_maximum_over_queries():
    query_features = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [-1.0, 0.0]]])
    text_features = torch.tensor([[2.0, 1.0], [-1.0, 3.0]])
    # image 0: queries (1,0),(0,1) . text 0 (2,1) -> 2, 1: max 2; . text 1 (-1,3) -> -1, 3: 3
    # image 1: (0.5,0.5),(-1,0) . text 0 -> 1.5, -2: 1.5; . text 1 -> 1, 1: 1
    expected = torch.tensor([[2.0, 3.0], [1.5, 1.0]])
    torch.testing.assert_close(itc_similarity(query_features, text_features), expected)


def test_itc_loss_of_a_hand_worked_pair():
    query_features = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # one query each
    text_features = torch.eye(2)
    # logits eye(2): each row's loss log(1 + e^-1), both directions
    loss = itc_loss(query_features, text_features, 1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_itm_score_is_the_mean_of_the_head_over_the_query_outputs():
    model = QFormerPretrainer(CONFIG)
    query_states = torch.zeros(1, 3, 16)
    query_states[0, :, 0] = torch.tensor([1.0, 2.0, 6.0])  # mean 3
    model.qformer.forward = lambda *args, **kwargs: (query_states, None)
    with torch.no_grad():
        model.itm_head.weight.zero_()
        model.itm_head.weight[1, 0] = 1.0
        model.itm_head.bias.copy_(torch.tensor([0.5, 0.0]))
    logits = model.itm_logits(torch.randn(1, 4, 12), torch.tensor([[2, 5]]))
    torch.testing.assert_close(logits, torch.tensor([[0.5, 3.0]]))


def test_hard_negatives_never_pair_captions_of_the_same_image(monkeypatch):
    model = QFormerPretrainer(CONFIG)
    seen = []

    def spy(image_features, tokens, negative_texts, negative_images):
        seen.append((negative_texts.tolist(), negative_images.tolist()))
        return real_pairs(image_features, tokens, negative_texts, negative_images)

    real_pairs = blip2_losses.itm_pairs
    monkeypatch.setattr(blip2_losses, "itm_pairs", spy)
    image_features = torch.randn(3, 4, 12)
    tokens = torch.tensor([[2, 5, 6], [2, 7, 0], [2, 8, 9]])
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        stage1_losses(model, image_features, tokens, torch.tensor([0, 0, 1]), 19, generator)
    # rows 0 and 1 caption one image: the only negative either can have is row 2
    assert all(texts[:2] == [2, 2] and images[:2] == [2, 2] for texts, images in seen)


def test_a_step_trains_the_qformer_and_never_the_frozen_tower():
    tower = nn.Sequential(nn.Flatten(2), nn.Linear(16, 12))  # (b, 3, 4, 4) -> (b, 3, 12)
    model = QFormerPretrainer(CONFIG, visual=tower)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not trainable & {id(p) for p in tower.parameters()}
    assert {id(p) for p in model.qformer.parameters()} <= trainable
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    before = [p.detach().clone() for p in tower.parameters()]
    tokens = torch.tensor([[2, 5, 6], [2, 7, 0], [2, 8, 9]])
    losses = stage1_losses(
        model,
        model.image_features(torch.randn(3, 3, 4, 4)),
        tokens,
        dec_id=19,
        generator=torch.Generator().manual_seed(0),
    )
    assert set(losses) == {"itc", "itm", "lm"}
    sum(losses.values()).backward()
    assert model.qformer.queries.query.grad.abs().sum() > 0
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, tower.parameters(), strict=True))


def test_stage2_starts_from_the_stage1_qformer_without_its_text_part():
    from mmcl.models.bridges.blip2 import Blip2, Blip2Config

    stage1 = QFormerPretrainer(CONFIG)
    stage2 = Blip2(
        Blip2Config.from_dict(
            {
                "blip_vision": {
                    "image_size": 16,
                    "patch_size": 8,
                    "width": 12,
                    "layers": 1,
                    "heads": 2,
                    "mlp_width": 24,
                },
                "qformer": {**CONFIG.to_dict(), "vocab_size": None},
                "text_config": {
                    "model_type": "llama",
                    "vocab_size": 30,
                    "hidden_size": 16,
                    "intermediate_size": 32,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                },
            }
        )
    )
    stage2.load_stage1(stage1.qformer)
    assert stage2.qformer.word_embeddings is None  # the text part stays behind
    features = torch.randn(2, 5, 12)
    with torch.no_grad():  # the queries alone: the same computation in both stages
        torch.testing.assert_close(stage2.qformer(features)[0], stage1.qformer(features)[0])
