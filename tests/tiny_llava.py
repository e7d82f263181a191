"""A tiny Hugging Face LLaVA folder with its tokenizer (as the llava recipes write one), and an
image, for the `mmcl ask` tests."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from mmcl.data.chat_template import VICUNA_SYSTEM
from mmcl.io.lm_tokenizer import train_lm_tokenizer

TEXT = [VICUNA_SYSTEM, "USER: how many circles are there? ASSISTANT: two red circles </s>"]
TEXT += ["what colour is the star? which shape is left of the square? a blue heart"]


def llava_folder(folder: Path, tokenizer: bool = True, seed: int = 0):
    """`(folder, model, tokenizer)`: a random LLaVA of a 2-layer ViT (32-pixel images, 16-pixel
    patches: 4 image tokens) and a 1-layer LLaMA, saved with `save_pretrained`."""
    words = train_lm_tokenizer(TEXT * 10, vocab_size=120)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
    )
    text = LlamaConfig(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=words.bos_token_id,
        eos_token_id=words.eos_token_id,
        pad_token_id=words.pad_token_id,
    )
    torch.manual_seed(seed)
    image_token = words.convert_tokens_to_ids("<image>")
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token)
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    if tokenizer:
        words.save_pretrained(folder)
    return folder, model, words


def image_file(path: Path) -> Path:
    image = Image.new("RGB", (40, 32), "white")
    image.paste((200, 30, 30), (4, 4, 20, 20))
    image.save(path)
    return path
