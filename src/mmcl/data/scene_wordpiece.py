"""A WordPiece vocabulary for the built-in scenes, for the BERT-style text models (ALBEF, BLIP).

Trained with `mmcl.io.wordpiece.train_wordpiece` on a fixed set of scene captions from both
splits, so it is the same in every process and every run: a model trained with it reads its
ids the same way later. A recipe saves it beside the model (`tokenizer.json`, `vocab.txt`),
so a trained model folder is self-contained.

>>> tok = scene_wordpiece()
>>> tok.decode(tok(["two red stars"]).input_ids[0])
'two red stars'
"""

from __future__ import annotations

import functools

import torch

from mmcl.data.scenes import SceneCaptions
from mmcl.io.wordpiece import WordPieceTokenizer, train_wordpiece

# Enough captions to meet every word of the caption grammar; a word never met would still
# be spelt in characters (never [UNK]), but whole words make shorter rows.
CAPTIONS_PER_SPLIT = 2000
SCENE_VOCAB_SIZE = 256  # an upper bound: the vocabulary stops when the words run out
SCENE_CONTEXT_LENGTH = 24  # the longest of 3000 test captions takes 21 ids, [CLS] and [SEP] in


@functools.cache
def scene_wordpiece(context_length: int = SCENE_CONTEXT_LENGTH) -> WordPieceTokenizer:
    captions = [
        SceneCaptions(split, CAPTIONS_PER_SPLIT).caption(index)
        for split in ("train", "test")
        for index in range(CAPTIONS_PER_SPLIT)
    ]
    return train_wordpiece(captions, SCENE_VOCAB_SIZE, context_length=context_length)


def scene_wordpiece_ids(texts: list[str]) -> torch.Tensor:
    """``(len(texts), SCENE_CONTEXT_LENGTH)`` ids padded to the full length, as data sets
    return them (equal lengths, so the default collate stacks them)."""
    return scene_wordpiece()(texts, pad_to_context_length=True).input_ids
