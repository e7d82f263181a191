"""WordPiece tokenizers for BLIP/ALBEF: ids equal to transformers' BertTokenizerFast on the same
vocab.txt, a vocabulary trained on the built-in scene texts, and save/load round trips."""

from __future__ import annotations

import doctest
import json
import re

import pytest
import torch
from transformers import BertTokenizerFast

from mmcl.data.scene_qa import scene_texts
from mmcl.io import wordpiece
from mmcl.io.wordpiece import (
    BERT_SPECIAL_TOKENS,
    BLIP_SPECIAL_TOKENS,
    load_wordpiece,
    train_wordpiece,
)

# Texts a vocabulary trained on scene texts has not seen: capitals, punctuation, accents, an
# unknown word, a very long word, Chinese characters, spacing, the empty string, a special
# token written in the text.
AWKWARD_TEXTS = [
    "Two RED stars, on the LEFT!",
    "a café-coloured circle... naïve?",
    "zebra",
    "a" * 120,
    "中文 stars",
    "  spaced\tout\n",
    "",
    "[MASK] the ring",
]


@pytest.fixture(scope="module")
def scene_tokenizer():
    return train_wordpiece(scene_texts(1500), vocab_size=400)


@pytest.fixture(scope="module")
def held_out_texts():
    return scene_texts(300, split="test", seed=7)


def hand_written_bert_vocab(tmp_path, lowercase_config: bool | None = None):
    """A BERT-layout vocab.txt ([PAD] 0, unused slots, [UNK] [CLS] [SEP] [MASK]) without BLIP's
    [DEC] and [ENC], as bert-base-uncased's."""
    tokens = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += list("abcdefghijklmnopqrstuvwxyz.,!?'")
    tokens += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    tokens += ["the", "red", "Red", "star", "##s", "dog", "run", "##ning"]
    tokens.remove("##s")  # listed once, in the words
    tokens += ["##s"]
    tokens = list(dict.fromkeys(tokens))
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "vocab.txt").write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
    if lowercase_config is not None:
        (folder / "tokenizer_config.json").write_text(
            json.dumps({"do_lower_case": lowercase_config})
        )
    return folder, tokens


def test_scene_vocabulary_has_the_special_tokens_first_and_covers_held_out_scene_texts(
    scene_tokenizer, held_out_texts
):
    tok = scene_tokenizer
    specials = [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id]
    specials += [tok.mask_token_id, tok.dec_token_id, tok.enc_token_id]
    assert specials == list(range(7)) and tok.bos_token_id == tok.dec_token_id
    assert not any(tok.unk_token_id in tok.encode(text) for text in held_out_texts)
    assert all(tok.decode(tok(text).input_ids[0]) == text for text in held_out_texts[:50])
    assert tok.vocab_size <= 400
    # Every word of the scene texts is one piece (plus "?" and "," as their own).
    for text in held_out_texts[:100]:
        assert len(tok.encode(text)) == len(re.findall(r"\w+|[^\w\s]", text)), text


def test_trained_vocabulary_hand_worked():
    # Words: red x3, blue, green; characters b d e g l n r u (8, twice each) after the 7
    # special tokens: 23 ids, then whole words by frequency, ties alphabetical.
    texts = ["Red red blue", "red green"]
    tok = train_wordpiece(texts, vocab_size=24)
    assert tok.vocab_size == 24
    assert [tok.decode([i]) for i in tok.encode("red")] == ["red"]
    assert len(tok.encode("blue")) == 4  # b ##l ##u ##e
    both = train_wordpiece(texts, vocab_size=25)  # "blue" before "green"
    assert len(both.encode("blue")) == 1 and len(both.encode("green")) == 5
    frequent_only = train_wordpiece(texts, vocab_size=100, min_frequency=2)
    assert frequent_only.vocab_size == 24
    with pytest.raises(ValueError, match="need at least 23"):
        train_wordpiece(texts, vocab_size=22)


def test_training_is_deterministic():
    texts = scene_texts(300)
    first, second = train_wordpiece(texts, vocab_size=200), train_wordpiece(texts, vocab_size=200)
    assert first._tokenizer.to_str() == second._tokenizer.to_str()


def test_ids_equal_bert_tokenizer_fast_on_the_saved_vocab(
    scene_tokenizer, held_out_texts, tmp_path
):
    scene_tokenizer.save(tmp_path / "model")
    reference = BertTokenizerFast(vocab=str(tmp_path / "model" / "vocab.txt"))
    texts = held_out_texts[:100] + AWKWARD_TEXTS
    for text in texts:
        ours = scene_tokenizer(text, context_length=512).input_ids[0].tolist()
        assert ours == reference(text)["input_ids"], text
    # A batch: padded to the longest row, with the same attention mask.
    batch = scene_tokenizer(texts)
    expected = reference(texts, padding="longest", return_tensors="pt")
    assert torch.equal(batch.input_ids, expected["input_ids"])
    assert torch.equal(batch.attention_mask, expected["attention_mask"])
    # Cut to 6: the first 4 pieces and [SEP], as truncation=True.
    cut = scene_tokenizer(texts, context_length=6)
    expected = reference(
        texts, padding="longest", truncation=True, max_length=6, return_tensors="pt"
    )
    assert torch.equal(cut.input_ids, expected["input_ids"])


@pytest.mark.parametrize("keep", ["tokenizer.json", "vocab.txt"])
def test_save_and_load_round_trip(scene_tokenizer, held_out_texts, tmp_path, keep):
    folder = scene_tokenizer.save(tmp_path / "model")
    assert {p.name for p in folder.iterdir()} == {
        "tokenizer.json",
        "vocab.txt",
        "tokenizer_config.json",
    }
    if keep == "vocab.txt":
        (folder / "tokenizer.json").unlink()  # as a checkpoint that ships only vocab.txt
    loaded = load_wordpiece(folder)
    texts = held_out_texts + AWKWARD_TEXTS
    assert torch.equal(loaded(texts).input_ids, scene_tokenizer(texts).input_ids)
    for name in ("pad", "unk", "cls", "sep", "mask", "dec", "enc"):
        assert getattr(loaded, f"{name}_token_id") == getattr(scene_tokenizer, f"{name}_token_id")
    assert loaded.vocab_size == scene_tokenizer.vocab_size
    assert loaded.context_length == scene_tokenizer.context_length


def test_save_adds_to_a_model_folder_without_touching_its_other_files(scene_tokenizer, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    scene_tokenizer.save(folder)
    assert (folder / "config.json").read_text() == "{}"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]


def test_a_bert_vocab_gets_blip_tokens_appended_as_blip_and_transformers_do(tmp_path):
    folder, tokens = hand_written_bert_vocab(tmp_path)
    tok = load_wordpiece(folder)
    # bert-base-uncased (30522 tokens) gives [DEC] 30522 and [ENC] 30523, BlipTextConfig's
    # bos_token_id and vocab_size 30524: appended in that order.
    assert (tok.dec_token_id, tok.enc_token_id, tok.vocab_size) == (
        len(tokens),
        len(tokens) + 1,
        len(tokens) + 2,
    )
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id) == (0, 3, 4, 5)
    reference = BertTokenizerFast(vocab=str(folder / "vocab.txt"))
    for text in ["The red stars!", "dogs running", "Red dog", *AWKWARD_TEXTS]:
        assert tok(text, context_length=512).input_ids[0].tolist() == reference(text)["input_ids"]
    # The saved folder tells transformers the same ids.
    tok.save(tmp_path / "saved")
    (tmp_path / "saved" / "tokenizer.json").unlink()
    loaded = BertTokenizerFast.from_pretrained(str(tmp_path / "saved"))
    assert loaded.bos_token == "[DEC]" and loaded.bos_token_id == tok.dec_token_id
    assert loaded.convert_tokens_to_ids("[ENC]") == tok.enc_token_id


def test_first_token_is_cls_or_blips_dec_or_enc(tmp_path):
    folder, _ = hand_written_bert_vocab(tmp_path)
    tok = load_wordpiece(folder)
    rows = {
        first: tok("the red star", first_token=first).input_ids[0]
        for first in ("[CLS]", "[DEC]", "[ENC]")
    }
    assert [int(row[0]) for row in rows.values()] == [
        tok.cls_token_id,
        tok.dec_token_id,
        tok.enc_token_id,
    ]
    assert torch.equal(rows["[CLS]"][1:], rows["[DEC]"][1:]) and torch.equal(
        rows["[CLS]"][1:], rows["[ENC]"][1:]
    )
    assert tok.decode(rows["[DEC]"]) == "the red star"
    assert tok.decode(rows["[DEC]"], skip_special_tokens=False).startswith("[DEC] the red")


def test_do_lower_case_false_in_the_folder_keeps_case(tmp_path):
    folder, _ = hand_written_bert_vocab(tmp_path, lowercase_config=False)
    tok = load_wordpiece(folder)
    reference = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=False)
    assert tok.encode("Red") != tok.encode("red")
    for text in ["Red red RED", "The Red star"]:
        assert tok(text).input_ids[0].tolist() == reference(text)["input_ids"]


def test_loads_a_tokenizer_json_written_by_transformers(tmp_path):
    folder, _ = hand_written_bert_vocab(tmp_path)
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(str(tmp_path / "hf"))
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    tok, reference = load_wordpiece(tmp_path / "hf"), load_wordpiece(folder)
    texts = ["The red stars!", "dogs running", *AWKWARD_TEXTS]
    assert torch.equal(tok(texts).input_ids, reference(texts).input_ids)


def test_special_token_names():
    assert BERT_SPECIAL_TOKENS == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    assert BLIP_SPECIAL_TOKENS == ("[DEC]", "[ENC]")


def test_doctests():
    assert doctest.testmod(wordpiece).failed == 0
