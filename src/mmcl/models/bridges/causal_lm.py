"""A generation step over a transformers causal LM, for mmcl's one loop (`mmcl.nn.generation`).

The first step embeds the whole prompt (a bridge writes its image tokens into it there, once);
later steps embed one token per row. The LM's own cache object holds the keys and values; the
loop's `KVCache` holds this step's attention mask and row order as a constant entry, so when
the loop drops finished rows the step drops the same rows from the LM's cache. Positions are
counted over the attention mask, as `transformers`' `generate` counts them, so left-padded
batches decode as they do there.

Beam search is not offered over it: the loop reorders only growing entries between beams, so
the LM's cache would not follow them (`lm_generate` refuses ``beams > 1``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

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

    def __call__(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        rows = tokens.shape[0]
        if cache.advance(tokens) == 0:
            embeddings = self.embed_prompt(tokens)
            mask = self.attention_mask
            if mask is None:
                mask = torch.ones(embeddings.shape[:2], dtype=torch.long, device=tokens.device)
        else:
            mask, kept = cache.constant(self, lambda: None)
            if len(kept) != len(self._rows) or not torch.equal(kept, self._rows):
                self.lm_cache.batch_select_indices(kept)
            mask = torch.cat([mask, mask.new_ones(rows, tokens.shape[1])], dim=1)
            embeddings = self.language_model.get_input_embeddings()(tokens)
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        output = self.language_model(
            inputs_embeds=embeddings,
            attention_mask=mask,
            position_ids=positions[:, -embeddings.shape[1] :],
            use_cache=True,
            **{self.cache_argument: self.lm_cache},
        )
        self.lm_cache = getattr(output, self.cache_argument)
        self._rows = torch.arange(rows, device=tokens.device)
        cache.put(self, (mask, self._rows))  # the loop selects rows of both with its own
        return output.logits[:, -1]


def lm_generate(
    language_model: torch.nn.Module,
    embed_prompt: Callable[[torch.Tensor], torch.Tensor],
    prompt: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 30,
    end_token: int | None = None,
    beams: int = 1,
    **options,
) -> Generated:
    """`generate` over the LM (greedy, or nucleus sampling with `top_p`), ending at
    `end_token` (default: its config's `eos_token_id`) and padding with its `pad_token_id`.
    `attention_mask` covers what `embed_prompt` gives."""
    if beams != 1:
        raise ValueError(
            "beams: beam search over a Hugging Face language model is not supported yet; use "
            "beams=1 (greedy) or top_p (sampling)"
        )
    config = language_model.config
    end = config.eos_token_id if end_token is None else end_token
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    step = CausalLMStep(language_model, embed_prompt, attention_mask)
    return generate(step, prompt, KVCache(), max_new_tokens, end, pad, **options)
