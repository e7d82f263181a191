"""ITM re-ranking of ITC's top k, on hand-worked cases and a tiny BLIP."""

from __future__ import annotations

import pytest
import torch

from mmcl.eval.rerank import blip_match_scorer, rerank_scores
from mmcl.models.blip import Blip
from mmcl.models.blip_config import BlipConfig


def test_only_the_top_k_are_rescored_as_match_plus_itc():
    itc = torch.tensor([[0.9, 0.1, 0.8, 0.5], [0.0, 0.3, 0.2, 0.1]])
    calls = []

    def match(queries, candidates):
        calls.append(list(zip(queries.tolist(), candidates.tolist(), strict=True)))
        return (10 * candidates + queries).float()  # a recognisable score per pair

    scores = rerank_scores(itc, match, k=2, chunk_size=3)
    inf = float("-inf")
    expected = torch.tensor([[0.0 + 0.9, inf, 20.0 + 0.8, inf], [inf, 11.0 + 0.3, 21.0 + 0.2, inf]])
    torch.testing.assert_close(scores, expected)
    assert [len(c) for c in calls] == [3, 1]  # 4 pairs in chunks of 3
    assert sorted(p for c in calls for p in c) == [(0, 0), (0, 2), (1, 1), (1, 2)]


def test_k_must_be_positive():
    with pytest.raises(ValueError, match="k must be a positive integer"):
        rerank_scores(torch.zeros(1, 2), lambda q, c: q.float(), k=0)


def test_blip_scorer_gives_each_pairs_itm_logit():
    config = BlipConfig.from_dict(
        {
            "blip_vision": {
                "image_size": 16,
                "patch_size": 8,
                "width": 16,
                "layers": 1,
                "heads": 2,
                "mlp_width": 32,
            },
            "blip_text": {
                "vocab_size": 30,
                "width": 16,
                "layers": 1,
                "heads": 2,
                "mlp_width": 32,
                "max_positions": 8,
                "dec_id": 28,
                "enc_id": 29,
            },
            "embed_dim": 8,
        }
    )
    torch.manual_seed(0)
    model = Blip(config).eval()
    image_tokens = model.encode_image_tokens(torch.randn(3, 3, 16, 16)).detach()
    tokens = torch.tensor([[2, 5, 3], [2, 6, 3]])
    score = blip_match_scorer(model, image_tokens, tokens, text_queries=True)
    got = score(torch.tensor([1, 0]), torch.tensor([2, 2]))  # texts 1, 0 with image 2
    with torch.no_grad():
        one = model.itm_logits(image_tokens[2:3], tokens[1:2])[0, 1]
        other = model.itm_logits(image_tokens[2:3], tokens[0:1])[0, 1]
    torch.testing.assert_close(got, torch.stack([one, other]))
