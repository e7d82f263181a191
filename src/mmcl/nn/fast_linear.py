"""Fast linear layers for bf16 inference on CPUs, the modules `mmcl.nn.accelerate` swaps in.

A plain `F.linear` hands oneDNN a weight in PyTorch's row-major layout, which it re-lays out
for its kernels (AMX tiles, AVX-512 blocks) on every call, and the bias, the GELU and the
residual addition each cost another pass over the output. Here each weight is re-laid out once
(and again only when it changes), and the bias, the activation or the residual addition are
applied while the output tile is still in registers: by mmcl's AMX kernel
(`mmcl.nn.kernels.linear`) where it was built and the sizes are multiples of 32, by oneDNN
otherwise. Float32 weights are packed for oneDNN only where `accelerate` is asked to
(``pack_fp32``), and used in calls of 4 rows or more: PyTorch's float32 matmul goes to
another library (MKL), whose sums oneDNN's do not equal bit for bit.

Every module here computes exactly what the module it replaces computes; where its shortcut
does not apply (another dtype or device, gradients being recorded, training, `torch.compile`)
it computes the plain way. Its parameters are the replaced module's own, under the same names,
so `state_dict` is unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn
from torch.nn import functional as F

from mmcl.nn import kernels
from mmcl.nn.cpu_support import onednn_bf16, onednn_fp32
from mmcl.nn.layers import QuickGELU
from mmcl.nn.transformer import Mlp

try:
    from torch.compiler import is_compiling
except ImportError:  # torch < 2.3
    from torch._dynamo import is_compiling

QUICK_GELU_SLOPE = 1.702  # QuickGELU(z) = z * sigmoid(1.702 z)
# oneDNN's packed float32 matmul of one or two rows (a decoding step at batch 1) is 5-15%
# slower than PyTorch's own (a matrix-vector product); from 4 rows it is 1.1-2.5x faster.
FP32_PACKED_MIN_ROWS = 4
# Off inside `fp32_packing(False)`: see there.
_FP32_PACKING = ContextVar("mmcl_fp32_packing", default=True)
EPILOGUES = {"none": None, "gelu": F.gelu, "swish": F.silu}


class DerivedTensor:
    """A tensor computed from parameters (a packed or folded weight), recomputed when one of
    them changes: in place (an optimiser step, `load_state_dict`), or by `.to(...)`. Tensors
    made under `torch.inference_mode` have no version counter; only their storage is checked."""

    def __init__(self):
        self.key = None
        self.value = None

    def __reduce__(self):
        # Copies and pickles start empty and rebuild on first use: oneDNN's packed weights
        # cannot be pickled, and a copy's parameters are other tensors anyway.
        return (DerivedTensor, ())

    def get(self, sources: tuple, make):
        key = tuple(_fingerprint(t) for t in sources)
        if key != self.key:
            self.value, self.key = make(), key
        return self.value


def _fingerprint(t: torch.Tensor | None):
    if t is None:
        return None
    version = None if t.is_inference() else t._version
    return (t.data_ptr(), t.dtype, t.device, tuple(t.shape), version)


def adopt(cls: type[nn.Module], module: nn.Module) -> nn.Module:
    """An instance of `cls` holding `module`'s attributes, parameters, buffers and submodules
    (the same tensors, under the same names), with no hooks of its own."""
    new = cls.__new__(cls)
    state = dict(module.__dict__)
    for name, value in state.items():
        if name.startswith("_") and isinstance(value, dict):
            calls = "hook" in name and ("forward" in name or "backward" in name)
            state[name] = OrderedDict() if calls else OrderedDict(value)
    new.__dict__.update(state)
    return new


class InferenceOnly:
    """Mixed into every fast module: ``train(True)`` is refused on a model that `accelerate`
    made for inference (the default), and the whole model is put back in eval mode first, so
    that the refusal changes nothing. Training needs the plain model: build or load it anew,
    or accelerate with ``trainable=True``."""

    _inference_only = False
    _pack_fp32 = False  # set by accelerate(..., pack_fp32=True)

    def train(self, mode: bool = True):
        if mode and self._inference_only:
            root = self.__dict__.get("_accelerated_root", lambda: None)()
            (root if root is not None else self).eval()
            raise RuntimeError(
                "this model was accelerated for inference (mmcl.nn.accelerate) and cannot "
                "train; it stays in eval mode. Build or load it again to train it, or "
                "accelerate it with trainable=True"
            )
        return super().train(mode)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_accelerated_root", None)  # a weak reference: not picklable
        return state


@contextmanager
def fp32_packing(enabled: bool) -> Iterator[None]:
    """Within it, float32 calls of packed layers take their packed weights only if `enabled`
    (bf16 calls are not affected). The generation loop turns packing off when its decoding
    steps have fewer than `FP32_PACKED_MIN_ROWS` rows: those steps run `F.linear` on the
    plain weights, so packing the prompt's calls too would bring a second copy of every weight
    through the caches, and each step would then read weights that the packed ones evicted."""
    token = _FP32_PACKING.set(enabled)
    try:
        yield
    finally:
        _FP32_PACKING.reset(token)


def hooked(*modules: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def records_gradients(x: torch.Tensor, *tensors: torch.Tensor | None) -> bool:
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(t is not None and t.requires_grad for t in tensors)


def on_fast_path(module: nn.Module, x: torch.Tensor, *tensors: torch.Tensor | None) -> bool:
    """Whether `module` may take its shortcut for input `x` and these tensors: bf16 on a CPU
    with oneDNN's fused ops (float32 too where accelerate was asked to pack it), in eval mode,
    no gradients recorded, not inside `torch.compile` (Inductor packs and fuses by itself, and
    cannot trace the caches)."""
    if module.training or is_compiling() or records_gradients(x, *tensors):
        return False
    if cpu_bf16(x, *tensors):
        return True
    return getattr(module, "_pack_fp32", False) and cpu_fp32(x, *tensors)


def cpu_bf16(x: torch.Tensor, *tensors: torch.Tensor | None) -> bool:
    """Whether oneDNN's fused bf16 ops take these tensors."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.bfloat16
        and all(t is None or t.dtype == torch.bfloat16 for t in tensors)
        and onednn_bf16()
    )


def cpu_fp32(x: torch.Tensor, *tensors: torch.Tensor | None) -> bool:
    """Whether oneDNN's fused float32 ops take these tensors."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and all(t is None or t.dtype == torch.float32 for t in tensors)
        and onednn_fp32()
    )


def pack(weight: torch.Tensor) -> torch.Tensor | kernels.PackedLinearWeight:
    """An ``(out, in)`` bf16 (or float32) weight re-laid out once: for mmcl's AMX kernel where
    it was built and takes the shape (bf16), for oneDNN otherwise."""
    weight = weight.detach()
    if kernels.linear_fits(weight) and kernels.linear_op() is not None:
        return kernels.pack_linear_weight(weight)
    return torch.ops.mkldnn._reorder_linear_weight(weight, None)


def packed_linear(
    x: torch.Tensor,
    packed: torch.Tensor | kernels.PackedLinearWeight,
    bias: torch.Tensor | None,
    epilogue: str = "none",
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``residual + epilogue(x @ W^T + bias)`` in one matmul; `epilogue` is "none", "gelu"
    (exact) or "swish", and not given together with a residual."""
    if isinstance(packed, kernels.PackedLinearWeight):
        out = kernels.linear(x, packed, bias, epilogue, residual)
        if out is not None:
            return out
        # e.g. an input of the wrong width: PyTorch's own error message
        weight = kernels.unpack_linear_weight(packed)
        return finish(F.linear(x, weight, bias), epilogue, residual)
    if residual is not None:
        return torch.ops.mkldnn._linear_pointwise.binary(
            x, residual.contiguous(), packed, bias, "add"
        )
    algorithm = "none" if epilogue == "gelu" else ""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, epilogue, [], algorithm)


def finish(out: torch.Tensor, epilogue: str, residual: torch.Tensor | None) -> torch.Tensor:
    # The unfused epilogue: the activation, then the residual addition.
    if EPILOGUES[epilogue] is not None:
        out = EPILOGUES[epilogue](out)
    return out if residual is None else residual + out


class PackedLinear(InferenceOnly, nn.Linear):
    """`nn.Linear` with its bf16 weight packed once and an optional fused epilogue:
    ``forward(x, epilogue="none", residual=None)`` is ``residual + epilogue(linear(x))``."""

    @classmethod
    def replacing(cls, linear: nn.Linear) -> PackedLinear:
        new = adopt(cls, linear)
        new._packed = {}  # scale -> DerivedTensor
        return new

    def takes(self, x: torch.Tensor, *others: torch.Tensor | None) -> bool:
        """Whether the packed path applies to input `x` (and `others`, e.g. a residual).
        Float32 calls of fewer than `FP32_PACKED_MIN_ROWS` rows stay with `F.linear`, and so
        do all float32 calls inside ``fp32_packing(False)``."""
        if x.dtype == torch.float32 and (
            x.numel() < FP32_PACKED_MIN_ROWS * x.shape[-1] or not _FP32_PACKING.get()
        ):
            return False
        return on_fast_path(self, x, self.weight, self.bias, *others)

    def packed(self, scale: float | None = None):
        """The weight (times `scale`, rounded once from float32) packed, cached."""
        cache = self._packed.setdefault(scale, DerivedTensor())

        def make():
            weight = self.weight.reshape(self.weight.shape[0], -1)
            if scale is not None:
                weight = (weight.float() * scale).to(weight.dtype)
            return pack(weight)

        return cache.get((self.weight,), make)

    def forward(
        self, x: torch.Tensor, epilogue: str = "none", residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.takes(x, residual):
            return packed_linear(x, self.packed(), self.bias, epilogue, residual)
        return finish(F.linear(x, self.weight, self.bias), epilogue, residual)


def linear_with(
    layer: nn.Module, x: torch.Tensor, epilogue: str = "none", residual: torch.Tensor | None = None
) -> torch.Tensor:
    """``residual + epilogue(layer(x))``, fused where `layer` is a hook-free `PackedLinear`."""
    if type(layer) is PackedLinear and not hooked(layer):
        return layer(x, epilogue, residual)
    return finish(layer(x), epilogue, residual)


class FusedMlp(InferenceOnly, Mlp):
    """`mmcl.nn.transformer.Mlp` with its activation computed inside the first matmul and an
    optional residual inside the second: ``residual + c_proj(gelu(c_fc(x)))``.

    Exact GELU has an epilogue of its own. QuickGELU, ``z * sigmoid(1.702 z)``, has none, but it
    equals ``silu(1.702 z) / 1.702`` and both kernels fuse silu: `c_fc` runs with its weight and
    bias times 1.702 and a silu epilogue, and `c_proj` with its weight divided by 1.702 (both
    packed once). Hooks on the children, registered after acceleration, are still called: the
    layers then run one by one."""

    @classmethod
    def replacing(cls, mlp: Mlp) -> FusedMlp:
        return adopt(cls, mlp)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        fc, activation, proj = self.c_fc, self.gelu, self.c_proj
        fusable = type(fc) is PackedLinear and not hooked(fc, activation)
        if fusable and fc.takes(x) and type(activation) is QuickGELU:
            if type(proj) is PackedLinear and not hooked(proj) and proj.takes(x, residual):
                slope = QUICK_GELU_SLOPE
                bias = None if fc.bias is None else fc.bias * slope
                hidden = packed_linear(x, fc.packed(slope), bias, "swish")
                return packed_linear(hidden, proj.packed(1 / slope), proj.bias, "none", residual)
        if fusable and type(activation) is nn.GELU and activation.approximate == "none":
            hidden = fc(x, "gelu")
        else:
            hidden = activation(fc(x))
        return linear_with(proj, hidden, residual=residual)


class PatchConv2d(InferenceOnly, nn.Conv2d):
    """A convolution whose stride equals its kernel (a ViT's patch embedding), computed as the
    one matrix product it is: the flattened patches times the flattened kernel. The copy that
    gathers the patches is the only pass over the image."""

    @classmethod
    def replacing(cls, conv: nn.Conv2d) -> PatchConv2d:
        new = adopt(cls, conv)
        new._packed = DerivedTensor()
        return new

    @staticmethod
    def fits(conv: nn.Conv2d) -> bool:
        return (
            tuple(conv.kernel_size) == tuple(conv.stride)
            and tuple(conv.padding) == (0, 0)
            and tuple(conv.dilation) == (1, 1)
            and conv.groups == 1
            and conv.padding_mode == "zeros"
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or not on_fast_path(self, images, self.weight, self.bias):
            return super().forward(images)
        batch, channels, height, width = images.shape
        (ph, pw), out_channels = self.kernel_size, self.weight.shape[0]
        rows, cols = height // ph, width // pw
        # Like the convolution, ignore the pixels beyond the last whole patch.
        patches = images[:, :, : rows * ph, : cols * pw]
        patches = patches.reshape(batch, channels, rows, ph, cols, pw).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(batch, rows * cols, -1)  # one copy: the patches gathered
        weight = self.weight
        packed = self._packed.get((weight,), lambda: pack(weight.reshape(out_channels, -1)))
        out = packed_linear(patches, packed, self.bias)  # (batch, rows * cols, out_channels)
        # The convolution's (batch, out, rows, cols), as a view of the channels-last result.
        return out.view(batch, rows, cols, out_channels).permute(0, 3, 1, 2)
