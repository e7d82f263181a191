"""mmcl's own CPU kernels, compiled from C++ when `mmcl.nn.accelerate` asks for them.

PyTorch covers almost everything mmcl computes. Where one of its kernels is far from what the
hardware can do at CLIP's shapes, mmcl carries a small kernel of its own, built with
`torch.utils.cpp_extension` by `build()`: once per machine and PyTorch version, cached in
PyTorch's extension folder (``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``).
`build()` runs only when called (`mmcl.nn.accelerate` calls it), never inside a forward pass.
Every kernel is optional: where the library cannot be built (no C++ compiler, another CPU, a
build that fails, takes longer than ``MMCL_KERNEL_BUILD_TIMEOUT`` seconds, or waits on a lock
left by a killed build) the same computation runs through PyTorch, after one warning that says
why; ``MMCL_NATIVE_KERNELS=0`` skips the kernels silently. The compilers are needed only here:
``pip install mmcl[kernels]`` brings ninja and setuptools.

- `short_attention`: bf16 self-attention over short sequences on CPUs with AMX. PyTorch's CPU
  flash attention targets long sequences, and spends far longer than the FLOPs need on
  ViT-B/32's 50 tokens (the README's table has the figures).
- `linear`: bf16 linear layers on CPUs with AMX, ``residual + activation(x W^T + b)`` in one
  pass, with the weight packed once (`pack_linear_weight`). oneDNN applies such epilogues after
  each output block while the tile unit idles; this kernel computes one block's epilogue while
  the next block multiplies.
"""

from __future__ import annotations

import os
import platform
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from mmcl.nn.kernels import library as _builder

__all__ = [
    "MAX_SHORT_TOKENS",
    "PackedLinearWeight",
    "amx_available",
    "build",
    "decode_attention",
    "decode_attention_op",
    "linear",
    "linear_fits",
    "linear_op",
    "pack_linear_weight",
    "short_attention",
    "short_attention_op",
    "unpack_linear_weight",
]

# Beyond this PyTorch's flash attention (blocked over keys) is the better fit.
MAX_SHORT_TOKENS = 320
MAX_DECODE_HEAD_DIM = 256  # decode_attention keeps a query's head in registers
_lock = threading.Lock()
_ops: dict[str, Callable | None] = {}  # filled by build(): the ops that passed their check
_build_failed: list[str] = []  # set once a build failed (and was reported)


def amx_available() -> bool:
    """Whether this is a Linux x86-64 CPU with AMX (bf16 tiles), which the kernels need."""
    return (
        sys.platform == "linux"
        and platform.machine() in ("x86_64", "AMD64")
        and torch.cpu._is_amx_tile_supported()
    )


def short_attention(qkv: torch.Tensor, heads: int, causal: bool = False) -> torch.Tensor | None:
    """Self-attention from a fused QKV projection, or None where the kernel does not apply.

    `qkv` is ``(batch, tokens, 3 * width)`` (queries, keys, values side by side, each split into
    `heads` heads); the result is ``(batch, tokens, width)``, the heads side by side: the same
    as `scaled_dot_product_attention` on the split heads, to bf16 rounding. It applies to
    contiguous bf16 CPU tensors of at most `MAX_SHORT_TOKENS` tokens and head dims divisible by
    16, on CPUs with AMX; the caller computes the plain way when this returns None. No
    autograd: callers use it for inference only.
    """
    if not (
        qkv.device.type == "cpu"
        and qkv.dtype == torch.bfloat16
        and qkv.dim() == 3
        and qkv.is_contiguous()
        and 0 < qkv.shape[1] <= MAX_SHORT_TOKENS
        and heads > 0
        and qkv.shape[2] % (3 * heads) == 0
        and qkv.shape[2] // (3 * heads) % 16 == 0
    ):
        return None
    op = short_attention_op()
    return None if op is None else op(qkv, heads, causal)


def decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Attention of ``(batch, heads, queries, dim)`` queries over ``(batch, heads, keys, dim)``
    keys and values, or None where the kernel does not apply (and the caller computes the
    plain way). The same as `mmcl.nn.attention.attend` (non-causal) to float32 rounding:
    scores, softmax and the weighted sum in float32, rounded to the inputs' dtype once.

    `mask`: boolean, broadcast to ``(batch, heads, queries, keys)``, True where a query may
    attend; a query with no key allowed gets zeros. It applies to CPU tensors all bf16 or all
    float32, whose last dimension is contiguous (cache buffers' views are fine), with a head
    dim that is a multiple of 16 up to `MAX_DECODE_HEAD_DIM`. Meant for few queries (it
    reads the keys once per four queries). The result is ``(batch, heads, queries, dim)``, a view of
    a ``(batch, queries, heads, dim)`` tensor, so that the heads side by side are a free
    reshape. No autograd: callers use it for inference only.
    """
    dims = query.dim() == key.dim() == value.dim() == 4
    if not (
        dims
        and query.device.type == key.device.type == value.device.type == "cpu"
        and query.dtype in (torch.bfloat16, torch.float32)
        and query.dtype == key.dtype == value.dtype
        and key.shape == value.shape
        and key.shape[:2] == query.shape[:2]
        and key.shape[3] == query.shape[3]
        and 0 < query.shape[3] <= MAX_DECODE_HEAD_DIM
        and query.shape[3] % 16 == 0
        and query.stride(3) == key.stride(3) == value.stride(3) == 1
        and (mask is None or (mask.dtype == torch.bool and mask.device.type == "cpu"))
    ):
        return None
    op = decode_attention_op()
    if op is None:
        return None
    if mask is not None:
        batch, heads, queries, _ = query.shape
        try:
            mask = mask.expand(batch, heads, queries, key.shape[2])
        except RuntimeError:  # not broadcastable: the plain way names the problem
            return None
    return op(query, key, value, mask).transpose(1, 2)


@dataclass(frozen=True)
class PackedLinearWeight:
    """An ``(out_features, in_features)`` bf16 weight laid out for `linear` by
    `pack_linear_weight`: AMX tiles, ``(out/32, in/32, 2, 16, 16, 2)``."""

    tiles: torch.Tensor
    out_features: int
    in_features: int


def linear_fits(weight: torch.Tensor) -> bool:
    """Whether `linear` takes this ``(out, in)`` weight: bf16 on the CPU, both sizes whole
    multiples of 32 (the tiles; other layers stay with oneDNN)."""
    return (
        weight.dim() == 2
        and weight.dtype == torch.bfloat16
        and weight.device.type == "cpu"
        and weight.shape[0] > 0
        and weight.shape[1] > 0
        and weight.shape[0] % 32 == 0
        and weight.shape[1] % 32 == 0
    )


def pack_linear_weight(weight: torch.Tensor) -> PackedLinearWeight:
    """`weight` ``(out, in)`` re-laid out for `linear`: for each pair of 16-feature column
    blocks and each 32-deep k-step, two 1 KB tiles whose row r holds inputs 2r and 2r + 1 of 16
    outputs (the VNNI order AMX multiplies in). One copy; cache it with the weight."""
    if not linear_fits(weight):
        raise ValueError(
            "pack_linear_weight: expected a CPU bf16 (out, in) weight with out and in multiples "
            f"of 32, got {weight.dtype} {tuple(weight.shape)} on {weight.device}"
        )
    out_features, in_features = weight.shape
    # weight[p*32 + t*16 + c, s*32 + 2r + e] -> tiles[p, s, t, r, c, e]
    blocks = weight.detach().reshape(out_features // 32, 2, 16, in_features // 32, 16, 2)
    tiles = blocks.permute(0, 3, 1, 4, 2, 5).contiguous()
    return PackedLinearWeight(tiles, out_features, in_features)


def unpack_linear_weight(weight: PackedLinearWeight) -> torch.Tensor:
    """The ``(out, in)`` weight `pack_linear_weight` was given, from its tiles."""
    rows = weight.tiles.permute(0, 2, 4, 1, 3, 5)
    return rows.reshape(weight.out_features, weight.in_features)


def linear(
    x: torch.Tensor,
    weight: PackedLinearWeight,
    bias: torch.Tensor | None = None,
    activation: str = "none",
    residual: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """``residual + activation(x @ weight.T + bias)`` in bf16, or None where the kernel does
    not apply (no AMX, another dtype or device, switched off), and the caller computes the
    plain way. `activation` is "none", "gelu" (exact, erf) or "swish" (SiLU); `bias` and
    `residual` are optional. Float32 sums, rounded to bf16 once at the end. No autograd."""
    if activation not in ("none", "gelu", "swish"):
        raise ValueError(
            f"linear: activation must be 'none', 'gelu' or 'swish', not {activation!r}"
        )
    if not (
        x.device.type == "cpu"
        and x.dtype == torch.bfloat16
        and x.dim() >= 1
        and x.shape[-1] == weight.in_features
        and (bias is None or (bias.device.type == "cpu" and bias.shape == (weight.out_features,)))
        and (
            residual is None
            or (
                residual.device.type == "cpu"
                and residual.dtype == torch.bfloat16
                and residual.shape == (*x.shape[:-1], weight.out_features)
            )
        )
    ):
        return None
    op = linear_op()
    if op is None:
        return None
    residual = None if residual is None else residual.contiguous()
    return op(x.contiguous(), weight.tiles, bias, residual, activation)


def linear_op() -> Callable | None:
    """The linear kernel (``torch.ops.mmcl_kernels.linear``) if `build()` loaded it, else None."""
    return _ops.get("linear")


def decode_attention_op() -> Callable | None:
    """The decoding attention kernel (``torch.ops.mmcl_kernels.decode_attention``) if
    `build()` loaded it, else None."""
    return _ops.get("decode_attention")


def short_attention_op() -> Callable | None:
    """The attention kernel (``torch.ops.mmcl_kernels.short_attention``) if `build()` loaded
    it, else None. Neither getter ever builds anything."""
    return _ops.get("short_attention")


def build(timeout: float | None = None) -> bool:
    """Build (once) and load the kernels; whether any kernel is ready to use.

    False without AMX, with ``MMCL_NATIVE_KERNELS=0`` (both silently), or, after one
    `RuntimeWarning` saying why, where the build failed, ran longer than `timeout` seconds
    (default ``MMCL_KERNEL_BUILD_TIMEOUT``, else 600), or a kernel disagreed with PyTorch on
    its start-up check. A failure is remembered for the process: no second attempt or warning.
    """
    if os.environ.get("MMCL_NATIVE_KERNELS", "1") == "0" or not amx_available():
        return False
    with _lock:  # streams and threads may accelerate at once; build once
        if not _ops and not _build_failed:
            _load(_builder.timeout_from_environment() if timeout is None else timeout)
        return any(op is not None for op in _ops.values())


def _load(timeout: float) -> None:
    try:
        compiled = _compiled(timeout)
    except Exception as error:  # any failure: PyTorch's operations compute the same thing
        _build_failed.append(_last_line(error))
        _warn(
            f"mmcl: the native kernels ({', '.join(s.name for s in _builder.SOURCES)}) could "
            f"not be built ({_last_line(error)}); using PyTorch's operations instead (the "
            f"build needs a C++ compiler and `pip install 'mmcl[kernels]'`)."
        )
        return
    checks = {
        "short_attention": (_agrees_with_sdpa, "scaled_dot_product_attention"),
        "linear": (_agrees_with_linear, "linear (oneDNN)"),
        "decode_attention": (_agrees_with_attend, "batched matmuls and softmax"),
    }
    for name, (agrees, reference) in checks.items():
        op = compiled[name]
        try:
            if not agrees(op):
                raise RuntimeError(f"its output disagrees with {reference}")
        except Exception as error:
            _warn(
                f"mmcl: the native kernel {name} is unavailable ({_last_line(error)}); using "
                f"PyTorch's {reference} instead."
            )
            op = None
        _ops[name] = op


def _last_line(error: Exception) -> str:
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[-1] if message else ''}"


def _warn(message: str) -> None:
    warnings.warn(
        f"{message} MMCL_NATIVE_KERNELS=0 skips the attempt.", RuntimeWarning, stacklevel=4
    )


def _compiled(timeout: float) -> dict[str, Callable]:
    if not _library_loaded():
        _builder.load_library(timeout)
    namespace = torch.ops.mmcl_kernels
    names = ("short_attention", "linear", "decode_attention")
    return {name: getattr(namespace, name) for name in names}


def _library_loaded() -> bool:
    return hasattr(torch.ops.mmcl_kernels, "decode_attention")


def _agrees_with_sdpa(op: Callable) -> bool:
    # A tiny causal and non-causal case against PyTorch, once, before any model uses the kernel.
    generator = torch.Generator().manual_seed(0)
    batch, tokens, heads, dim = 2, 19, 2, 32
    qkv = torch.randn(batch, tokens, 3 * heads * dim, generator=generator).to(torch.bfloat16)
    query, key, value = qkv.view(batch, tokens, 3, heads, dim).permute(2, 0, 3, 1, 4).float()
    for causal in (False, True):
        expected = F.scaled_dot_product_attention(query, key, value, is_causal=causal)
        expected = expected.transpose(1, 2).reshape(batch, tokens, heads * dim)
        if not torch.allclose(op(qkv, heads, causal).float(), expected, atol=0.03, rtol=0.02):
            return False
    return True


def _agrees_with_linear(op: Callable) -> bool:
    # Every epilogue, a partial row block and two column blocks, against float32, once.
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(37, 96, generator=generator).to(torch.bfloat16)
    weight = (0.2 * torch.randn(64, 96, generator=generator)).to(torch.bfloat16)
    bias = torch.randn(64, generator=generator).to(torch.bfloat16)
    residual = torch.randn(37, 64, generator=generator).to(torch.bfloat16)
    tiles = pack_linear_weight(weight).tiles
    plain = F.linear(x.float(), weight.float(), bias.float())
    for activation, function in (("none", None), ("gelu", F.gelu), ("swish", F.silu)):
        expected = (plain if function is None else function(plain)) + residual.float()
        got = op(x, tiles, bias, residual, activation)
        if not torch.allclose(got.float(), expected, atol=0.05, rtol=0.02):
            return False
    return True


def _agrees_with_attend(op: Callable) -> bool:
    # Both dtypes, two queries, strided keys (a cache's view) and a mask with a blind row.
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 3, 2, 32, generator=generator)
    buffer = torch.randn(2, 3, 9, 32, generator=generator)
    key, value = buffer[:, :, :7], buffer[:, :, 1:8]
    mask = torch.rand(2, 1, 2, 7, generator=generator) > 0.3
    mask[1, 0, 1] = False
    scores = (query @ key.transpose(-1, -2)) * 32**-0.5
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1).nan_to_num(0.0)
    expected = probs @ value
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 0.03)):
        got = op(*(t.to(dtype) for t in (query, key, value)), mask.expand(2, 3, 2, 7))
        if not torch.allclose(got.transpose(1, 2).float(), expected, atol=tolerance):
            return False
    return True
