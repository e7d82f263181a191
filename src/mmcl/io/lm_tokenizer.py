"""A small LLaMA-style tokenizer (byte-pair encoding over "▁"-marked words, as SentencePiece
writes them) trained with `tokenizers` on given text, as a transformers tokenizer that
`save_pretrained` writes into a model's folder and `AutoTokenizer.from_pretrained` reads back.

Its special tokens are LLaMA's (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2), then ``<pad>`` 3 and
the image placeholder ``<image>`` 4, which LLaVA bridges use as their `image_token_id`.

>>> tokenizer = train_lm_tokenizer(["two red stars", "a blue heart"] * 20, vocab_size=60)
>>> tokenizer.decode(tokenizer.encode("two blue stars", add_special_tokens=False))
'two blue stars'
>>> tokenizer.convert_tokens_to_ids("<image>"), tokenizer.eos_token_id
(4, 2)
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")


def train_lm_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A BPE tokenizer of at most `vocab_size` tokens (the special ones included) learned
    from `texts`; every character of `texts` is in its alphabet."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<image>"],
        clean_up_tokenization_spaces=False,
    )
