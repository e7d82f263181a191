"""The one generation loop: greedy, nucleus (top-p) sampling and beam search, shared by every
captioner (CoCa, BLIP) and language-model bridge.

A model takes part by offering a *step*: given the new token ids ``(rows, new)`` and a
`KVCache`, return the logits of the next token ``(rows, vocab)``, appending what it computed
to the cache. The first call gets the whole prompt, later ones one token per row. Whatever
the model computes once (the image tokens, their cross-attention keys and values) lives in
the cache's constant entries, so it is never recomputed. The loop owns the cache's rows: it
expands them for beams, reorders them as beams are chosen, and drops the rows that finished,
so no step computes anything for a finished caption.

>>> import torch
>>> from mmcl.nn import KVCache
>>> from mmcl.nn.generation import generate
>>> def step(tokens, cache):  # a toy model: always predicts the previous token plus one
...     cache.advance(tokens)
...     return torch.nn.functional.one_hot(tokens[:, -1] + 1, 6).float() * 10
>>> generate(step, torch.tensor([[0], [2]]), KVCache(), max_new_tokens=5, end_token=5).tokens
tensor([[0, 1, 2, 3, 4, 5],
        [2, 3, 4, 5, 0, 0]])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from mmcl.nn.beam_search import beam_search
from mmcl.nn.fast_linear import FP32_PACKED_MIN_ROWS, fp32_packing
from mmcl.nn.kv_cache import KVCache

Step = Callable[[torch.Tensor, KVCache], torch.Tensor]
"""``step(new_tokens (rows, new), cache) -> next-token logits (rows, vocab)``."""

__all__ = [
    "Captioner",
    "Generated",
    "Step",
    "beam_search",
    "generate",
    "greedy_search",
    "sample",
    "top_p_filter",
]


@dataclass
class Generated:
    """`tokens` ``(batch, prompt + longest)``: the prompt, then each row's tokens up to and
    including its end token, then `pad_token`. `scores` ``(batch,)``: the sum of the chosen
    tokens' log-probabilities (beam search: divided by length ** `length_penalty`).
    `lengths` ``(batch,)``: how many tokens each row generated, its end token included."""

    tokens: torch.Tensor
    scores: torch.Tensor
    lengths: torch.Tensor


class Captioner:
    """What every captioner's `generate` shares (BLIP, CoCa): the image is encoded once into a
    `KVCache` by `start_captions`, and `generate` runs the one loop on `caption_step`.

    A model mixes it in and supplies three methods: `caption_context(images)` (the tensor its
    decoder cross-attends to), ``caption_step(new_tokens, cache)`` (a `Step`, reading that
    tensor with `cached_context`), and ``caption_prompt(images, **options)`` returning
    ``(prompt, end_token, pad_token)`` from the model's own options (BLIP's `prompt`, CoCa's
    start, end and pad tokens): any keyword `generate` does not know goes there.
    """

    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor,
        max_new_tokens: int = 30,
        beams: int = 1,
        length_penalty: float = 1.0,
        top_p: float | None = None,
        temperature: float = 1.0,
        min_new_tokens: int = 0,
        generator: torch.Generator | None = None,
        **prompt_options,
    ) -> Generated:
        """Captions of `images`: greedy by default, beam search with ``beams > 1``, nucleus
        sampling with `top_p` (see `generate`, the function). The image is encoded once, each
        step decodes one token per row with the KV cache, and finished captions stop. Token
        ids: decode them with the model's tokenizer. `prompt_options`: see the model's
        `caption_prompt`."""
        prompt, end_token, pad_token = self.caption_prompt(images, **prompt_options)
        return generate(
            self.caption_step,
            prompt,
            self.start_captions(images),
            max_new_tokens,
            end_token,
            pad_token,
            beams,
            length_penalty,
            top_p,
            temperature,
            min_new_tokens,
            generator,
        )

    def start_captions(self, images: torch.Tensor) -> KVCache:
        """A cache holding what the decoder cross-attends to, encoded once for every step."""
        cache = KVCache()
        cache.put(self, self.caption_context(images))
        return cache

    def cached_context(self, cache: KVCache) -> torch.Tensor:
        """The `caption_context` that `start_captions` put in `cache`."""
        return cache.constant(self, _no_context)


def _no_context():
    raise ValueError("caption_step needs a cache from start_captions(images)")


def generate(
    step: Step,
    prompt: torch.Tensor,
    cache: KVCache,
    max_new_tokens: int,
    end_token: int | Sequence[int],
    pad_token: int = 0,
    beams: int = 1,
    length_penalty: float = 1.0,
    top_p: float | None = None,
    temperature: float = 1.0,
    min_new_tokens: int = 0,
    generator: torch.Generator | None = None,
    beam_rules: str = "exact",
) -> Generated:
    """Greedy search by default; beam search with ``beams > 1``; nucleus sampling with
    `top_p` (1.0: plain sampling from the softmax at `temperature`). `prompt` ``(batch, length)``
    starts every row (e.g. the start token, or "a picture of"). No end token is chosen before
    `min_new_tokens`. `generator` seeds sampling (the same seed, the same captions).
    `beam_rules`: "exact" (mmcl's exact stopping bound) or "transformers" (Hugging Face's beam
    search, token for token; see `mmcl.nn.beam_search`)."""
    end_tokens = _as_tuple(end_token)
    _check(prompt, max_new_tokens, beams, top_p, temperature, min_new_tokens)
    # Steps of fewer rows than this run float32 linear layers unpacked: so does the prompt.
    with fp32_packing(len(prompt) * beams >= FP32_PACKED_MIN_ROWS):
        if beams > 1:
            if top_p is not None:
                raise ValueError("top_p: sampling and beam search do not combine; choose one")
            return Generated(
                *beam_search(
                    step,
                    prompt,
                    cache,
                    beams,
                    max_new_tokens,
                    end_tokens,
                    pad_token,
                    length_penalty,
                    min_new_tokens,
                    beam_rules,
                )
            )
        if top_p is not None:
            return sample(
                step,
                prompt,
                cache,
                max_new_tokens,
                end_tokens,
                pad_token,
                top_p,
                temperature,
                min_new_tokens,
                generator,
            )
        return greedy_search(
            step, prompt, cache, max_new_tokens, end_tokens, pad_token, min_new_tokens
        )


def greedy_search(
    step: Step,
    prompt: torch.Tensor,
    cache: KVCache,
    max_new_tokens: int,
    end_token: int | Sequence[int],
    pad_token: int = 0,
    min_new_tokens: int = 0,
) -> Generated:
    """The most probable token at every step."""
    return _decode(
        step,
        prompt,
        cache,
        max_new_tokens,
        _as_tuple(end_token),
        pad_token,
        min_new_tokens,
        _first_maximum,
    )


def _first_maximum(logits: torch.Tensor) -> torch.Tensor:
    # argmax's index (the first of equal maxima, as documented for both), but `max` over a
    # row is vectorised on CPUs and 3x faster than `argmax` at a vocabulary of 30k.
    return logits.max(dim=-1).indices


def sample(
    step: Step,
    prompt: torch.Tensor,
    cache: KVCache,
    max_new_tokens: int,
    end_token: int | Sequence[int],
    pad_token: int = 0,
    top_p: float = 1.0,
    temperature: float = 1.0,
    min_new_tokens: int = 0,
    generator: torch.Generator | None = None,
) -> Generated:
    """Nucleus sampling (Holtzman et al. 2020): from the smallest set of most probable tokens
    whose probability reaches `top_p`, renormalised, after dividing the logits by
    `temperature`."""

    def choose(logits: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(top_p_filter(logits / temperature, top_p), dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return _decode(
        step, prompt, cache, max_new_tokens, _as_tuple(end_token), pad_token, min_new_tokens, choose
    )


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """`logits` with -inf outside each row's nucleus: the most probable tokens, in order, up
    to and including the one at which their probability reaches `top_p` (at least one)."""
    if top_p >= 1.0:
        return logits
    ordered, order = logits.sort(dim=-1, descending=True)
    probs = F.softmax(ordered, dim=-1)
    before = probs.cumsum(dim=-1) - probs  # the mass of the tokens ranked above each one
    outside = before >= top_p
    outside[..., 0] = False
    ordered = ordered.masked_fill(outside, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)


def _decode(
    step: Step,
    prompt: torch.Tensor,
    cache: KVCache,
    max_new_tokens: int,
    end_tokens: tuple[int, ...],
    pad_token: int,
    min_new_tokens: int,
    choose: Callable[[torch.Tensor], torch.Tensor],
) -> Generated:
    batch, prompt_length = prompt.shape
    device = prompt.device
    tokens = torch.full((batch, prompt_length + max_new_tokens), pad_token, device=device)
    tokens[:, :prompt_length] = prompt
    scores = torch.zeros(batch, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    ends = torch.tensor(end_tokens, device=device)
    active = torch.arange(batch, device=device)  # the rows still generating, as batch indices
    new = prompt
    generated = 0
    cache.reserve(cache.seen + prompt_length + max_new_tokens - 1)  # the last token is not fed
    for position in range(max_new_tokens):
        logits = step(new, cache).float()
        if position < min_new_tokens:
            logits[:, ends] = float("-inf")
        chosen = choose(logits)
        scores[active] += F.log_softmax(logits, dim=-1).gather(1, chosen[:, None]).squeeze(1)
        tokens[active, prompt_length + position] = chosen
        lengths[active] += 1
        generated = position + 1
        finished = torch.isin(chosen, ends)
        if finished.any():
            running = (~finished).nonzero().squeeze(1)
            if len(running) == 0:
                break
            active, chosen = active[running], chosen[running]
            cache.select(running)  # finished rows are never computed again
        new = chosen[:, None]
    return Generated(tokens[:, : prompt_length + generated], scores, lengths)


def _as_tuple(end_token: int | Sequence[int]) -> tuple[int, ...]:
    ends = (end_token,) if isinstance(end_token, int) else tuple(end_token)
    if not ends:
        raise ValueError("end_token: give at least one token id that ends a sequence")
    return ends


def _check(
    prompt: torch.Tensor,
    max_new_tokens: int,
    beams: int,
    top_p: float | None,
    temperature: float,
    min_new_tokens: int,
) -> None:
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(
            f"prompt must be (batch, length >= 1) token ids, got {tuple(prompt.shape)}"
        )
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if beams < 1:
        raise ValueError(f"beams must be at least 1, got {beams}")
    if top_p is not None and not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {top_p}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {min_new_tokens}")
