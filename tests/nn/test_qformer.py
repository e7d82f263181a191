"""The Q-Former: its three stage-1 masks as hand-written matrices, and the structure the paper
describes (cross-attention every n layers, query FFN copied from the text FFN, LayerNorm over
the image features)."""

from __future__ import annotations

import torch

from mmcl.nn.qformer import QFormer, generation_mask, itc_mask, itm_mask

# Two queries (q1 q2), then three text tokens (t1 t2 t3); the second row's t3 is padding.
PADDING = torch.tensor([[False, False, False], [False, False, True]])


def rows(mask: torch.Tensor, row: int) -> list[list[int]]:
    return mask[row, 0].int().tolist()


def test_itc_mask_keeps_queries_and_text_apart():
    #               q1 q2 t1 t2 t3
    assert rows(itc_mask(2, PADDING), 0) == [
        [1, 1, 0, 0, 0],  # q1
        [1, 1, 0, 0, 0],  # q2
        [0, 0, 1, 1, 1],  # t1
        [0, 0, 1, 1, 1],  # t2
        [0, 0, 1, 1, 1],  # t3
    ]
    assert rows(itc_mask(2, PADDING), 1) == [
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 1, 0],  # the padding is seen by no one
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 0],
    ]


def test_itm_mask_is_fully_bidirectional_but_for_padding():
    assert rows(itm_mask(2, PADDING), 0) == [[1, 1, 1, 1, 1]] * 5
    assert rows(itm_mask(2, PADDING), 1) == [[1, 1, 1, 1, 0]] * 5


def test_generation_mask_queries_see_queries_text_sees_queries_and_its_past():
    assert rows(generation_mask(2, PADDING), 0) == [
        [1, 1, 0, 0, 0],  # q1: queries only
        [1, 1, 0, 0, 0],  # q2
        [1, 1, 1, 0, 0],  # t1: all queries, itself
        [1, 1, 1, 1, 0],  # t2: all queries, t1, itself
        [1, 1, 1, 1, 1],  # t3
    ]
    assert rows(generation_mask(2, PADDING), 1)[4] == [1, 1, 1, 1, 0]


def tiny(layers: int = 2, freq: int = 1, seed: int = 0) -> QFormer:
    torch.manual_seed(seed)
    qformer = QFormer(
        16,
        layers,
        2,
        32,
        vision_width=12,
        queries=3,
        cross_attention_freq=freq,
        vocab_size=20,
        max_positions=8,
    )
    with torch.no_grad():  # LayerNorms start at 1 and 0: randomise everything
        for parameter in qformer.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return qformer.eval()


def test_under_itc_mask_each_side_is_blind_to_the_other():
    qformer = tiny()
    image, other_image = torch.randn(2, 2, 5, 12)
    tokens = torch.tensor([[2, 5, 6, 7], [2, 8, 9, 0]])
    mask = itc_mask(3, tokens == 0)
    queries, text = qformer(image, tokens, mask)
    queries_alone, _ = qformer(image)
    torch.testing.assert_close(queries, queries_alone, atol=1e-5, rtol=0)
    _, text_other_image = qformer(other_image, tokens, mask)
    torch.testing.assert_close(text, text_other_image, atol=1e-6, rtol=0)


def test_under_generation_mask_text_does_not_see_its_future():
    qformer = tiny()
    image = torch.randn(1, 5, 12)
    tokens, changed_last = torch.tensor([[2, 5, 6, 7]]), torch.tensor([[2, 5, 6, 11]])
    queries, text = qformer(image, tokens, generation_mask(3, tokens == 0))
    queries_b, text_b = qformer(image, changed_last, generation_mask(3, tokens == 0))
    torch.testing.assert_close(queries, queries_b, atol=0, rtol=0)
    torch.testing.assert_close(text[:, :3], text_b[:, :3], atol=1e-6, rtol=0)
    assert (text[:, 3] - text_b[:, 3]).abs().max() > 1e-3
    # and under the ITM mask the queries do see the text
    queries_itm, _ = qformer(image, tokens, itm_mask(3, tokens == 0))
    queries_itm_b, _ = qformer(image, changed_last, itm_mask(3, tokens == 0))
    assert (queries_itm - queries_itm_b).abs().max() > 1e-3


def test_cross_attention_every_freq_layers_and_query_ffn_copied_from_text_ffn():
    qformer = QFormer(
        16,
        5,
        2,
        32,
        vision_width=12,
        queries=3,
        cross_attention_freq=2,
        vocab_size=20,
        max_positions=8,
    )
    assert [b.cross_attn is not None for b in qformer.blocks] == [True, False, True, False, True]
    block = qformer.blocks[1]
    assert torch.equal(block.query_mlp.c_fc.weight, block.mlp.c_fc.weight)
    assert block.query_mlp.c_fc.weight is not block.mlp.c_fc.weight  # own weights, a copy


def test_image_features_go_through_a_layernorm_first():
    qformer = tiny()
    image = torch.randn(2, 5, 12)
    scaled_and_shifted = 7.0 * image + 3.0  # what a LayerNorm over each feature undoes
    torch.testing.assert_close(qformer(image)[0], qformer(scaled_and_shifted)[0], atol=1e-4, rtol=0)
