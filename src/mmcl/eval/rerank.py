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

from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

from mmcl.eval.embed import image_loader
from mmcl.eval.retrieval import recall_from_scores
from mmcl.io.progress import progress as progress_bar

__all__ = ["blip_match_scorer", "encode_images_for_rerank", "itm_rerank_recall", "rerank_scores"]

# Scores pairs: (query indices, candidate indices), both (pairs,) -> match scores (pairs,).
PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def rerank_scores(
    itc_scores: torch.Tensor,
    match_scores: PairScorer,
    k: int,
    chunk_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """``(queries, candidates)`` scores: for each query, its top `k` candidates by
    `itc_scores` get ``match + itc``; every other candidate gets ``-inf``. `match_scores` is
    called on at most `chunk_size` pairs at a time (with a progress bar if `progress`)."""
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
            for s in progress_bar(
                range(0, len(query_index), chunk_size),
                desc="ITM re-ranking",
                unit="chunk",
                disable=not progress,
            )
        ]
    ).to(device=itc_scores.device, dtype=itc_scores.dtype)
    out = torch.full_like(itc_scores, float("-inf"))
    out[query_index, candidate_index] = matched + itc_scores[query_index, candidate_index]
    return out


def blip_match_scorer(
    model, image_tokens: torch.Tensor, tokens: torch.Tensor, text_queries: bool
) -> PairScorer:
    """A `PairScorer` of a model with an ITM head (a `Blip` or an `Albef`): the match logit of image
    ``image_tokens[i]`` (from `encode_image_tokens`) and text ``tokens[t]``. With
    `text_queries`, queries are texts and candidates images (text-to-image); else the
    reverse."""

    def score(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        images, texts = (candidates, queries) if text_queries else (queries, candidates)
        with torch.no_grad():
            return model.itm_logits(image_tokens[images], tokens[texts])[:, 1]

    return score


@torch.no_grad()
def encode_images_for_rerank(
    model,
    dataset,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """One pass of a `Blip`'s (or an `Albef`'s) image tower over `dataset` (`mmcl.data.images.ImageFiles`):
    L2-normalised ITC features ``(kept, embed_dim)`` float32, the image tokens ITM reads
    ``(kept, tokens, width)`` (kept on `device`, so they must fit there), the kept rows'
    dataset indices, and how many unreadable files were skipped."""
    loader = image_loader(dataset, device, workers, batch_size=batch_size)
    features, tokens, indices, skipped = [], [], [], 0
    for images, _, rows, dropped in progress_bar(
        loader, desc="encoding images", unit="batch", disable=not progress
    ):
        skipped += dropped
        if not len(rows):
            continue
        image_tokens = model.encode_image_tokens(images.to(device))
        # encode_image's projection of the class token, without a second pass of the tower.
        features.append(F.normalize(model.vision_proj(image_tokens[:, 0]), dim=-1).float().cpu())
        tokens.append(image_tokens)
        indices.append(rows)
    if not features:
        raise ValueError("no readable images")
    return torch.cat(features), torch.cat(tokens), torch.cat(indices), skipped


def itm_rerank_recall(
    model,
    image_features: torch.Tensor,
    image_tokens: torch.Tensor,
    text_features: torch.Tensor,
    tokens: torch.Tensor,
    text_to_image: torch.Tensor | Sequence[int],
    k: int,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 256,
    progress: bool = False,
) -> dict[str, float]:
    """Recall at `ks` (as `mmcl.eval.retrieval_recall` gives it) after BLIP's re-ranking, in
    both directions: each image's top `k` captions and each caption's top `k` images by ITC
    (the normalised features' dot products) are scored by the ITM head of `model`
    (`blip_match_scorer`, on `image_tokens` and the captions' `tokens`); the rest keep ITC's
    order below them."""
    itc = image_features.float() @ text_features.float().T  # (images, texts)
    i2t = rerank_scores(
        itc,
        blip_match_scorer(model, image_tokens, tokens, text_queries=False),
        k,
        chunk_size,
        progress,
    )
    t2i = rerank_scores(
        itc.T.contiguous(),
        blip_match_scorer(model, image_tokens, tokens, text_queries=True),
        k,
        chunk_size,
        progress,
    )
    return recall_from_scores(
        _below_reranked(itc, i2t), _below_reranked(itc.T, t2i), text_to_image, ks
    )


def _below_reranked(itc: torch.Tensor, reranked: torch.Tensor) -> torch.Tensor:
    """`reranked` with its -inf (the candidates outside the top k) replaced by ITC scores
    shifted below each row's lowest re-ranked score, so that recall at a k beyond the
    re-ranked ones counts in ITC's order, not by index."""
    finite = torch.isfinite(reranked)
    floor = reranked.masked_fill(~finite, float("inf")).amin(1, keepdim=True)
    return torch.where(finite, reranked, itc - itc.amax(1, keepdim=True) + floor - 1)
