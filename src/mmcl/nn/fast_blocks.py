"""Fast transformer blocks, LayerNorms and folded convolutions, the modules `mmcl.nn.accelerate`
swaps in (the linear layers: `mmcl.nn.fast_linear`).

- Attention with masks, contexts and a KV cache (CPU bf16; float32 with ``pack_fp32``): the
  projections packed once, and for a decoding step's one query a row mmcl's kernel
  (`mmcl.nn.kernels.decode_attention`, where built) or plain matmuls in place of flash
  attention.
- Self-attention (CPU bf16): the fused QKV weight packed once, and mmcl's AMX kernel for short
  sequences (`mmcl.nn.kernels.short_attention`, up to 320 tokens) in place of PyTorch's flash
  attention, which is built for long ones.
- Residual blocks (CPU bf16): both residual additions run inside the output projections'
  matmuls.
- LayerNorms (CPU, bf16 or fp16): PyTorch's kernel for a 16-bit input normalises in float32
  whatever its parameters' dtype, and converts 16-bit parameters to float32 for every row;
  given float32 copies it skips that and gives the same bits.
- Convolution + BatchNorm (+ ReLU), any device and dtype: eval-mode BatchNorm is an affine map
  with fixed statistics, folded into the convolution's weight and bias (channels-last); on CPUs
  in bf16 oneDNN also applies the ReLU in the convolution's epilogue.

As in `mmcl.nn.fast_linear`, each module computes what the one it replaces computes, the plain
way wherever its shortcut does not apply, with the replaced module's parameters.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mmcl.nn import kernels
from mmcl.nn.attention import MultiheadAttention, MultiheadSelfAttention
from mmcl.nn.fast_linear import (
    DerivedTensor,
    FusedMlp,
    InferenceOnly,
    adopt,
    hooked,
    is_compiling,
    linear_with,
    on_fast_path,
    pack,
    packed_linear,
    records_gradients,
)
from mmcl.nn.layers import LayerNorm
from mmcl.nn.masks import causal_mask, merge_masks
from mmcl.nn.transformer import ResidualAttentionBlock

LOW_PRECISION = (torch.bfloat16, torch.float16)
_FEW_QUERIES = 4  # up to this many queries a row, FastAttention attends with plain matmuls
_NORM_MIN_ELEMENTS = 1 << 18  # below this, the fused norm's fixed checks cost more than it saves


class FastLayerNorm(InferenceOnly, LayerNorm):
    """`mmcl.nn.LayerNorm` that, for a large 16-bit CPU input, normalises with cached float32
    copies of its 16-bit parameters (the same bits, one conversion fewer per row)."""

    @classmethod
    def replacing(cls, norm: LayerNorm) -> FastLayerNorm:
        new = adopt(cls, norm)
        new._float_params = DerivedTensor()
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if (
            x.numel() >= _NORM_MIN_ELEMENTS
            and x.device.type == "cpu"
            and x.dtype in LOW_PRECISION
            and weight is not None
            and bias is not None
            and x.dtype == weight.dtype == bias.dtype
            and not is_compiling()
            and not records_gradients(x, weight, bias)
        ):
            float_weight, float_bias = self._float_params.get(
                (weight, bias), lambda: (weight.detach().float(), bias.detach().float())
            )
            return F.layer_norm(x, self.normalized_shape, float_weight, float_bias, self.eps)
        return super().forward(x)


class FastSelfAttention(InferenceOnly, MultiheadSelfAttention):
    """`MultiheadSelfAttention` with packed projections, the AMX attention kernel, and an
    optional residual added inside the output projection."""

    @classmethod
    def replacing(cls, attention: MultiheadSelfAttention) -> FastSelfAttention:
        new = adopt(cls, attention)
        new._packed = {}  # row block of the fused projection -> DerivedTensor
        return new

    def _project(self, x: torch.Tensor, rows: tuple[int, int] | None) -> torch.Tensor:
        # A row block of the fused QKV projection, with its own packed weight.
        weight, bias = self.in_proj_weight, self.in_proj_bias
        if rows is not None:
            weight, bias = weight[rows[0] : rows[1]], bias[rows[0] : rows[1]]
        cache = self._packed.setdefault(rows, DerivedTensor())
        return packed_linear(x, cache.get((self.in_proj_weight,), lambda: pack(weight)), bias)

    def forward(
        self,
        x: torch.Tensor,
        causal: bool = False,
        query_positions: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache=None,
    ) -> torch.Tensor:
        """As `MultiheadSelfAttention.forward`, plus `residual`, added to the output. With a
        mask or a cache it computes the plain way."""
        params = (self.in_proj_weight, self.in_proj_bias, residual)
        if mask is not None or cache is not None or not on_fast_path(self, x, *params):
            out = super().forward(x, causal, query_positions, mask=mask, cache=cache)
            return out if residual is None else residual + out
        batch, tokens, width = x.shape
        head_dim = width // self.heads
        mask = None
        if query_positions is not None:
            asking = x[torch.arange(batch, device=x.device), query_positions].unsqueeze(1)
            query = self._project(asking, (0, width)).view(batch, 1, self.heads, head_dim)
            query = query.transpose(1, 2)
            key_value = self._project(x, (width, 3 * width))
            key, value = key_value.view(batch, tokens, 2, self.heads, head_dim).permute(
                2, 0, 3, 1, 4
            )
            if causal:  # (batch, 1, 1, tokens): keys up to each row's query position
                keys = torch.arange(tokens, device=x.device)
                mask = (keys <= query_positions.unsqueeze(1)).view(batch, 1, 1, tokens)
            causal = False
        else:
            qkv = self._project(x, None)
            out = kernels.short_attention(qkv, self.heads, causal)  # None where it does not fit
            if out is not None:
                return linear_with(self.out_proj, out, residual=residual)
            qkv = qkv.view(batch, tokens, 3, self.heads, head_dim)
            query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=causal)
        out = out.transpose(1, 2).reshape(batch, query.shape[2], width)
        return linear_with(self.out_proj, out, residual=residual)


class FastAttention(InferenceOnly, MultiheadAttention):
    """`MultiheadAttention` (self or cross, any mask, a `KVCache`) with its projections packed
    once: the fused QKV of self-attention; the query, and the keys and values of a context.
    Decoding one token a step is nothing but small matmuls over these weights, so the
    re-layout a plain `F.linear` does on every call is most of a step's cost there."""

    @classmethod
    def replacing(cls, attention: MultiheadAttention) -> FastAttention:
        new = adopt(cls, attention)
        new._packed = {}  # (first, stop) projection rows -> DerivedTensor
        return new

    def _projection(self, x: torch.Tensor, first: int, stop: int) -> torch.Tensor:
        bias = self.in_proj_bias[first * self.width : stop * self.width]
        if not on_fast_path(self, x, self.in_proj_bias, self.out_proj.weight):
            return super()._projection(x, first, stop)
        sources = tuple(
            getattr(self, name)
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
            if hasattr(self, name)
        )
        packed = self._packed.setdefault((first, stop), DerivedTensor())
        return packed_linear(x, packed.get(sources, lambda: pack(self._weight(first, stop))), bias)

    def _context_keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Computed once per caption and read at every step: laid out for the matmuls once
        # (as views of the projection, each step's matmul would copy them).
        keys_values = super()._context_keys_values(context)
        if not on_fast_path(self, context, self.in_proj_bias):
            return keys_values
        return tuple(t.contiguous() for t in keys_values)

    def _attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        causal: bool,
    ) -> torch.Tensor:
        # PyTorch's CPU flash attention is blocked for many queries: with one query a row (a
        # decoding step) mmcl's kernel (one pass per row and head) or, without it, two
        # batched matmuls and a softmax are 2-10x faster (bf16 most).
        queries = query.shape[2]
        if queries > _FEW_QUERIES or not on_fast_path(self, query, self.in_proj_bias):
            return super()._attention(query, key, value, mask, causal)
        if causal and queries > 1:
            mask = merge_masks(mask, causal_mask(queries, key.shape[2], device=query.device))
        out = kernels.decode_attention(query, key, value, mask)
        if out is not None:
            return out
        scores = (query @ key.transpose(-1, -2)).float() * query.shape[-1] ** -0.5
        if mask is None:
            return scores.softmax(dim=-1).to(value.dtype) @ value
        probs = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        blind = ~mask.any(dim=-1, keepdim=True)  # no key allowed: zeros, as `attend` gives
        return probs.masked_fill(blind, 0.0).to(value.dtype) @ value


class FastResidualAttentionBlock(InferenceOnly, ResidualAttentionBlock):
    """`ResidualAttentionBlock` whose residual additions ride in the output projections."""

    @classmethod
    def replacing(cls, block: ResidualAttentionBlock) -> FastResidualAttentionBlock:
        return adopt(cls, block)

    def forward(
        self,
        x: torch.Tensor,
        causal: bool = False,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache=None,
    ) -> torch.Tensor:
        attn, mlp = self.attn, self.mlp
        if (
            mask is not None  # the fast path has neither a mask nor a cache
            or cache is not None
            or type(attn) is not FastSelfAttention
            or type(mlp) is not FusedMlp
            or hooked(attn, mlp)  # hooks see the sublayers' own outputs
        ):
            return super().forward(x, causal, positions, mask, cache)
        kept = x
        if positions is not None:
            kept = x[torch.arange(len(x), device=x.device), positions].unsqueeze(1)
        x = attn(self.ln_1(x), causal=causal, query_positions=positions, residual=kept)
        return mlp(self.ln_2(x), residual=x)


class FoldedBatchNorm2d(InferenceOnly, nn.BatchNorm2d):
    """A BatchNorm folded into the convolution before it (`FoldedConv2d`): it keeps its
    parameters and statistics (the state dict is unchanged) and passes its input through."""

    @classmethod
    def replacing(cls, norm: nn.BatchNorm2d) -> FoldedBatchNorm2d:
        return adopt(cls, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class FoldedConv2d(InferenceOnly, nn.Conv2d):
    """``relu(norm(conv(x)))`` (`relu` optional) as one convolution: in eval mode the
    BatchNorm's affine map is folded into the weight and bias (cached); while training or
    recording gradients, the three are computed as they are."""

    @classmethod
    def replacing(cls, conv: nn.Conv2d, norm: FoldedBatchNorm2d, relu: bool) -> FoldedConv2d:
        new = adopt(cls, conv)
        new._norm = [norm]  # in a list: the norm stays registered where it was, not here
        new.relu = relu
        new._folded = DerivedTensor()
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self._norm[0]
        params = (self.weight, self.bias, norm.weight, norm.bias)
        if self.training or norm.training or is_compiling() or records_gradients(x, *params):
            out = nn.BatchNorm2d.forward(norm, super().forward(x))  # the norm's own computation
            return F.relu(out) if self.relu else out
        sources = (*params, norm.running_mean, norm.running_var)
        weight, bias = self._folded.get(sources, lambda: _fold(self, norm))
        if on_fast_path(self, x, weight):
            geometry = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
            unary = "relu" if self.relu else "none"
            return torch.ops.mkldnn._convolution_pointwise(
                x, weight, bias, *geometry, unary, [], ""
            )
        out = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return out.relu_() if self.relu else out


@torch.no_grad()
def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    # BN(y) = (y - mean) * gamma / sqrt(var + eps) + beta, per output channel; folded in float32
    # whatever the model's dtype, so 16-bit weights are rounded once, not twice.
    scale = torch.rsqrt(norm.running_var.float() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.float()
    shift = -norm.running_mean.float() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.float()
    if conv.bias is not None:
        shift = shift + conv.bias.float() * scale
    weight = conv.weight.float() * scale.view(-1, 1, 1, 1)
    dtype = conv.weight.dtype
    weight = weight.to(dtype).contiguous(memory_format=torch.channels_last)
    return weight, shift.to(dtype)
