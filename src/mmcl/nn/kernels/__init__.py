"""mmcl's own CPU kernels, compiled from C++ on first use.

PyTorch covers almost everything mmcl computes. Where one of its kernels is far from what the
hardware can do at CLIP's shapes, mmcl carries a small kernel of its own, built with
`torch.utils.cpp_extension` the first time it is needed: about 10 s, once per machine and
PyTorch version, cached in PyTorch's extension folder (``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``). Every kernel is optional. Where one cannot be built (no C++
compiler, another CPU) the same computation runs through PyTorch, after one warning that says
why; ``MMCL_NATIVE_KERNELS=0`` skips the kernels silently.

- `short_attention`: bf16 self-attention over short sequences on CPUs with AMX. PyTorch's CPU
  flash attention targets long sequences; on ViT-B/32's 50 tokens it took ~15% of a bf16
  forward for 1% of the FLOPs, and this kernel does the same work in under half the time.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F

__all__ = ["MAX_SHORT_TOKENS", "amx_available", "short_attention", "short_attention_op"]

# Beyond this PyTorch's flash attention (blocked over keys) is the better fit.
MAX_SHORT_TOKENS = 320
_SOURCE = Path(__file__).with_name("short_attention_amx.cpp")
_FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mamx-tile"]
_FLAGS += ["-mamx-bf16", "-fopenmp"]  # the kernel splits heads over PyTorch's OpenMP threads
_lock = threading.Lock()
_ops: dict[str, Callable | None] = {}


def amx_available() -> bool:
    """Whether this is a Linux x86-64 CPU with AMX (bf16 tiles), which the kernel needs."""
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


def short_attention_op() -> Callable | None:
    """The compiled kernel (``torch.ops.mmcl_kernels.short_attention``), built on the first
    call; None without AMX, with ``MMCL_NATIVE_KERNELS=0``, or where building or the start-up
    check against PyTorch's attention failed (with a warning saying why)."""
    if "short_attention" not in _ops:
        with _lock:  # streams call from several threads; build once
            if "short_attention" not in _ops:
                _ops["short_attention"] = _load_short_attention()
    return _ops["short_attention"]


def _load_short_attention() -> Callable | None:
    if os.environ.get("MMCL_NATIVE_KERNELS", "1") == "0" or not amx_available():
        return None
    try:
        op = _compiled("short_attention", _SOURCE)
        if not _agrees_with_sdpa(op):
            raise RuntimeError("its output disagrees with scaled_dot_product_attention")
    except Exception as error:  # any failure: the plain path still computes the same thing
        message = str(error).strip().splitlines()
        warnings.warn(
            f"mmcl: the native short-sequence attention kernel ({_SOURCE.name}) is unavailable "
            f"({type(error).__name__}: {message[-1] if message else ''}); using PyTorch's "
            "scaled_dot_product_attention instead. MMCL_NATIVE_KERNELS=0 skips the attempt.",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    return op


def _compiled(op_name: str, source: Path) -> Callable:
    namespace = torch.ops.mmcl_kernels
    if not hasattr(namespace, op_name):  # not loaded in this process yet
        quiet = logging.getLogger("torch.utils.cpp_extension")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # its "no CUDA runtime found" is irrelevant to a CPU kernel
        try:
            from torch.utils import cpp_extension

            # One build per PyTorch version (the C++ ABI); PyTorch hashes the source and flags
            # itself and rebuilds when they change.
            version = torch.__version__.split("+")[0].replace(".", "_")
            logging.getLogger("mmcl").info("building %s (once, about 10 s)", source.name)
            cpp_extension.load(
                name=f"mmcl_{source.stem}_torch{version}",
                sources=[str(source)],
                extra_cflags=_FLAGS,
                extra_ldflags=["-fopenmp"],
                is_python_module=False,
                verbose=False,
            )
        finally:
            quiet.setLevel(level)
    return getattr(namespace, op_name)


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
