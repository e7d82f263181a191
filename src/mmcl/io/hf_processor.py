"""The files transformers' `CLIPProcessor.from_pretrained(folder)` reads, made from mmcl's own
tokenizer vocabulary and preprocessing, offline.

The tokenizer is built with the `tokenizers` library from mmcl's vocabulary and merges, in
the pipeline transformers uses for CLIP (NFC, whitespace collapsed, lower case; CLIP's word
pattern; byte-level BPE with "</w>"; start and end tokens around each text). Each text's ids,
start to end token, are mmcl's, except where mmcl's cleaning does more than that pipeline:
HTML entities ("&amp;") are unescaped and ftfy's repairs (mojibake, curly quotes, ligatures,
full-width letters) made by mmcl only, and literal "<|endoftext|>" is a special token to
transformers only. Padding is the end token, as in OpenAI's tokenizer on the Hub, where mmcl
and open_clip pad with 0; the features are the same, as the text tower reads the first end
token and attends to nothing after it. (Padding with "!", id 0, would make transformers read
every "!" in a text as padding.)

The image processor config describes mmcl's eval transform: shorter side resized to the
image size (bicubic), centre crop, scale to [0, 1], OpenAI's mean and std. transformers' PIL
backend (`backend="pil"`; `use_fast=False` before transformers 5) gives mmcl's pixels; its
default torchvision backend resizes tensors and is off by up to one 8-bit level.
"""

from __future__ import annotations

import json

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers import processors as post_processors
from tokenizers.models import BPE

from mmcl.io.tokenizer_vocab import (
    END_OF_WORD,
    EOT_TEXT,
    SOT_TEXT,
    default_vocabulary,
    read_merges,
)
from mmcl.io.transforms import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

# transformers' (and OpenAI's) names for the special tokens mmcl calls SOT_TEXT / EOT_TEXT.
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
PAD = EOS
# CLIP's word pattern as transformers writes it (mmcl's, less its special-token alternatives,
# which are added tokens here).
WORD_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
PIL_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, as transformers' configs store it
HF_PROCESSOR_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
)


def processor_files(image_size: int, context_length: int) -> dict[str, str]:
    """File name -> text, for a `CLIPModel` folder."""
    vocab = _vocab()
    merges = [f"{first} {second}" for first, second in read_merges(None)]
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": PAD}
    tokenizer_config = {
        "tokenizer_class": "CLIPTokenizer",
        "processor_class": "CLIPProcessor",
        "model_max_length": context_length,
        **special,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "do_lower_case": True,
        "errors": "replace",
    }
    image_processor = {
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "CLIPProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "resample": PIL_BICUBIC,
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_convert_rgb": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(OPENAI_DATASET_MEAN),
        "image_std": list(OPENAI_DATASET_STD),
    }
    return {
        "tokenizer.json": build_tokenizer(vocab, merges).to_str(pretty=True),
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "\n".join(["#version: 0.2", *merges]) + "\n",
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2),
        "special_tokens_map.json": json.dumps(special, indent=2),
        "preprocessor_config.json": json.dumps(image_processor, indent=2),
    }


def _vocab() -> dict[str, int]:
    renamed = {SOT_TEXT: BOS, EOT_TEXT: EOS}
    return {renamed.get(token, token): i for token, i in default_vocabulary().token_id.items()}


def build_tokenizer(vocab: dict[str, int], merges: list[str]) -> Tokenizer:
    """transformers' CLIP pipeline around mmcl's vocabulary (see the module docstring)."""
    pairs = [tuple(merge.split(" ")) for merge in merges]
    tokenizer = Tokenizer(
        BPE(
            vocab=vocab,
            merges=pairs,
            continuing_subword_prefix="",
            end_of_word_suffix=END_OF_WORD,
            fuse_unk=False,
            unk_token=EOS,
        )
    )
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [AddedToken(BOS, normalized=False), AddedToken(EOS, normalized=False)]
    )
    tokenizer.post_processor = post_processors.RobertaProcessing(
        (EOS, vocab[EOS]), (BOS, vocab[BOS]), trim_offsets=False, add_prefix_space=False
    )
    return tokenizer
