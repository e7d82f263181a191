"""The WordPiece vocabulary of the built-in scenes, for the BERT-style text models (ALBEF, BLIP).

One vocabulary for every scene model: the "scenes" vocabulary shipped with mmcl
(`mmcl/models/vocabularies/scenes`, which tiny-blip's config names; `mmcl.models.blip_vocab`
says how it was made, from the captions and the questions of `mmcl.data.scene_texts`). A file,
so it is the same in every process and every run. A recipe saves it beside the model
(`tokenizer.json`, `vocab.txt`), so a trained model folder is self-contained.

>>> tok = scene_wordpiece()
>>> tok.decode(tok(["two red stars"]).input_ids[0])
'two red stars'
"""

from __future__ import annotations

import functools

import torch

from mmcl.io.wordpiece import WordPieceTokenizer
from mmcl.models.blip_vocab import shipped_vocabulary

SCENE_CONTEXT_LENGTH = 24  # the longest of 3000 test captions takes 21 ids, [CLS] and [SEP] in


@functools.cache
def scene_wordpiece(context_length: int = SCENE_CONTEXT_LENGTH) -> WordPieceTokenizer:
    return shipped_vocabulary("scenes", context_length)


def scene_wordpiece_ids(texts: list[str]) -> torch.Tensor:
    """``(len(texts), SCENE_CONTEXT_LENGTH)`` ids padded to the full length, as data sets
    return them (equal lengths, so the default collate stacks them)."""
    return scene_wordpiece()(texts, pad_to_context_length=True).input_ids
