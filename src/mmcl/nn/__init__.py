"""Building blocks shared by every tower: norms, activations, attention (self, cross, causal,
any mask, KV cache), transformer stacks (pre-LN, BERT-style post-LN, a causal decoder), pooling
by learned queries, the one generation loop; and `accelerate`, which swaps a finished model's
modules for fast ones for inference."""

from mmcl.nn.acceleration import accelerate, is_accelerated
from mmcl.nn.attention import AttentionPool2d, MultiheadAttention, MultiheadSelfAttention, attend
from mmcl.nn.bert import BertBlock, BertEmbeddings, BertEncoder, BertLMHead
from mmcl.nn.decoder import CausalDecoder
from mmcl.nn.kv_cache import KVCache
from mmcl.nn.layers import LayerNorm, QuickGELU, activation_layer
from mmcl.nn.masks import causal_mask, key_padding_mask, merge_masks, prefix_causal_mask
from mmcl.nn.pooling import AttentionalPooler, LearnedQueries
from mmcl.nn.transformer import CrossAttentionBlock, ResidualAttentionBlock, Transformer

__all__ = [
    "AttentionPool2d",
    "AttentionalPooler",
    "BertBlock",
    "BertEmbeddings",
    "BertEncoder",
    "BertLMHead",
    "CausalDecoder",
    "CrossAttentionBlock",
    "KVCache",
    "LearnedQueries",
    "MultiheadAttention",
    "LayerNorm",
    "MultiheadSelfAttention",
    "QuickGELU",
    "ResidualAttentionBlock",
    "Transformer",
    "accelerate",
    "activation_layer",
    "attend",
    "causal_mask",
    "is_accelerated",
    "key_padding_mask",
    "merge_masks",
    "prefix_causal_mask",
]
