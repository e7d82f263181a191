"""A generation step over a transformers causal LM, for mmcl's one loop (`mmcl.nn.generation`).

The first step embeds the whole prompt (a bridge writes its image tokens into it there, once)
and asks the LM for the last position's logits only; later steps embed one token per row. The
LM's own cache object holds the keys and values (one whose layers write in place, with room
for every position the loop may decode: `mmcl.models.bridges.lm_cache`); the loop's `KVCache`
tracks this step's attention mask and row order (`KVCache.track`), so when the loop drops
finished rows, expands a prompt into beams or reorders beams, the step applies the same rows
to the LM's cache (`reorder_cache`, as transformers' beam search does). Positions are counted over the attention
mask, as `transformers`' `generate` counts them, so left-padded batches decode as they do
there. Beam search follows transformers' rules by default (``beam_rules="transformers"``), so
`num_beams` gives their tokens.

A bridge that chats (`mmcl.eval.chat`, the scene VQA suite, the bridges recipes) answers
the same few questions whatever is inside it: `image_size`, `image_token_id`,
`tokens_per_image`, `encode_image(pixel_values)` (the LM-wide image tokens) and
`embed(input_ids, image_tokens)` (`splice_image_tokens`). LLaVA, BLIP-2 and MiniGPT-4 do.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from mmcl.models.bridges.lm_cache import reserve, reserved_cache
from mmcl.nn.generation import Generated, generate
from mmcl.nn.kv_cache import KVCache


class CausalLMStep:
    """``step(new_tokens, cache) -> next-token logits`` for `mmcl.nn.generation.generate`.

    `embed_prompt` maps the prompt's ids ``(rows, length)`` to input embeddings (a bridge may
    put image prompts before them, so they may be longer); `attention_mask` ``(rows, embedded
    length)`` marks the real positions (None: all are)."""

    def __init__(
        self,
        language_model: torch.nn.Module,
        embed_prompt: Callable[[torch.Tensor], torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        lm_cache=None,
    ):
        self.language_model = language_model
        self.embed_prompt = embed_prompt
        self.attention_mask = attention_mask
        # The LM's own cache object, created by its first call; or given, holding the keys and
        # values of tokens before the prompt (an earlier turn of a chat), which
        # `attention_mask` then covers too.
        self.lm_cache = lm_cache
        # transformers 5 names the cache argument `cache`; earlier versions `past_key_values`.
        parameters = inspect.signature(language_model.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        # The prompt's step needs one position's logits, not (prompt length x vocabulary).
        self.last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}

    def __call__(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        rows = tokens.shape[0]
        if cache.advance(tokens) == 0:
            embeddings = self.embed_prompt(tokens)
            mask = self.attention_mask
            if mask is None:
                mask = torch.ones(embeddings.shape[:2], dtype=torch.long, device=tokens.device)
            # Without padding the LM needs no mask, and asking it to check one costs every step
            # (transformers then inspects it each time); later steps only add real positions.
            self.padded = not bool(mask.all())
            if self.lm_cache is None:
                self.lm_cache = reserved_cache(self.language_model)
            if self.lm_cache is not None:  # room for the prompt and the tokens to come
                past = self.lm_cache.get_seq_length()
                later = max(0, cache.reserved - cache.seen)
                reserve(self.lm_cache, past + embeddings.shape[1] + later)
        else:
            mask, kept = cache.tracked(self)
            if len(kept) != len(self._rows) or not torch.equal(kept, self._rows):
                self.lm_cache.reorder_cache(kept)
            mask = torch.cat([mask, mask.new_ones(rows, tokens.shape[1])], dim=1)
            embeddings = self.language_model.get_input_embeddings()(tokens)
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        output = self.language_model(
            inputs_embeds=embeddings,
            attention_mask=mask if self.padded else None,
            position_ids=positions[:, -embeddings.shape[1] :],
            use_cache=True,
            **{self.cache_argument: self.lm_cache},
            **self.last_logits_only,
        )
        self.lm_cache = getattr(output, self.cache_argument)
        self._rows = torch.arange(rows, device=tokens.device)  # the LM cache's rows as they are
        cache.track(self, mask, self._rows)  # the loop selects rows of both
        return output.logits[:, -1]


def splice_image_tokens(
    language_model: torch.nn.Module,
    input_ids: torch.Tensor,
    image_token_id: int,
    image_tokens: torch.Tensor | None,
    tokens_per_image: int,
) -> torch.Tensor:
    """The LM's input embeddings of `input_ids`, with `image_tokens` ``(images, tokens,
    width)`` written over the placeholders (`image_token_id`), in order, row by row."""
    placeholders = input_ids == image_token_id
    # A placeholder id may lie outside the vocabulary (LLaVA's original -200): look up 0.
    embeddings = language_model.get_input_embeddings()(input_ids.masked_fill(placeholders, 0))
    found = int(placeholders.sum())
    given = 0 if image_tokens is None else image_tokens.shape[0] * image_tokens.shape[1]
    if found != given:
        raise ValueError(
            f"input_ids hold {found} image placeholders (id {image_token_id}) but "
            f"{given // tokens_per_image} image(s) give {given} image tokens; each image needs "
            f"{tokens_per_image} placeholders (expand <image> into that many)"
        )
    if found == 0:
        return embeddings
    flat = image_tokens.reshape(-1, image_tokens.shape[-1]).to(embeddings.dtype)
    return embeddings.masked_scatter(placeholders.unsqueeze(-1), flat)


@torch.no_grad()
def answer_tokens(
    bridge: torch.nn.Module,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor,
    attention_mask: torch.Tensor | None,
    max_new_tokens: int,
    end_token: int,
    pad_token: int,
    **options,
) -> torch.Tensor:
    """A chatting bridge's answer ids ``(batch, new)`` after (left-padded) prompts: the images
    encoded once, then mmcl's loop over the LM (greedy unless `options` say ``top_p``)."""
    image_tokens = bridge.encode_image(pixel_values)
    step = CausalLMStep(
        bridge.language_model, lambda ids: bridge.embed(ids, image_tokens), attention_mask
    )
    result = generate(step, input_ids, KVCache(), max_new_tokens, end_token, pad_token, **options)
    return result.tokens[:, input_ids.shape[1] :]


def lm_generate(
    language_model: torch.nn.Module,
    embed_prompt: Callable[[torch.Tensor], torch.Tensor],
    prompt: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 30,
    end_token: int | None = None,
    beams: int = 1,
    length_penalty: float = 1.0,
    beam_rules: str = "transformers",
    pad_token: int | None = None,
    **options,
) -> Generated:
    """`generate` over the LM: greedy, beam search (``beams > 1``, `length_penalty`, with
    transformers' rules unless ``beam_rules="exact"``) or nucleus sampling (`top_p`), ending at
    `end_token` (default: its config's `eos_token_id`) and padding with its `pad_token_id`.
    `attention_mask` covers what `embed_prompt` gives. `pad_token`: the LM's `pad_token_id`
    (else 0) by default."""
    config = language_model.config
    end = config.eos_token_id if end_token is None else end_token
    pad = config.pad_token_id if pad_token is None else pad_token
    pad = 0 if pad is None else pad
    step = CausalLMStep(language_model, embed_prompt, attention_mask)
    return generate(
        step,
        prompt,
        KVCache(),
        max_new_tokens,
        end,
        pad,
        beams=beams,
        length_penalty=length_penalty,
        beam_rules=beam_rules,
        **options,
    )
