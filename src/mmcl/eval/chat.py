"""A conversation with a bridge (LLaVA, BLIP-2, MiniGPT-4) about one image (what `mmcl ask` runs).

The image is encoded once, when the chat starts. Each question is answered from the chat
template's prompt over the whole conversation so far (`ConversationEncoder.encode_prompt`:
the same ids a one-shot call with that history would see), but only the ids the language
model has not seen yet are run through it: the LM's key/value cache is kept from turn to turn.
The cache holds the ids of the earlier prompts and the *generated* answer tokens; the next
prompt spells the answers as text, and a text that tokenizes differently from the tokens
that produced it (or an answer cut by `max_new_tokens`, which lacks its end token) makes the
two part ways. The cache is then cut back to their common prefix and the rest is run anew,
so every answer equals the one-shot answer for the same history.

With beam search (``beams > 1``, transformers' rules) the cache ends holding the beams, not
the answer chosen: it is cut back to the prompt (which every beam shares), and the next turn
runs the answer's tokens and its own.
"""

from __future__ import annotations

import torch

from mmcl.data.chat_template import ChatTemplate, ConversationEncoder
from mmcl.data.conversations import IMAGE_PLACEHOLDER


class ImageChat:
    """``chat.ask(question) -> answer``, remembering the turns in `history`.

    `model`: a `Llava`, `Blip2` or `MiniGPT4`; `tokenizer`: its transformers tokenizer; `pixel_values` ``(1, 3, H, W)``:
    the preprocessed image. `history` may be edited between questions (the next prompt
    spells it, and the cache follows the prompt). `template`: the chat template (Vicuna v1's
    by default). Greedy answers unless `top_p` (nucleus sampling, seeded by `seed`) or `beams`
    (beam search, as transformers' ``generate(num_beams=...)``).
    """

    def __init__(
        self,
        model,
        tokenizer,
        pixel_values: torch.Tensor,
        template: ChatTemplate | None = None,
        max_new_tokens: int = 64,
        top_p: float | None = None,
        seed: int = 0,
        beams: int = 1,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.beams = beams
        self.encoder = ConversationEncoder(
            tokenizer, model.image_token_id, model.tokens_per_image, template or ChatTemplate()
        )
        self.max_new_tokens, self.top_p = max_new_tokens, top_p
        self.device = pixel_values.device
        self.generator = None
        if top_p is not None:
            self.generator = torch.Generator(self.device).manual_seed(seed)
        with torch.no_grad():
            self.image_tokens = model.encode_image(pixel_values)  # (1, tokens, LM width)
        self.history: list[tuple[str, str]] = []
        self.lm_cache = None  # the LM's cache, holding the keys and values of `cached_ids`
        self.cached_ids: list[int] = []

    @torch.no_grad()
    def ask(self, question: str) -> str:
        from mmcl.models.bridges.causal_lm import CausalLMStep
        from mmcl.nn.generation import generate
        from mmcl.nn.kv_cache import KVCache

        if IMAGE_PLACEHOLDER in question:
            raise ValueError(
                f"the question holds {IMAGE_PLACEHOLDER!r}, the image's place in the prompt, "
                f"which the chat puts there itself: leave it out"
            )
        asked = question if self.history else f"{IMAGE_PLACEHOLDER}\n{question}"
        ids = self.encoder.encode_prompt(self.history, asked)
        reused = self._reuse_cache(ids)
        new_ids = torch.tensor([ids[reused:]], device=self.device)
        step = CausalLMStep(
            self.model.language_model,
            self._embed,
            torch.ones(1, len(ids), dtype=torch.long, device=self.device),
            lm_cache=self.lm_cache,
        )
        eos = self.tokenizer.eos_token_id
        result = generate(
            step,
            new_ids,
            KVCache(),
            self.max_new_tokens,
            eos,
            self.tokenizer.pad_token_id or 0,
            beams=self.beams,
            top_p=self.top_p,
            generator=self.generator,
            beam_rules="transformers",
        )
        answer_ids = result.tokens[0, new_ids.shape[1] :][: int(result.lengths[0])].tolist()
        # The loop never feeds its last token back: the cache ends one token short of it.
        self.lm_cache, self.cached_ids = step.lm_cache, ids + answer_ids[:-1]
        if self.beams > 1:
            self._keep_prompt(len(ids))
        answer = self.tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
        self.history.append((asked, answer))
        return answer

    def _reuse_cache(self, ids: list[int]) -> int:
        """How many leading `ids` the cache already holds, after cutting it back to them; at
        least one id is left to run (the step needs the last prompt token's logits)."""
        common = 0
        for cached, wanted in zip(self.cached_ids, ids, strict=False):
            if cached != wanted:
                break
            common += 1
        common = min(common, len(ids) - 1)
        if self.lm_cache is None or common == 0:
            self.lm_cache, self.cached_ids = None, []
            return 0
        if common < len(self.cached_ids):
            if not self.lm_cache.is_croppable:  # e.g. a sliding-window cache: start over
                self.lm_cache, self.cached_ids = None, []
                return 0
            # A negative count removes that many positions, in transformers 4 and 5 alike.
            self.lm_cache.crop(common - len(self.cached_ids))
            self.cached_ids = self.cached_ids[:common]
        return common

    def _keep_prompt(self, length: int) -> None:
        """Cut the cache of a beam search back to the prompt's `length` positions, one row."""
        if not self.lm_cache.is_croppable:
            self.lm_cache, self.cached_ids = None, []
            return
        extra = self.lm_cache.get_seq_length() - length
        if extra > 0:  # a negative count removes that many, in transformers 4 and 5 alike
            self.lm_cache.crop(-extra)
        self.lm_cache.batch_select_indices(torch.tensor([0], device=self.device))
        self.cached_ids = self.cached_ids[:length]

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        # The placeholders among the ids run now are the image's last ones (the image opens
        # the first question, so a cut-back cache may keep some of them).
        count = int((ids == self.model.image_token_id).sum())
        tokens = self.image_tokens[:, self.image_tokens.shape[1] - count :] if count else None
        return self.model.embed(ids, tokens)
