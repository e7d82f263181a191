"""Tiny BLIP-2 / InstructBLIP parts for the Hugging Face equivalence tests: a vision tower
narrower than the Q-Former (so its cross-attention has a context of another width), a
Q-Former with cross-attention in one layer of two, and an OPT and a LLaMA LM."""

from __future__ import annotations

import torch
import transformers

IMAGE_TOKEN, QUERIES = 59, 3
VISION = dict(  # 24 wide: the Q-Former's cross-attention has a context of another width
    hidden_size=24,
    intermediate_size=48,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=32,
    patch_size=16,
)
QFORMER = dict(  # cross-attention in layer 0 only of 2
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=2,
    cross_attention_frequency=2,
)
LMS = {
    "opt": lambda: transformers.OPTConfig(
        vocab_size=60,
        hidden_size=16,
        ffn_dim=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=40,
        word_embed_proj_dim=16,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
    ),
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=60,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=40,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    ),
}


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """HF starts LayerNorms, biases and queries at constants: add noise to every parameter."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()
