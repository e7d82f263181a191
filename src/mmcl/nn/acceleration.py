"""`accelerate(model)`: a finished model's modules swapped for fast ones, for inference.

mmcl's models compute the plain PyTorch way, so hooks, peft wrappers and intermediate features
see the same thing in every precision. Speed is this separate, explicit step (the pattern of
IPEX's ``optimize`` and torch.ao's module swaps):

>>> import mmcl, torch
>>> from mmcl.nn import accelerate
>>> model = mmcl.create_model("tiny-vit", precision="bf16").requires_grad_(False)
>>> images = torch.randn(2, 3, 32, 32)
>>> plain = model.encode_image(images).float()
>>> model = accelerate(model)  # in place; the same state_dict
>>> type(model.visual.transformer.resblocks[0]).__name__
'FastResidualAttentionBlock'
>>> fast = model.encode_image(images).float()
>>> bool(torch.nn.functional.cosine_similarity(fast, plain).min() > 0.999)
True

What is swapped (each fast module computes what the plain one does, to bf16 rounding, and the
plain way wherever its shortcut does not apply; see `mmcl.nn.fast_linear`, `mmcl.nn.fast_blocks`):
`nn.Linear` -> `PackedLinear`; `Mlp` -> `FusedMlp`; `MultiheadSelfAttention` ->
`FastSelfAttention`; `MultiheadAttention` (BERT blocks, decoders) -> `FastAttention`;
`ResidualAttentionBlock` -> `FastResidualAttentionBlock`; `LayerNorm` -> `FastLayerNorm`; a
patch-embedding `nn.Conv2d` (stride = kernel) -> `PatchConv2d`; and each convolution +
BatchNorm (+ ReLU) that a module runs in a row (`nn.Sequential`, or a class's
``conv_bn_relu_chains``) -> `FoldedConv2d`, `FoldedBatchNorm2d` and `nn.Identity`.

What is left alone, and listed in `model.acceleration_skipped` and in one warning: every
module that carries forward hooks (its submodules may still be swapped: its hooks still fire),
and every module of a class accelerate does not know (a peft layer, a user's subclass, any
class from outside mmcl holding parameters), with all its submodules. With
``foreign_linears=True`` the plain, hook-free `nn.Linear` layers inside such a module become
`PackedLinear` all the same where their weights are bf16 (float32 too with ``pack_fp32``): a
transformers language model calls each of its linear layers as a module, so a swapped one
computes what it did; the rest of it is left alone.
"""

from __future__ import annotations

import warnings
import weakref

import torch
from torch import nn

from mmcl.nn import kernels as native_kernels
from mmcl.nn.attention import MultiheadAttention, MultiheadSelfAttention
from mmcl.nn.fast_blocks import (
    FastAttention,
    FastLayerNorm,
    FastResidualAttentionBlock,
    FastSelfAttention,
    FoldedBatchNorm2d,
    FoldedConv2d,
)
from mmcl.nn.fast_linear import FusedMlp, PackedLinear, PatchConv2d, hooked
from mmcl.nn.layers import LayerNorm, QuickGELU
from mmcl.nn.transformer import Mlp, ResidualAttentionBlock

__all__ = ["accelerate", "is_accelerated"]

FAST_CLASSES = (
    PackedLinear,
    FusedMlp,
    PatchConv2d,
    FastLayerNorm,
    FastAttention,
    FastSelfAttention,
    FastResidualAttentionBlock,
    FoldedConv2d,
    FoldedBatchNorm2d,
)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def accelerate(
    model: nn.Module,
    *,
    trainable: bool = False,
    kernels: bool = True,
    pack_fp32: bool = False,
    foreign_linears: bool = False,
) -> nn.Module:
    """Swap `model`'s modules for fast ones, in place; returns the model.

    The model must be in eval mode with no parameter requiring gradients (`model.eval()`,
    ``model.requires_grad_(False)``): accelerate is for inference. Afterwards ``model.train()``
    raises and leaves the model in eval mode. With ``trainable=True`` neither is checked nor
    refused: the fast modules then compute the plain way whenever they train or record
    gradients.

    `kernels` (default True) builds mmcl's AMX kernels (`mmcl.nn.kernels.build`, once per
    machine; only where the CPU has AMX), here and never during a forward pass; where the
    build fails the oneDNN path runs, after one warning.

    `foreign_linears`: also swap the `nn.Linear` layers inside modules of classes accelerate
    does not know (e.g. the transformers LM of a bridge); see the module docstring.
    """
    if not trainable:
        _check_inference_ready(model)
    if kernels and any(p.device.type == "cpu" for p in model.parameters()):
        native_kernels.build()
    skipped: dict[str, str] = {}
    # The dtypes of the foreign linear layers swapped: where their shortcut applies (elsewhere
    # a PackedLinear would cost its checks on every call and gain nothing).
    foreign = (torch.bfloat16, torch.float32) if pack_fp32 else (torch.bfloat16,)
    _swap_children(model, "", skipped, foreign if foreign_linears else ())
    for module in model.modules():
        if isinstance(module, FAST_CLASSES):
            module._inference_only = not trainable
            module._pack_fp32 = pack_fp32
            module._accelerated_root = weakref.ref(model)
    model.acceleration_skipped = skipped
    if skipped:
        listed = "; ".join(f"{name or '(the model)'}: {why}" for name, why in skipped.items())
        warnings.warn(
            f"accelerate left {len(skipped)} module(s) as they are: {listed}", stacklevel=2
        )
    return model


def is_accelerated(model: nn.Module) -> bool:
    """Whether any module of `model` was swapped by `accelerate`."""
    return any(isinstance(module, FAST_CLASSES) for module in model.modules())


def _check_inference_ready(model: nn.Module) -> None:
    training = [name or "the model itself" for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            f"accelerate: the model is in training mode ({training[0]}); accelerate is for "
            f"inference: call model.eval() first, or pass trainable=True"
        )
    needing = [name for name, p in model.named_parameters() if p.requires_grad]
    if needing:
        raise ValueError(
            f"accelerate: {len(needing)} parameter(s) require gradients (e.g. {needing[0]}); "
            f"accelerate is for inference: call model.requires_grad_(False) first, or pass "
            f"trainable=True"
        )


def _known(module: nn.Module) -> bool:
    # mmcl's own classes and PyTorch's containers call their children as modules.
    cls = type(module)
    return cls in _CONTAINERS or cls.__module__.split(".")[0] == "mmcl"


def _swap_children(
    module: nn.Module, path: str, skipped: dict[str, str], foreign: tuple = ()
) -> None:
    _fold_chains(module)  # before the convolutions could be swapped one by one
    for name, child in list(module.named_children()):
        child_path = f"{path}.{name}" if path else name
        if hooked(child):
            skipped[child_path] = "has hooks"
        if not _known(child):
            if type(child) in (nn.Linear, nn.Conv2d) and not hooked(child):
                replacement = _replacement(child)
                if replacement is not None:
                    setattr(module, name, replacement)
            elif not type(child).__module__.startswith("torch.") and _has_parameters(child):
                left = "left with its submodules"
                if foreign:
                    _pack_linears(child, foreign)
                    left = "left as it is but for its nn.Linear layers, packed"
                skipped[child_path] = (
                    f"{type(child).__module__}.{type(child).__qualname__} is not a class "
                    f"accelerate knows ({left})"
                )
            continue
        _swap_children(child, child_path, skipped, foreign)
        if not hooked(child):
            replacement = _replacement(child)
            if replacement is not None:
                setattr(module, name, replacement)


def _pack_linears(module: nn.Module, dtypes: tuple) -> None:
    for name, child in list(module.named_children()):
        if type(child) is nn.Linear and not hooked(child):
            if child.weight.dtype in dtypes:
                setattr(module, name, PackedLinear.replacing(child))
        elif not hooked(child):
            _pack_linears(child, dtypes)


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _replacement(module: nn.Module) -> nn.Module | None:
    kind = type(module)
    if kind is nn.Linear:
        return PackedLinear.replacing(module)
    if kind is nn.Conv2d and PatchConv2d.fits(module):
        return PatchConv2d.replacing(module)
    if kind is LayerNorm and module.weight is not None and module.bias is not None:
        return FastLayerNorm.replacing(module)
    if kind is Mlp and _fusable_mlp(module):
        return FusedMlp.replacing(module)
    if kind is MultiheadSelfAttention and type(module.out_proj) is PackedLinear:
        return FastSelfAttention.replacing(module)
    if kind is MultiheadAttention and type(module.out_proj) is PackedLinear:
        return FastAttention.replacing(module)
    if (
        kind is ResidualAttentionBlock
        and type(module.attn) is FastSelfAttention
        and type(module.mlp) is FusedMlp
    ):
        return FastResidualAttentionBlock.replacing(module)
    return None


def _fusable_mlp(mlp: Mlp) -> bool:
    return (
        type(mlp.c_fc) is PackedLinear
        and type(mlp.c_proj) is PackedLinear
        and type(mlp.gelu) in (nn.GELU, QuickGELU)
        and not hooked(mlp.gelu)
    )


def _fold_chains(module: nn.Module) -> None:
    if type(module) is nn.Sequential:
        names = list(module._modules)
        chains = [
            (names[i], names[i + 1], names[i + 2] if i + 2 < len(names) else None)
            for i in range(len(names) - 1)
        ]
    else:
        chains = type(module).__dict__.get("conv_bn_relu_chains", ())
    for conv_name, norm_name, relu_name in chains:
        conv, norm = getattr(module, conv_name), getattr(module, norm_name)
        relu = getattr(module, relu_name) if relu_name is not None else None
        if not (
            type(conv) is nn.Conv2d
            and type(norm) is nn.BatchNorm2d
            and norm.running_var is not None
            and conv.padding_mode == "zeros"
            and not hooked(conv, norm)
        ):
            continue
        with_relu = type(relu) is nn.ReLU and not hooked(relu)
        folded_norm = FoldedBatchNorm2d.replacing(norm)
        setattr(module, conv_name, FoldedConv2d.replacing(conv, folded_norm, with_relu))
        setattr(module, norm_name, folded_norm)
        if with_relu:
            setattr(module, relu_name, nn.Identity().train(relu.training))
