"""BERT WordPiece tokenizers for the fusion and captioning models (ALBEF, BLIP): loaded from a
checkpoint folder's own files, or trained on built-in text, and saved with the model.

The text work is done by the ``tokenizers`` library, set up as ``transformers``'
``BertTokenizerFast`` sets it up (BERT normaliser, lower case unless the folder says
otherwise, BERT pre-tokenizer, ``##`` continuation pieces), so ids equal transformers' for the
same ``vocab.txt``. A row is ``[CLS] pieces [SEP] [PAD]...``.

BLIP adds two tokens to BERT's five ([PAD] [UNK] [CLS] [SEP] [MASK]): ``[DEC]``, which
replaces [CLS] at the start of the captioning decoder's input (transformers' BLIP models take
it as ``text_config.bos_token_id``), and ``[ENC]``, which replaces [CLS] at the start of
BLIP's image-text matching input. BLIP appends them after the vocabulary when the vocabulary
lacks them (bert-base-uncased: [DEC] = 30522, [ENC] = 30523, as in ``BlipTextConfig``); so
do we. A vocabulary we train holds all seven, [PAD] first (id 0).

A folder holds ``tokenizer.json`` (read first when present) and/or ``vocab.txt``, with an
optional ``tokenizer_config.json`` (its ``do_lower_case`` and ``model_max_length`` are used).
:meth:`WordPieceTokenizer.save` writes all three, so transformers can load the folder too.

>>> tok = train_wordpiece(["two red stars", "a blue circle on the left"] * 5, vocab_size=60)
>>> batch = tok(["two blue stars", "a red circle"])
>>> tok.decode(batch.input_ids[0])
'two blue stars'
>>> batch.input_ids[0, 0].item() == tok.cls_token_id, batch.attention_mask[1].tolist()
(True, [1, 1, 1, 1, 1])
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from mmcl.io.atomic import atomic_path
from mmcl.io.text_files import read_text

__all__ = [
    "BERT_SPECIAL_TOKENS",
    "BLIP_SPECIAL_TOKENS",
    "WordPieceBatch",
    "WordPieceTokenizer",
    "load_wordpiece",
    "train_wordpiece",
]

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BLIP_SPECIAL_TOKENS = ("[DEC]", "[ENC]")  # decoder start (bos), image-text matching start
TOKENIZER_JSON, VOCAB_TXT, CONFIG_JSON = "tokenizer.json", "vocab.txt", "tokenizer_config.json"
DEFAULT_CONTEXT_LENGTH = 35  # BLIP's caption length in training


class WordPieceBatch(NamedTuple):
    input_ids: torch.Tensor  # (N, L) long
    attention_mask: torch.Tensor  # (N, L) long: 1 for tokens, 0 for padding


class WordPieceTokenizer:
    """A BERT WordPiece tokenizer with BLIP's [DEC] and [ENC]; see the module docstring.

    Build one with :func:`load_wordpiece` or :func:`train_wordpiece`.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        lowercase: bool = True,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        source: str = "WordPiece tokenizer",
    ) -> None:
        tokenizer.no_padding()
        tokenizer.no_truncation()
        missing = [t for t in BERT_SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(
                f"{source}: the vocabulary lacks the special token(s) {missing}; a BERT "
                f"vocabulary has all of {list(BERT_SPECIAL_TOKENS)}"
            )
        # Appended after the vocabulary when missing, as BLIP's add_special_tokens does.
        tokenizer.add_special_tokens(list(BERT_SPECIAL_TOKENS + BLIP_SPECIAL_TOKENS))
        self._tokenizer, self.lowercase, self.source = tokenizer, lowercase, source
        self.context_length = _positive_int("context_length", context_length)
        ids = {token: tokenizer.token_to_id(token) for token in BERT_SPECIAL_TOKENS}
        ids |= {token: tokenizer.token_to_id(token) for token in BLIP_SPECIAL_TOKENS}
        self.pad_token_id, self.unk_token_id = ids["[PAD]"], ids["[UNK]"]
        self.cls_token_id, self.sep_token_id = ids["[CLS]"], ids["[SEP]"]
        self.mask_token_id = ids["[MASK]"]
        self.dec_token_id, self.enc_token_id = ids["[DEC]"], ids["[ENC]"]
        self._first_tokens = {"[CLS]": self.cls_token_id, "[DEC]": self.dec_token_id}
        self._first_tokens["[ENC]"] = self.enc_token_id

    @property
    def bos_token_id(self) -> int:
        """BLIP's decoder start token, [DEC]."""
        return self.dec_token_id

    @property
    def vocab_size(self) -> int:
        """The number of ids, [DEC] and [ENC] included (the text embedding's rows)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source}, vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        """The word-piece ids of ``text``, without [CLS] and [SEP]."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def __call__(
        self,
        texts: str | Sequence[str],
        context_length: int | None = None,
        first_token: str = "[CLS]",
        pad_to_context_length: bool = False,
    ) -> WordPieceBatch:
        """Rows of ``first_token, pieces, [SEP]`` padded with [PAD] to the longest row.

        A text too long for ``context_length`` keeps its first pieces and still ends with
        [SEP] (as transformers' ``truncation=True``). ``first_token`` is "[CLS]", or BLIP's
        "[DEC]" (captioning decoder) or "[ENC]" (image-text matching).
        """
        if isinstance(texts, str):
            texts = [texts]
        batch = list(texts)
        for i, text in enumerate(batch):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
        if first_token not in self._first_tokens:
            raise ValueError(
                f"first_token must be one of {list(self._first_tokens)}, got {first_token!r}"
            )
        length = self.context_length if context_length is None else context_length
        length = _positive_int("context_length", length)
        if length < 2:
            raise ValueError(
                f"context_length must be at least 2 (for [CLS] and [SEP]), got {length}"
            )
        rows = [
            [self._first_tokens[first_token], *encoding.ids[: length - 2], self.sep_token_id]
            for encoding in self._tokenizer.encode_batch(batch, add_special_tokens=False)
        ]
        width = length if pad_to_context_length or not rows else max(map(len, rows))
        padding = [width - len(row) for row in rows]
        input_ids = [
            row + [self.pad_token_id] * pad for row, pad in zip(rows, padding, strict=True)
        ]
        mask = [[1] * len(row) + [0] * pad for row, pad in zip(rows, padding, strict=True)]
        shape = (len(rows), width)
        return WordPieceBatch(
            torch.tensor(input_ids, dtype=torch.long).view(shape),
            torch.tensor(mask, dtype=torch.long).view(shape),
        )

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Text of ids, pieces joined; special tokens (padding included) dropped by default."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode takes one sequence of ids, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, folder: str | Path) -> Path:
        """Write ``tokenizer.json``, ``vocab.txt`` and ``tokenizer_config.json`` into ``folder``
        (created if needed; other files are left alone), each file atomically."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{folder}: not a folder; give the model folder to save into")
        vocab = self._tokenizer.get_vocab(with_added_tokens=False)
        by_id = sorted(vocab, key=vocab.__getitem__)
        if [vocab[token] for token in by_id] != list(range(len(by_id))):
            # A vocab.txt gives ids by line number: it cannot hold a vocabulary with gaps.
            raise ValueError(
                f"{self.source}: the vocabulary's ids are not 0..{len(by_id) - 1} without gaps, "
                f"so it cannot be written as a vocab.txt"
            )
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.lowercase,
            "model_max_length": self.context_length,
            "unk_token": "[UNK]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
            # transformers adds these after the vocabulary when vocab.txt lacks them, as BLIP.
            "bos_token": "[DEC]",
            "additional_special_tokens": ["[ENC]"],
        }
        for name, text in (
            (TOKENIZER_JSON, self._tokenizer.to_str()),
            (VOCAB_TXT, "".join(f"{token}\n" for token in by_id)),
            (CONFIG_JSON, json.dumps(config, indent=2) + "\n"),
        ):
            with atomic_path(folder / name) as tmp:
                tmp.write_text(text, encoding="utf-8")
        return folder


def load_wordpiece(folder: str | Path, context_length: int | None = None) -> WordPieceTokenizer:
    """The tokenizer a checkpoint folder ships: its ``tokenizer.json``, else its ``vocab.txt``.

    Raises FileNotFoundError when the folder has neither, and ValueError naming the file when
    one is unreadable, not UTF-8, not a WordPiece tokenizer, or lacks BERT's special tokens.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {folder}")
    config = _read_config(folder / CONFIG_JSON)
    lowercase = bool(config.get("do_lower_case", True))
    if context_length is None:
        saved = config.get("model_max_length")
        context_length = saved if isinstance(saved, int) and 2 <= saved <= 4096 else None
    length = DEFAULT_CONTEXT_LENGTH if context_length is None else context_length
    if (folder / TOKENIZER_JSON).is_file():
        path = folder / TOKENIZER_JSON
        try:
            tokenizer = Tokenizer.from_str(read_text(path, "tokenizer file"))
        except Exception as error:  # the Rust parser's errors are plain Exceptions
            raise ValueError(f"{path}: not a valid tokenizer.json ({error})") from None
        if not isinstance(tokenizer.model, models.WordPiece):
            raise ValueError(
                f"{path}: a {type(tokenizer.model).__name__} tokenizer, expected WordPiece "
                f"(BERT's); BLIP and ALBEF need a BERT vocabulary"
            )
        # The file's own normaliser decides; the config's do_lower_case is for vocab.txt.
        lowercase = bool(getattr(tokenizer.normalizer, "lowercase", lowercase))
        return WordPieceTokenizer(tokenizer, lowercase, length, str(path))
    if (folder / VOCAB_TXT).is_file():
        path = folder / VOCAB_TXT
        return WordPieceTokenizer(
            _bert_tokenizer(_read_vocab(path), lowercase), lowercase, length, str(path)
        )
    raise FileNotFoundError(
        f"{folder}: no {TOKENIZER_JSON} or {VOCAB_TXT}; a BLIP/ALBEF model folder needs its "
        f"WordPiece vocabulary (save one with WordPieceTokenizer.save)"
    )


def train_wordpiece(
    texts: Iterable[str],
    vocab_size: int = 1000,
    min_frequency: int = 1,
    lowercase: bool = True,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
) -> WordPieceTokenizer:
    """A WordPiece vocabulary of at most ``vocab_size`` ids for a small, closed set of texts
    (the built-in scene captions and questions), the same for the same texts and settings.

    The vocabulary is the seven special tokens ([PAD] = 0, ..., [DEC] = 5, [ENC] = 6), every
    character seen, both word-initial (``r``) and continuing (``##r``), so no text of these
    characters is ever [UNK], then whole words, most frequent first (ties alphabetical) while
    ``vocab_size`` allows and seen ``min_frequency`` times or more; other words are spelt in
    characters. Words are what the BERT normaliser and pre-tokenizer of ``tokenizers`` make
    of the texts. We do not use ``tokenizers``' WordPieceTrainer: its vocabulary changes
    from run to run (huggingface/tokenizers#1794), and a model trained on one vocabulary is
    garbage with another.
    """
    _positive_int("vocab_size", vocab_size)
    _positive_int("min_frequency", min_frequency)
    tokenizer = _bert_tokenizer({"[UNK]": 0}, lowercase)
    word_counts: Counter[str] = Counter()
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
        normalized = tokenizer.normalizer.normalize_str(text)
        word_counts.update(word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized))
    characters = sorted({character for word in word_counts for character in word})
    special = list(BERT_SPECIAL_TOKENS + BLIP_SPECIAL_TOKENS)
    pieces = special + characters + [f"##{character}" for character in characters]
    if vocab_size < len(pieces):
        raise ValueError(
            f"vocab_size {vocab_size} is too small for the {len(special)} special tokens and "
            f"the {len(characters)} characters of the texts (x2: word-initial and ##); "
            f"need at least {len(pieces)}"
        )
    frequent = sorted(word_counts.items(), key=lambda item: (-item[1], item[0]))
    known = set(pieces)
    for word, count in frequent:
        if len(pieces) >= vocab_size or count < min_frequency:
            break
        if word not in known:
            pieces.append(word)
    vocab = {piece: index for index, piece in enumerate(pieces)}
    source = "trained WordPiece tokenizer"
    return WordPieceTokenizer(_bert_tokenizer(vocab, lowercase), lowercase, context_length, source)


def _bert_tokenizer(vocab: dict[str, int], lowercase: bool) -> Tokenizer:
    """A WordPiece pipeline as transformers' BertTokenizerFast builds it."""
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _read_vocab(path: Path) -> dict[str, int]:
    lines = read_text(path, "vocabulary file").splitlines()
    if not any(line.strip() for line in lines):
        raise ValueError(f"{path}: the vocabulary file is empty (expected one token a line)")
    vocab: dict[str, int] = {}
    for index, token in enumerate(lines):
        if not token.strip():
            raise ValueError(
                f"{path}, line {index + 1}: an empty token; a vocab.txt has one token a line"
            )
        if token in vocab:
            raise ValueError(
                f"{path}, line {index + 1}: the token {token!r} is already on line "
                f"{vocab[token] + 1}; a vocabulary lists each token once"
            )
        vocab[token] = index
    return vocab


def _read_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        config = json.loads(read_text(path, "tokenizer config"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value
