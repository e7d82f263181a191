"""A transformers tokenizer with one id per whitespace-separated word, so that token layouts
can be worked out by hand: ids 0-3 are <pad>, <s>, </s>, <unk>, then `words` in order."""

from __future__ import annotations

from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def word_tokenizer(words: list[str], **specials) -> PreTrainedTokenizerFast:
    vocab = {word: index for index, word in enumerate([*SPECIALS, *words])}
    model = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = WhitespaceSplit()
    names = dict(pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    return PreTrainedTokenizerFast(tokenizer_object=model, **{**names, **specials})
