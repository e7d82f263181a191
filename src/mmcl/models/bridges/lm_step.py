"""Decoding a Hugging Face causal LM with mmcl's one generation loop (`mmcl.nn.generation`).

The LM keeps its keys and values in its own cache object; mmcl's `KVCache` carries, as one
constant entry, this step's state: that object, the attention mask so far and the rows
still decoding. When the loop drops finished rows it selects rows of every constant entry,
which for this entry means `index_select`: the LM's cache and the mask follow. Positions
are counted over the attention mask as `transformers`' `generate` counts them (left padding
takes no position), so batches decode token for token as they do there.

Beam search reorders only growing entries (it shares constants between beams), so the LM's
cache would not follow its beams: `lm_generate` refuses ``beams > 1``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mmcl.nn.generation import Generated, generate
from mmcl.nn.kv_cache import KVCache


class _LMState:
    """The LM's cache object and the attention mask ``(rows, seen)``, selected together."""

    def __init__(self, lm_cache, mask: torch.Tensor):
        self.lm_cache, self.mask = lm_cache, mask

    @property
    def device(self) -> torch.device:
        return self.mask.device

    def index_select(self, dim: int, rows: torch.Tensor) -> _LMState:
        self.lm_cache.batch_select_indices(rows)  # in place, as transformers does it
        return _LMState(self.lm_cache, self.mask.index_select(dim, rows))


def lm_step(
    language_model: torch.nn.Module,
    embed_prompt: Callable[[torch.Tensor], torch.Tensor],
    attention_mask: torch.Tensor | None = None,
) -> Callable[[torch.Tensor, KVCache], torch.Tensor]:
    """A step for `mmcl.nn.generation.generate`: the first call embeds the prompt with
    `embed_prompt` (where a bridge writes its image embeddings in), later ones look the new
    tokens up in the LM's input embeddings. `attention_mask` ``(rows, embedded length)``: 1
    at the embedded prompt's real positions (None: all real)."""

    def step(tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        first = cache.advance(tokens) == 0
        if first:
            embeddings = embed_prompt(tokens)  # may be longer than `tokens`: prompts before it
            mask = attention_mask
            if mask is None:
                mask = torch.ones(embeddings.shape[:2], dtype=torch.long, device=tokens.device)
            state = _LMState(None, mask.long())
        else:
            state = cache.constant(step, _no_prompt)
            state.mask = torch.cat([state.mask, state.mask.new_ones(tokens.shape)], dim=1)
            embeddings = language_model.get_input_embeddings()(tokens)
        positions = (state.mask.cumsum(-1) - 1).masked_fill(state.mask == 0, 0)
        output = language_model(
            inputs_embeds=embeddings,
            attention_mask=state.mask,
            position_ids=positions[:, -embeddings.shape[1] :],
            cache=state.lm_cache,
            use_cache=True,
        )
        state.lm_cache = output.cache
        cache.put(step, state)
        return output.logits[:, -1]

    return step


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
    `attention_mask` covers what `embed_prompt` gives (with prompts put before the text,
    longer than `prompt`)."""
    if beams != 1:
        raise ValueError(
            "beams: beam search over a Hugging Face language model is not supported yet; use "
            "beams=1 (greedy) or top_p (sampling)"
        )
    config = language_model.config
    end = config.eos_token_id if end_token is None else end_token
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    step = lm_step(language_model, embed_prompt, attention_mask)
    return generate(step, prompt, KVCache(), max_new_tokens, end, pad, **options)


def _no_prompt():
    raise ValueError("the LM step's first call must carry the prompt")
