"""Beam search with a length penalty, batched, on a `KVCache` (the loop of `mmcl.nn.generation`).

A finished caption of `n` generated tokens (its end token included) with log-probability `s`
scores ``s / n ** length_penalty`` (Wu et al. 2016's normalisation, in Hugging Face's simple
form); a caption still unfinished after `max_new_tokens` is scored the same way. Each step keeps
the `beams` best unfinished prefixes per input and every finished candidate among the top
``beams * (1 + end tokens)`` expansions, and an input is done when it holds `beams` finished
captions and no unfinished prefix can beat the worst of them any more (an exact bound, not a
heuristic: with enough beams the result is the exhaustive search's). Done inputs are dropped
from the batch and the cache, so no step computes their rows again.

``rules="transformers"`` follows Hugging Face's `generate(num_beams=...)` instead, so that a
transformers language model decodes the same tokens through this loop (`mmcl.models.bridges`):
only an ending expansion ranked among the top `beams` finishes; an input is done when its best
running prefix, scored at its *current* length, cannot beat its worst finished caption (their
``early_stopping=False`` heuristic); at `max_new_tokens` the top `beams` expansions finish,
ending or not; and `min_new_tokens` masks the end tokens after the log-softmax.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from mmcl.nn.kv_cache import KVCache

NEG_INF = float("-inf")
RULES = ("exact", "transformers")


def beam_search(
    step: Callable[[torch.Tensor, KVCache], torch.Tensor],
    prompt: torch.Tensor,
    cache: KVCache,
    beams: int,
    max_new_tokens: int,
    end_tokens: tuple[int, ...],
    pad_token: int = 0,
    length_penalty: float = 1.0,
    min_new_tokens: int = 0,
    rules: str = "exact",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tokens, scores, lengths)`` of the best caption per input; see `mmcl.nn.generation`.
    `cache` holds one row per input; it is expanded to ``batch * beams`` rows here, after the
    prompt's step, its constant entries staying one row per input (`KVCache.repeat_rows`).
    `rules`: "exact" or "transformers" (see the module docstring)."""
    if rules not in RULES:
        raise ValueError(f"rules must be one of {RULES}, got {rules!r}")
    hf = rules == "transformers"
    batch, prompt_length = prompt.shape
    device = prompt.device
    ends = torch.tensor(end_tokens, device=device)
    rows_of = torch.arange(beams, device=device)
    # Per input: the best `beams` finished captions (score -inf: none yet), as token rows.
    done_scores = torch.full((batch, beams), NEG_INF, device=device)
    done_tokens = torch.full((batch, beams, max_new_tokens), pad_token, device=device)
    done_lengths = torch.zeros((batch, beams), dtype=torch.long, device=device)
    alive = torch.arange(batch, device=device)  # inputs still searching
    # Every beam starts as the prompt; only the first may expand at the first step, or the
    # `beams` copies would fill the beam with the same caption.
    beam_scores = torch.full((batch, beams), NEG_INF, device=device)
    beam_scores[:, 0] = 0.0
    generated = torch.empty((batch * beams, 0), dtype=torch.long, device=device)
    new = prompt
    cache.reserve(cache.seen + prompt_length + max_new_tokens - 1)  # the last token is not fed
    for position in range(max_new_tokens):
        length = position + 1  # of every caption that ends or is cut at this step
        logits = step(new, cache).float()
        if position == 0:
            # The beams of an input start as one prompt: it is decoded once per input, then
            # copied to every beam (input-major rows: input i's beams are rows i * beams ...).
            # What the step computes once (the image's cross-attention keys and values) stays
            # one copy per input, which its beams attend to.
            cache.repeat_rows(beams)
            logits = logits.repeat_interleave(beams, dim=0)
        if position < min_new_tokens and not hf:
            logits[:, ends] = NEG_INF
        inputs, vocab = len(alive), logits.shape[-1]
        log_probs = F.log_softmax(logits, dim=-1).view(inputs, beams, vocab)
        if position < min_new_tokens and hf:  # transformers masks the log-probabilities
            log_probs[:, :, ends] = NEG_INF
        expansions = (beam_scores[:, :, None] + log_probs).view(inputs, beams * vocab)
        count = min(beams * (1 + len(end_tokens)), beams * vocab)
        top_scores, top_index = expansions.topk(count, dim=1)
        top_beam, top_token = top_index // vocab, top_index % vocab
        ending = torch.isin(top_token, ends)
        history = generated.view(inputs, beams, position)
        finishing = ending
        if hf:  # only the top `beams` expansions may finish; at the cut all of them do
            top_ranks = torch.arange(count, device=device) < beams
            finishing = (ending | (length == max_new_tokens)) & top_ranks
        if finishing.any():
            candidates = torch.cat(
                [_gather_rows(history, top_beam), top_token[:, :, None]], dim=2
            )  # (inputs, count, length)
            _keep_best(
                done_scores,
                done_tokens,
                done_lengths,
                alive,
                torch.where(finishing, top_scores / length**length_penalty, NEG_INF),
                candidates,
                length,
                pad_token,
            )
        # The `beams` best expansions that do not end continue (there are enough: each beam
        # offers at most len(end_tokens) ending ones among the top `count`).
        continuing = ~ending & (torch.cumsum(~ending, dim=1) <= beams)
        beam_scores = top_scores[continuing].view(inputs, beams)
        chosen_beam = top_beam[continuing].view(inputs, beams)
        chosen_token = top_token[continuing].view(inputs, beams)
        sources = (torch.arange(inputs, device=device)[:, None] * beams + chosen_beam).view(-1)
        cache.select(sources)  # a reorder within each input: its constants stay as they are
        generated = torch.cat([generated[sources], chosen_token.view(-1, 1)], dim=1)
        if length == max_new_tokens and hf:
            break
        if length == max_new_tokens:  # cut: the unfinished captions compete as they are
            history = generated.view(inputs, beams, length)
            _keep_best(
                done_scores,
                done_tokens,
                done_lengths,
                alive,
                beam_scores / length**length_penalty,
                history,
                length,
                pad_token,
            )
            break
        # An input is done when no continuation can beat its worst finished caption: with
        # s <= 0 and more tokens to come, s' <= s, and s' / n ** p is largest at the longest
        # length for p > 0, at the next length for p <= 0.
        best_length = max_new_tokens if length_penalty > 0 else length + 1
        if hf:
            best_length = length
        best_possible = beam_scores.max(dim=1).values / best_length**length_penalty
        worst_done = done_scores[alive].min(dim=1).values  # -inf until `beams` are done
        finished = best_possible <= worst_done
        if finished.all():
            break
        if finished.any():
            keep = (~finished).nonzero().squeeze(1)
            rows = (keep[:, None] * beams + rows_of).view(-1)
            alive, beam_scores = alive[keep], beam_scores[keep]
            generated, chosen_token = generated[rows], chosen_token[keep]
            cache.select(rows)
        new = chosen_token.view(-1, 1)
    best = done_scores.argmax(dim=1)
    picked = torch.arange(batch, device=device)
    lengths = done_lengths[picked, best]
    width = int(lengths.max())
    tokens = torch.cat([prompt, done_tokens[picked, best, :width]], dim=1)
    return tokens, done_scores[picked, best], lengths


def _gather_rows(history: torch.Tensor, beam: torch.Tensor) -> torch.Tensor:
    """``history[i, beam[i, j]]`` for every candidate: ``(inputs, count, length)``."""
    index = beam[:, :, None].expand(-1, -1, history.shape[2])
    return history.gather(1, index)


def _keep_best(
    done_scores: torch.Tensor,
    done_tokens: torch.Tensor,
    done_lengths: torch.Tensor,
    alive: torch.Tensor,
    scores: torch.Tensor,
    captions: torch.Tensor,
    length: int,
    pad_token: int,
) -> None:
    """Merge candidate captions ``(inputs, count, length)`` with their scores into the best
    finished ones of the inputs `alive`, in place."""
    beams, width = done_scores.shape[1], done_tokens.shape[2]
    padded = F.pad(captions, (0, width - length), value=pad_token)
    merged_scores = torch.cat([done_scores[alive], scores], dim=1)
    merged_tokens = torch.cat([done_tokens[alive], padded], dim=1)
    merged_lengths = torch.cat(
        [done_lengths[alive], torch.full_like(scores, length, dtype=torch.long)], dim=1
    )
    best_scores, best = merged_scores.topk(beams, dim=1)
    done_scores[alive] = best_scores
    done_tokens[alive] = merged_tokens.gather(1, best[:, :, None].expand(-1, -1, width))
    done_lengths[alive] = merged_lengths.gather(1, best)
