"""Building blocks shared by every tower: norms, activations, attention, transformer stacks;
and `accelerate`, which swaps a finished model's modules for fast ones for inference."""

from mmcl.nn.acceleration import accelerate, is_accelerated
from mmcl.nn.attention import AttentionPool2d, MultiheadSelfAttention
from mmcl.nn.layers import LayerNorm, QuickGELU, activation_layer
from mmcl.nn.transformer import ResidualAttentionBlock, Transformer

__all__ = [
    "AttentionPool2d",
    "LayerNorm",
    "MultiheadSelfAttention",
    "QuickGELU",
    "ResidualAttentionBlock",
    "Transformer",
    "accelerate",
    "activation_layer",
    "is_accelerated",
]
