"""The text side of a model for the commands that read or write captions: which tokenizer its
ids come from, and which heads it has (a caption decoder, an image-text matching head).

CLIP and CoCa use CLIP's BPE tokenizer, built in. BLIP's ids come from the WordPiece
vocabulary its checkpoint folder ships (`mmcl.io.wordpiece`); nothing in the weights says
which, so the folder is asked for, and checked against the ids the model was built with.

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
    return isinstance(model, Blip) and model.itm_head is not None


def tokenizer_folder(pretrained: str | os.PathLike | None) -> Path | None:
    """Where a BLIP checkpoint's vocabulary is: the `pretrained` folder itself, or the folder
    of a `pretrained` file when it holds a vocabulary; None otherwise."""
    if pretrained is None:
        return None
    path = Path(pretrained)
    if path.is_dir():
        return path
    if path.is_file() and any((path.parent / n).is_file() for n in (TOKENIZER_JSON, VOCAB_TXT)):
        return path.parent
    return None


def model_text(model, folder: str | os.PathLike | None = None) -> ModelText:
    """The tokenizer of `model`: CLIP's for CLIP and CoCa; for BLIP the WordPiece vocabulary in
    `folder`, whose [PAD], [SEP], [DEC] and [ENC] ids must be the model's."""
    if not isinstance(model, Blip):
        tokenizer = get_tokenizer(model.context_length)
        return ModelText(
            lambda texts: tokenizer(list(texts)), tokenizer.decode, tokenizer, "clip-bpe"
        )
    if folder is None or not any((Path(folder) / n).is_file() for n in (TOKENIZER_JSON, VOCAB_TXT)):
        where = "no folder was given" if folder is None else f"{folder} holds neither"
        raise ValueError(
            f"a BLIP model needs its WordPiece vocabulary (tokenizer.json or vocab.txt) and "
            f"{where}: give --tokenizer FOLDER, or a --pretrained folder that holds one"
        )
    tokenizer = load_wordpiece(folder)
    text = model.config.blip_text
    expected = {"[PAD]": text.pad_id, "[SEP]": text.sep_id, "[DEC]": text.dec_id}
    if model.itm_head is not None:
        expected["[ENC]"] = text.enc_id
    found = {
        "[PAD]": tokenizer.pad_token_id,
        "[SEP]": tokenizer.sep_token_id,
        "[DEC]": tokenizer.dec_token_id,
        "[ENC]": tokenizer.enc_token_id,
    }
    wrong = [f"{t} is {found[t]}, the model's {i}" for t, i in expected.items() if found[t] != i]
    if wrong or tokenizer.vocab_size > text.vocab_size:
        if tokenizer.vocab_size > text.vocab_size:
            wrong.append(f"{tokenizer.vocab_size} ids, the model has {text.vocab_size}")
        raise ValueError(
            f"{tokenizer.source}: not this model's vocabulary ({'; '.join(wrong)}); give the "
            f"folder of the vocabulary the model was trained with (--tokenizer FOLDER)"
        )
    length = min(tokenizer.context_length, model.context_length)
    digest = hashlib.sha256()
    for name in (TOKENIZER_JSON, VOCAB_TXT, CONFIG_JSON):
        if (Path(folder) / name).is_file():
            digest.update((Path(folder) / name).read_bytes())
    return ModelText(
        lambda texts: tokenizer(list(texts), context_length=length).input_ids,
        tokenizer.decode,
        tokenizer,
        digest.hexdigest(),
    )
