"""A generation step over a transformers causal LM, for mmcl's one loop (`mmcl.nn.generation`).

The first step embeds the whole prompt (a bridge writes its image tokens into it there, once);
later steps embed one token per row. The LM's own cache object holds the keys and values; the
loop's `KVCache` holds this step's attention mask and row order as a constant entry, so when
the loop drops finished rows the step drops the same rows from the LM's cache. Positions are
counted over the attention mask, as `transformers`' `generate` counts them, so left-padded
batches decode as they do there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from mmcl.nn.kv_cache import KVCache


class CausalLMStep:
    """``step(new_tokens, cache) -> next-token logits`` for `mmcl.nn.generation.generate`.

    `embed_prompt` maps the prompt's ids ``(rows, length)`` to input embeddings; `attention_mask`
    ``(rows, length)`` marks the prompt's real tokens (None: all are)."""

    def __init__(
        self,
        language_model: torch.nn.Module,
        embed_prompt: Callable[[torch.Tensor], torch.Tensor],
        attention_mask: torch.Tensor | None = None,
    ):
        self.language_model = language_model
        self.embed_prompt = embed_prompt
        self.attention_mask = attention_mask
        self.lm_cache = None  # the LM's own cache object, created by its first call
        # transformers 5 names the cache argument `cache`; earlier versions `past_key_values`.
        parameters = inspect.signature(language_model.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"

    def __call__(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        rows = tokens.shape[0]
        if cache.advance(tokens) == 0:
            mask = self.attention_mask
            if mask is None:
                mask = torch.ones_like(tokens)
            embeddings = self.embed_prompt(tokens)
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
            position_ids=positions[:, -tokens.shape[1] :],
            use_cache=True,
            **{self.cache_argument: self.lm_cache},
        )
        self.lm_cache = getattr(output, self.cache_argument)
        self._rows = torch.arange(rows, device=tokens.device)
        cache.put(self, (mask, self._rows))  # the loop selects rows of both with its own
        return output.logits[:, -1]
