"""The text side of a model for the commands that read or write captions: which tokenizer its
ids come from, and which heads it has (a caption decoder, an image-text matching head).

CLIP and CoCa use CLIP's BPE tokenizer, built in. BLIP's and ALBEF's ids come from the
WordPiece vocabulary their checkpoint folder ships (`mmcl.io.wordpiece`); nothing in the weights
says which, so the folder is asked for, and checked against the ids the model was built with.
Every command that encodes text (embed, zeroshot, retrieval, caption, capfilt) asks here.

>>> import mmcl
>>> text = model_text(mmcl.create_model("tiny-coca"))
>>> text.tokens(["a red star"]).shape[0], text.decode(text.tokens(["a red star"])[0])
(1, 'a red star')
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mmcl.io.tokenizer import get_tokenizer
from mmcl.io.wordpiece import CONFIG_JSON, TOKENIZER_JSON, VOCAB_TXT, load_wordpiece
from mmcl.models.albef import Albef
from mmcl.models.blip import Blip
from mmcl.models.coca import CoCa

__all__ = [
    "ModelText",
    "has_caption_decoder",
    "has_itm_head",
    "model_text",
    "tokenizer_folder",
]


@dataclass
class ModelText:
    """`tokens(texts)`: ``(N, length)`` ids as the model's text encoder reads them (start
    token, pieces, end token, padding); `decode(ids)`: text, special tokens dropped; `tokenizer`:
    the tokenizer itself; `fingerprint`: a hash of its vocabulary, for manifests."""

    tokens: Callable[[Sequence[str]], torch.Tensor]
    decode: Callable[[torch.Tensor], str]
    tokenizer: object
    fingerprint: str


def has_caption_decoder(model) -> bool:
    return isinstance(model, CoCa) or (isinstance(model, Blip) and model.text_decoder is not None)


def has_itm_head(model) -> bool:
    """Whether `model` scores image-text pairs (`itm_logits`): a BLIP with its ITM head, or an
    ALBEF (whose fusion encoder always has one)."""
    return isinstance(model, Albef) or (isinstance(model, Blip) and model.itm_head is not None)


def tokenizer_folder(pretrained: str | os.PathLike | None) -> Path | None:
    """Where a BLIP or ALBEF checkpoint's vocabulary is looked for: the `pretrained` folder
    itself, or the folder of a `pretrained` file; None for a tag or nothing."""
    if pretrained is None:
        return None
    path = Path(pretrained)
    if path.is_dir():
        return path
    return path.parent if path.is_file() else None


def model_text(model, folder: str | os.PathLike | None = None) -> ModelText:
    """The tokenizer of `model`: CLIP's for CLIP and CoCa; for BLIP and ALBEF the WordPiece
    vocabulary in `folder`, whose special-token ids must be the model's."""
    expected = _wordpiece_ids(model)
    if expected is None:
        tokenizer = get_tokenizer(model.context_length)
        return ModelText(
            lambda texts: tokenizer(list(texts)), tokenizer.decode, tokenizer, "clip-bpe"
        )
    name = type(model).__name__.upper()
    if folder is None or not any((Path(folder) / n).is_file() for n in (TOKENIZER_JSON, VOCAB_TXT)):
        where = "no folder was given" if folder is None else f"{folder} holds neither"
        raise ValueError(
            f"the {name} model needs its WordPiece vocabulary (tokenizer.json or vocab.txt) and "
            f"{where}: give --tokenizer FOLDER, or a --pretrained folder that holds one"
        )
    tokenizer = load_wordpiece(folder)
    vocab_size = expected.pop("vocab_size")
    found = {
        "[PAD]": tokenizer.pad_token_id,
        "[CLS]": tokenizer.cls_token_id,
        "[SEP]": tokenizer.sep_token_id,
        "[MASK]": tokenizer.mask_token_id,
        "[DEC]": tokenizer.dec_token_id,
        "[ENC]": tokenizer.enc_token_id,
    }
    wrong = [f"{t} is {found[t]}, the model's {i}" for t, i in expected.items() if found[t] != i]
    used = _ids_used(tokenizer, expected)
    if used > vocab_size:
        wrong.append(f"{used} ids, the model has {vocab_size}")
    if wrong:
        raise ValueError(
            f"{tokenizer.source}: not this model's vocabulary ({'; '.join(wrong)}); give the "
            f"folder of the vocabulary the model was trained with (--tokenizer FOLDER)"
        )
    length = min(tokenizer.context_length, model.context_length)
    digest = hashlib.sha256()
    for file_name in (TOKENIZER_JSON, VOCAB_TXT, CONFIG_JSON):
        if (Path(folder) / file_name).is_file():
            digest.update((Path(folder) / file_name).read_bytes())
    return ModelText(
        lambda texts: tokenizer(list(texts), context_length=length).input_ids,
        tokenizer.decode,
        tokenizer,
        digest.hexdigest(),
    )


def _wordpiece_ids(model) -> dict[str, int] | None:
    """The special-token ids a WordPiece model was built with, and its `vocab_size`; None for
    a model that reads CLIP's BPE ids."""
    if isinstance(model, Blip):
        text = model.config.blip_text
        ids = {"[PAD]": text.pad_id, "[SEP]": text.sep_id, "[DEC]": text.dec_id}
        if model.itm_head is not None:
            ids["[ENC]"] = text.enc_id
        return ids | {"vocab_size": text.vocab_size}
    if isinstance(model, Albef):
        text = model.config.albef_text
        ids = {"[PAD]": text.pad_id, "[CLS]": text.cls_id, "[SEP]": text.sep_id}
        return ids | {"[MASK]": text.mask_id, "vocab_size": text.vocab_size}
    return None


def _ids_used(tokenizer, expected: dict[str, int]) -> int:
    """How many embedding rows the model's text needs: every id, less BLIP's [DEC] and [ENC]
    when the tokenizer appended them after a BERT vocabulary and the model never reads them
    (ALBEF: bert-base-uncased's vocab.txt has 30522 ids, the tokenizer 30524)."""
    size = tokenizer.vocab_size
    unread = {tokenizer.dec_token_id, tokenizer.enc_token_id} - set(expected.values())
    while size - 1 in unread:
        size -= 1
    return size
