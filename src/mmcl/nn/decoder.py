"""A causal (pre-LN) transformer decoder that may cross-attend to a context, with a KV cache.

The layout is open_clip's `MultimodalTransformer` (CoCa's multimodal text decoder): per layer a
causal self-attention block (`resblocks.i`) and then, when there is a context, a cross-attention
block (`cross_attn.i`), each with its own MLP; `ln_final`; and a projection to `output_dim`
(the vocabulary, for a language-model head).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmcl.nn.kv_cache import KVCache
from mmcl.nn.layers import LayerNorm
from mmcl.nn.transformer import CrossAttentionBlock, ResidualAttentionBlock


class CausalDecoder(nn.Module):
    """``(batch, tokens, width)`` embeddings (and a context) -> ``(batch, tokens, output_dim)``.

    `context_width`: the width of the tokens cross-attended to (None: no cross-attention, a
    plain GPT-style decoder). `output_dim` None leaves the final states unprojected.

    Incremental decoding: pass a `KVCache` and, at each step, only the new tokens' embeddings
    (positions are the caller's business: it embeds them); the result equals the full causal
    forward's last positions. The context's keys and values are projected at the first step.

    >>> import torch
    >>> from mmcl.nn import CausalDecoder, KVCache
    >>> decoder = CausalDecoder(16, layers=2, heads=4, mlp_width=32, context_width=8,
    ...                         output_dim=10).eval()
    >>> x, image = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    >>> full = decoder(x, image)
    >>> cache = KVCache()
    >>> steps = [decoder(x[:, i : i + 1], image, cache=cache) for i in range(5)]
    >>> bool(torch.allclose(torch.cat(steps, 1), full, atol=1e-5))
    True
    """

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_width: int,
        context_width: int | None = None,
        output_dim: int | None = None,
        quick_gelu: bool = False,
    ):
        super().__init__()
        self.width = width
        self.layers = layers
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_width, quick_gelu) for _ in range(layers)
        )
        self.cross_attn = None
        if context_width is not None:
            self.cross_attn = nn.ModuleList(
                CrossAttentionBlock(width, heads, mlp_width, context_width, quick_gelu)
                for _ in range(layers)
            )
        self.ln_final = LayerNorm(width)
        self.text_projection = None
        if output_dim is not None:
            self.text_projection = nn.Parameter(torch.empty(width, output_dim))
            nn.init.normal_(self.text_projection, std=width**-0.5)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """`mask`: extra self-attention mask (e.g. key padding), on top of the causal one.
        `context_mask`: True where a query may attend to a context token."""
        if (context is None) != (self.cross_attn is None):
            raise ValueError(
                "this decoder cross-attends: pass a context"
                if context is None
                else "this decoder has no cross-attention: context must be None"
            )
        checkpointing = self.grad_checkpointing and torch.is_grad_enabled() and cache is None
        for index, block in enumerate(self.resblocks):
            if checkpointing:
                x = checkpoint(block, x, True, None, mask, use_reentrant=False)
            else:
                x = block(x, causal=True, mask=mask, cache=cache)
            if self.cross_attn is not None:
                cross = self.cross_attn[index]
                if checkpointing:
                    x = checkpoint(cross, x, context, context_mask, use_reentrant=False)
                else:
                    x = cross(x, context, mask=context_mask, cache=cache)
        x = self.ln_final(x)
        return x if self.text_projection is None else x @ self.text_projection
