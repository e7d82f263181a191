"""A BLIP's WordPiece tokenizer: the one its model folder ships (``tokenizer.json`` or
``vocab.txt`` beside the weights), else the shipped vocabulary its config names
(``blip_text.vocabulary``, a folder of `mmcl/models/vocabularies`).

The shipped "scenes" vocabulary is the built-in scene texts' (`mmcl.data.scene_texts`), made
by ``train_wordpiece(scene_texts(5000), vocab_size=4000, context_length=29)``; a test checks
that it still equals what that call makes.

>>> import mmcl
>>> tokenizer = mmcl.create_model("tiny-blip").tokenizer
>>> tokenizer.decode(tokenizer(["two red stars"]).input_ids[0])
'two red stars'
"""

from __future__ import annotations

from pathlib import Path

from mmcl.io.wordpiece import (
    CONFIG_JSON,
    TOKENIZER_JSON,
    VOCAB_TXT,
    WordPieceTokenizer,
    load_wordpiece,
)
from mmcl.models.blip_config import BlipConfig

__all__ = ["blip_tokenizer", "shipped_vocabularies", "shipped_vocabulary"]


SHIPPED = Path(__file__).parent / "vocabularies"


def shipped_vocabularies() -> list[str]:
    return sorted(entry.name for entry in SHIPPED.iterdir() if entry.is_dir())


def shipped_vocabulary(name: str, context_length: int | None = None) -> WordPieceTokenizer:
    """The WordPiece vocabulary shipped as `mmcl/models/vocabularies/NAME` (e.g. "scenes",
    which every built-in scene model reads: tiny-blip, tiny-albef)."""
    if name not in shipped_vocabularies():
        raise ValueError(
            f"vocabulary {name!r} is not a shipped vocabulary "
            f"({', '.join(shipped_vocabularies())}); set it to one of them or to null and "
            f"put the model's {VOCAB_TXT} beside its weights"
        )
    return load_wordpiece(SHIPPED / name, context_length)


def blip_tokenizer(
    config: BlipConfig, folder: str | Path | None = None
) -> WordPieceTokenizer | None:
    """The tokenizer of `folder` when it holds one, else the config's shipped vocabulary, else
    None. Its special ids must be the config's: a model trained on one vocabulary is
    garbage with another, so a mismatch is an error naming the files."""
    if folder is not None and any(
        (Path(folder) / name).is_file() for name in (TOKENIZER_JSON, VOCAB_TXT)
    ):
        tokenizer = load_wordpiece(folder)
        source = tokenizer.source  # the file read
    elif config.blip_text.vocabulary is not None:
        name = config.blip_text.vocabulary
        try:
            tokenizer = shipped_vocabulary(name)
        except ValueError as error:
            raise ValueError(f"blip_text.{error}") from None
        source = f"shipped vocabulary {name!r}"
    else:
        return None
    _check_ids(config, tokenizer, source)
    return tokenizer


def _check_ids(config: BlipConfig, tokenizer: WordPieceTokenizer, source: str) -> None:
    text = config.blip_text
    expected = {
        "[PAD]": (text.pad_id, tokenizer.pad_token_id),
        "[SEP]": (text.sep_id, tokenizer.sep_token_id),
        "[DEC]": (text.dec_id, tokenizer.dec_token_id),
        "[ENC]": (text.enc_id, tokenizer.enc_token_id),
    }
    wrong = [f"{token} is {got}, the model's {want}" for token, (want, got) in expected.items()]
    wrong = [
        line for line, (want, got) in zip(wrong, expected.values(), strict=True) if want != got
    ]
    if tokenizer.vocab_size > text.vocab_size:
        wrong.append(f"{tokenizer.vocab_size} ids, the model embeds {text.vocab_size}")
    if wrong:
        raise ValueError(
            f"{source}: the WordPiece tokenizer does not fit the model ({'; '.join(wrong)}); "
            f"the model folder's {TOKENIZER_JSON}/{VOCAB_TXT}/{CONFIG_JSON} must be the "
            f"vocabulary it was trained with"
        )
