"""CoCa's image and unimodal text towers, in open_clip's layout (Yu et al. 2022, Figure 2).

- Image: the CLIP ViT, whose final tokens go through an attentional pooler; its first query is
  the contrastive feature, the others are the tokens the captioner attends to. (open_clip's
  "original CoCa setup", which it notes does not quite match the paper: one pooler, then
  `ln_post`, then the split. Without the pooler, coca_base's case, the class token is the
  feature and the patch tokens are the caption context.)
- Text: the CLIP causal text transformer with a learned class token appended after the text;
  its final state is the text feature, the text tokens' states feed the multimodal decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mmcl.models.config import CoCaTextConfig, CoCaVisionConfig
from mmcl.models.vision_transformer import VisionTransformer
from mmcl.nn import AttentionalPooler, KVCache, LayerNorm, Transformer, causal_mask


class CoCaVisionTransformer(VisionTransformer):
    """`VisionTransformer` plus the attentional pooler (`attn_pool`); `forward_tokens` gives
    the features and the captioning tokens of one pass."""

    def __init__(self, config: CoCaVisionConfig, output_dim: int, quick_gelu: bool = False):
        super().__init__(config, output_dim, quick_gelu)
        self.attn_pool = None
        if config.attentional_pool:
            self.attn_pool = AttentionalPooler(
                output_dim, config.width, config.attn_pooler_heads, config.attn_pooler_queries
            )
            # The pooled tokens are output_dim wide: the final norm and projection act there.
            self.ln_post = LayerNorm(output_dim)
            self.proj = nn.Parameter(config.width**-0.5 * torch.randn(output_dim, output_dim))

    def forward(
        self, images: torch.Tensor, prompt_embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.attn_pool is None:  # the class token alone: CLIP's path computes just it
            return super().forward(images, prompt_embeddings)
        return self.forward_tokens(images, prompt_embeddings)[0]

    def forward_tokens(
        self, images: torch.Tensor, prompt_embeddings: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image features (batch, output_dim), captioning tokens (batch, n, width))``;
        ``n`` is the pooler's queries less one, or the patches without a pooler."""
        x = self.embed_tokens(images)
        if prompt_embeddings is not None:
            x = torch.cat([x[:, :1], self._check_prompts(x, prompt_embeddings), x[:, 1:]], dim=1)
        x = self.transformer(self.ln_pre(x))
        if self.attn_pool is not None:
            x = self.attn_pool(x)
        x = self.ln_post(x)
        return x[:, 0] @ self.proj, x[:, 1:]

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn_pool is None:
            return super().pool(x)
        return self.ln_post(self.attn_pool(x)[:, 0]) @ self.proj


class CoCaTextTransformer(nn.Module):
    """Causal text transformer with a class token appended after the text (open_clip's
    `TextTransformer` with ``embed_cls``); the names are open_clip's.

    Texts are computed at their full length (open_clip's `context_length`, 76 for the coca_*
    models): the class token's position is that length, so trimming the padding would change
    its positional embedding and the features. Longer rows whose extra columns are all padding
    (`mmcl.tokenize`'s default 77) are cut to the context length first.

    Keys of padding: open_clip's CoCa masks the key *after* each `pad_id` token (its
    ``correct_cls_mask=False``, the mask the released weights were trained with; open_clip
    calls the other one correct): every text token sees only real tokens before it either way,
    but the class token sees the first padding position and not itself. mmcl reproduces that,
    so open_clip's weights give open_clip's features.
    """

    def __init__(self, config: CoCaTextConfig, output_dim: int, quick_gelu: bool = False):
        super().__init__()
        self.context_length = config.context_length
        self.vocab_size = config.vocab_size
        self.pad_id = config.pad_id
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.cls_emb = nn.Parameter(torch.empty(config.width))
        self.positional_embedding = nn.Parameter(
            torch.empty(config.context_length + 1, config.width)
        )
        self.transformer = Transformer(
            config.width, config.layers, config.heads, config.mlp_width, quick_gelu
        )
        self.ln_final = LayerNorm(config.width)
        self.text_projection = nn.Parameter(torch.empty(config.width, output_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features ``(batch, output_dim)`` of ``tokens`` ``(batch, length)``."""
        return self.forward_tokens(tokens)[0]

    def forward_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(text features (batch, output_dim), token states (batch, length, width))``; the
        token states are not normalised (open_clip feeds them to the decoder as they are)."""
        tokens = self._fit(tokens)
        x = self.transformer(self._embed(tokens), mask=self.attention_mask(tokens))
        return self.ln_final(x[:, -1]) @ self.text_projection, x[:, :-1]

    def attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(batch, 1, length + 1, length + 1)``: causal, and no key right after a pad."""
        batch, length = tokens.shape
        seen = torch.ones(batch, 1, dtype=torch.bool, device=tokens.device)
        keys = torch.cat([seen, tokens != self.pad_id], dim=1)  # shifted by one, as open_clip
        return causal_mask(length + 1, device=tokens.device) & keys[:, None, None, :]

    def step(self, new_tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The token states of ``(rows, new)`` tokens after those already in `cache` (whose
        `advance` the caller has called with them): ``(rows, new, width)``, equal to
        `forward_tokens`'s for those positions (the class token comes after and is not seen)."""
        history = cache.tokens  # every token so far, the new ones included
        total, new = history.shape[1], new_tokens.shape[1]
        if total > self.context_length:
            raise ValueError(f"{total} tokens exceed the text context length {self.context_length}")
        x = self.token_embedding(new_tokens)
        x = x + self.positional_embedding[total - new : total].to(x.dtype)
        mask = None
        if (history[:, :-1] == self.pad_id).any():  # a pad among the keys: mask its follower
            mask = self.attention_mask(history)[:, :, total - new : total, :total]
        return self.transformer(x, causal=mask is None, mask=mask, cache=cache)

    def forward_intermediates(
        self,
        tokens: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        stop_early: bool = False,
        normalize_intermediates: bool = False,
        intermediates_only: bool = False,
        output_fmt: str = "NLC",
        output_extra_tokens: bool = False,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """open_clip's: ``text_intermediates`` (the text positions), with
        `output_extra_tokens` ``text_intermediates_suffix`` (the class token), and unless
        `intermediates_only` ``text_features``."""
        if output_fmt != "NLC":
            raise ValueError(f"output_fmt must be 'NLC' for text, got {output_fmt!r}")
        tokens = self._fit(tokens)
        x, intermediates = self.transformer.forward_intermediates(
            self._embed(tokens), False, indices, stop_early, mask=self.attention_mask(tokens)
        )
        if normalize_intermediates:
            intermediates = [self.ln_final(y) for y in intermediates]
        output = {"text_intermediates": [y[:, :-1] for y in intermediates]}
        if output_extra_tokens:
            output["text_intermediates_suffix"] = [y[:, -1:] for y in intermediates]
        if not intermediates_only:
            output["text_features"] = self.ln_final(x[:, -1]) @ self.text_projection
        return output

    def _fit(self, tokens: torch.Tensor) -> torch.Tensor:
        """`tokens` cut to the context length where only padding is past it; else refused."""
        if tokens.shape[1] > self.context_length and bool(
            (tokens[:, self.context_length :] == self.pad_id).all()
        ):
            # Only padding past the context (CLIP's 77-token rows): the same as texts
            # tokenized to the context length, which is what open_clip's CoCa tokenizer gives.
            tokens = tokens[:, : self.context_length]
        if tokens.shape[1] > self.context_length:
            raise ValueError(
                f"texts of {tokens.shape[1]} tokens exceed CoCa's context length "
                f"{self.context_length}: tokenize with context_length={self.context_length}"
            )
        return tokens

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens)
        cls = self.cls_emb.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([x, cls], dim=1)
        return x + self.positional_embedding[: x.shape[1]].to(x.dtype)
