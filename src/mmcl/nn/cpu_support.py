"""What this CPU and PyTorch build offer 16-bit inference: native bf16/fp16 matmuls, and
oneDNN's fused bf16 operations (`mmcl.nn.accelerate` uses them where they exist)."""

from __future__ import annotations

import functools

import torch
from torch.nn import functional as F


@functools.cache
def onednn_bf16() -> bool:
    """Whether this PyTorch build and CPU run oneDNN's fused bf16 ops (native on AVX-512 BF16
    and AMX). The ops are PyTorch internals (Inductor's), so they are tried once on tiny
    inputs against plain ops; any failure or disagreement means the plain ops throughout."""
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if not (torch.backends.mkldnn.is_available() and supported is not None and supported()):
        return False
    return _fused_ops_work(torch.bfloat16)


@functools.cache
def onednn_fp32() -> bool:
    """Whether oneDNN's fused ops (`onednn_bf16`'s) run and agree in float32, for
    `accelerate(..., pack_fp32=True)`."""
    return _fused_ops_work(torch.float32)


def _fused_ops_work(dtype: torch.dtype) -> bool:
    ops = torch.ops.mkldnn
    needed = ("_linear_pointwise", "_reorder_linear_weight", "_convolution_pointwise")
    if not torch.backends.mkldnn.is_available() or not all(hasattr(ops, n) for n in needed):
        return False
    try:
        return _fused_ops_agree(ops, dtype)
    except Exception:  # an internal op that fails here would fail in a model too
        return False


@functools.cache
def native_on_cpu(dtype: torch.dtype) -> bool:
    """Whether this CPU has matmul instructions for `dtype`: bf16 needs AVX-512 BF16 or AMX,
    fp16 AVX-512 FP16 or AMX-FP16 (as oneDNN reports it); float32 always. Without them 16-bit
    matmuls are emulated and run slower than float32. (oneDNN's bf16 check alone says yes on
    any AVX-512 CPU, where it emulates bf16.)"""
    if dtype == torch.bfloat16:
        cpu = torch.cpu
        native = cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported()
        return native and onednn_supports("_is_mkldnn_bf16_supported")
    if dtype == torch.float16:
        return onednn_supports("_is_mkldnn_fp16_supported")
    return True


def onednn_supports(check_name: str) -> bool:
    check = getattr(torch.ops.mkldnn, check_name, None)
    try:
        return bool(torch.backends.mkldnn.is_available() and check is not None and check())
    except RuntimeError:  # an op this build registers but cannot run
        return False


def _fused_ops_agree(ops, dtype: torch.dtype = torch.bfloat16) -> bool:
    x = torch.linspace(-2, 2, 24).view(2, 3, 4).to(dtype)
    weight = torch.linspace(-1, 1, 20).view(5, 4).to(dtype)
    bias = torch.linspace(0, 1, 5).to(dtype)
    linear = F.linear(x.float(), weight.float(), bias.float())
    packed = ops._reorder_linear_weight(weight, None)
    gelu = ops._linear_pointwise(x, packed, bias, "gelu", [], "none")
    swish = ops._linear_pointwise(x, packed, bias, "swish", [], "")
    summed = ops._linear_pointwise.binary(x, gelu, packed, bias, "add")
    images = x.view(1, 2, 3, 4).contiguous(memory_format=torch.channels_last)
    kernel = weight[:2, :2].reshape(2, 2, 1, 1).contiguous(memory_format=torch.channels_last)
    geometry = ([0, 0], [1, 1], [1, 1], 1)
    relu = ops._convolution_pointwise(images, kernel, None, *geometry, "relu", [], "")
    pairs = [
        (gelu, F.gelu(linear)),
        (swish, F.silu(linear)),
        (summed, linear + F.gelu(linear)),
        (relu, F.relu(F.conv2d(images.float(), kernel.float()))),
    ]
    tolerance = 1e-5 if dtype == torch.float32 else 0.1
    return all(torch.allclose(fast.float(), plain, atol=tolerance) for fast, plain in pairs)
