"""Building blocks shared by every tower: norms, activations, attention, transformer stacks."""

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
    "activation_layer",
]
