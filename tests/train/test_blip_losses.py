"""BLIP's losses on hand-worked cases."""

from __future__ import annotations

import math

import pytest
import torch

from mmcl.train.blip_losses import (
    IGNORE,
    contrastive_loss,
    itm_loss,
    itm_pairs,
    lm_loss,
    lm_targets,
    sample_hard_negatives,
)


def test_itc_of_orthonormal_pairs_at_temperature_one():
    features = torch.eye(2)  # image i . text j = 1 if i == j else 0
    loss = contrastive_loss(features, features, torch.tensor(1.0))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_hard_negatives_exclude_same_image_pairs_and_follow_the_softmax():
    image_ids = torch.tensor([0, 0, 1])  # rows 0 and 1 are captions of one image
    similarity = torch.tensor(
        [[9.0, 9.0, 0.0], [9.0, 9.0, 0.0], [math.log(3.0), 0.0, 50.0]]
    )  # row 2: the positive weighs most (excluded); texts 0 and 1 weigh 3 : 1
    generator = torch.Generator().manual_seed(0)
    draws = [sample_hard_negatives(similarity, image_ids, generator) for _ in range(4000)]
    texts = torch.stack([d[0] for d in draws])
    images = torch.stack([d[1] for d in draws])
    assert (texts[:, :2] == 2).all() and (images[:, :2] == 2).all()  # the only other image
    assert set(texts[:, 2].tolist()) <= {0, 1}
    assert (texts[:, 2] == 0).float().mean().item() == pytest.approx(0.75, abs=0.03)
    # images for text 2: column 2 of similarity is (0, 0, 50): images 0 and 1 equally
    assert (images[:, 2] == 0).float().mean().item() == pytest.approx(0.5, abs=0.03)


def test_hard_negatives_never_draw_the_positive():
    similarity = torch.eye(4) * 30.0  # the positive would be drawn almost surely
    for _ in range(50):
        texts, images = sample_hard_negatives(similarity)
        assert (texts != torch.arange(4)).all() and (images != torch.arange(4)).all()


def test_a_floor_keeps_rows_drawable_when_the_softmax_underflows():
    # At a temperature this low every weight but the positive's is 0 in float32: without a
    # floor `multinomial` has nothing to draw; with ALBEF's 1e-4 each other row is equally
    # likely, and same-image pairs stay excluded.
    similarity = torch.eye(3) * 1e4
    with pytest.raises(RuntimeError):
        sample_hard_negatives(similarity)
    generator = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 0, 1])  # rows 0 and 1 show one image: each may only draw row 2
    for _ in range(20):
        texts, images = sample_hard_negatives(similarity, ids, generator, floor=1e-4)
        assert texts.tolist()[:2] == [2, 2] and images.tolist()[:2] == [2, 2]
        assert texts[2] in (0, 1) and images[2] in (0, 1)


def test_hard_negatives_refuse_a_batch_of_one_image():
    with pytest.raises(ValueError, match="no negative"):
        sample_hard_negatives(torch.zeros(2, 2), torch.tensor([7, 7]))


def test_itm_pairs_one_positive_to_two_negatives():
    image_tokens = torch.tensor([10.0, 11.0]).view(2, 1, 1)
    tokens = torch.tensor([[1, 20], [1, 21]])
    images, texts, labels = itm_pairs(
        image_tokens, tokens, torch.tensor([1, 0]), torch.tensor([1, 0])
    )
    assert images.flatten().tolist() == [10, 11, 10, 11, 11, 10]
    assert texts[:, 1].tolist() == [20, 21, 21, 20, 20, 21]
    assert labels.tolist() == [1, 1, 0, 0, 0, 0]
    logits = torch.tensor([[0.0, 0.0]] * 6)
    assert itm_loss(logits, labels).item() == pytest.approx(math.log(2), abs=1e-6)


def test_lm_loss_leaves_out_the_prompt_and_the_padding():
    dec, a, picture, of, cat, sep, vocab = 0, 1, 2, 3, 4, 5, 6
    tokens = torch.tensor([[dec, a, picture, of, cat, sep, 7]])  # 7: padding here
    targets = lm_targets(tokens, prompt_length=4, pad_id=7)
    assert targets.tolist() == [[IGNORE] * 4 + [cat, sep, IGNORE]]
    logits = torch.zeros(1, 7, vocab + 2)  # 8 classes, uniform
    logits[0, 3, cat] = math.log(7.0)  # position 3 predicts "cat" with p = 7 / 14
    logits[0, :3, 6] = 100.0  # wrong, but on prompt positions: ignored
    logits[0, 5:, 6] = 100.0  # the position after [SEP] predicts padding: ignored
    expected = (math.log(2.0) + math.log(8.0)) / 2  # "cat" at 1/2, [SEP] uniform at 1/8
    assert lm_loss(logits, targets, label_smoothing=0.0).item() == pytest.approx(expected, abs=1e-6)
