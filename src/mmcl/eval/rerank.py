"""Retrieval re-ranking as BLIP does it (Li et al. 2022, section 5.2): the contrastive (ITC)
scores choose each query's top k candidates, and the image-text matching (ITM) head, which
reads image and text together, scores only those k. A re-ranked candidate's score is its ITM
match logit plus its ITC score (BLIP's sum); the others fall below every re-ranked one.

>>> import torch
>>> itc = torch.tensor([[0.9, 0.8, 0.1]])  # one query, three candidates
>>> match = lambda queries, candidates: torch.where(candidates == 1, 5.0, 0.0)
>>> rerank_scores(itc, match, k=2).argmax(1).tolist()  # ITM lifts candidate 1 over 0
[1]
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["blip_match_scorer", "rerank_scores"]

# Scores pairs: (query indices, candidate indices), both (pairs,) -> match scores (pairs,).
PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def rerank_scores(
    itc_scores: torch.Tensor, match_scores: PairScorer, k: int, chunk_size: int = 256
) -> torch.Tensor:
    """``(queries, candidates)`` scores: for each query, its top `k` candidates by
    `itc_scores` get ``match + itc``; every other candidate gets ``-inf``. `match_scores` is
    called on at most `chunk_size` pairs at a time."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    queries, candidates = itc_scores.shape
    k = min(k, candidates)
    top = itc_scores.topk(k, dim=1).indices  # (queries, k)
    query_index = torch.arange(queries, device=top.device).repeat_interleave(k)
    candidate_index = top.reshape(-1)
    matched = torch.cat(
        [
            match_scores(query_index[s : s + chunk_size], candidate_index[s : s + chunk_size])
            for s in range(0, len(query_index), chunk_size)
        ]
    ).to(itc_scores.dtype)
    out = torch.full_like(itc_scores, float("-inf"))
    out[query_index, candidate_index] = matched + itc_scores[query_index, candidate_index]
    return out


def blip_match_scorer(
    model, image_tokens: torch.Tensor, tokens: torch.Tensor, text_queries: bool
) -> PairScorer:
    """A `PairScorer` of a `Blip` with an ITM head: the match logit of image
    ``image_tokens[i]`` (from `encode_image_tokens`) and text ``tokens[t]``. With
    `text_queries`, queries are texts and candidates images (text-to-image); else the
    reverse."""

    def score(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        images, texts = (candidates, queries) if text_queries else (queries, candidates)
        with torch.no_grad():
            return model.itm_logits(image_tokens[images], tokens[texts])[:, 1]

    return score
