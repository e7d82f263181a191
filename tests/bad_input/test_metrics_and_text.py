"""Bad input to the caption and VQA metrics, the scene question data set and the WordPiece
tokenizer: what mmcl promises.

- `bleu`, `cider_d`, `vqa_accuracy` and `attribute_accuracy` refuse lists of different lengths,
  an empty corpus, a reference (or answer) list that is empty, and a bare string where a list
  of strings belongs, with a ValueError naming the argument (and the index) and the way out.
- `bleu` refuses an n that is not a positive int.
- `load_wordpiece` on a missing folder, or one with neither tokenizer.json nor vocab.txt, is a
  FileNotFoundError naming the folder and the files it looked for.
- A garbled vocabulary is a ValueError naming the file (and the line where there is one): a
  vocab.txt that is not UTF-8, empty, with an empty line or a token listed twice, or without
  BERT's special tokens; a tokenizer.json that is not JSON or not a WordPiece tokenizer; a
  tokenizer_config.json that is not a JSON object.
- `SceneQuestions` refuses kinds of question it does not know, none, or one twice, listing the
  kinds it knows.
"""

from __future__ import annotations

import pytest

from mmcl.data.scene_qa import SceneQuestions
from mmcl.data.scenes import Scene
from mmcl.eval.captioning import bleu, cider_d
from mmcl.eval.scene_captions import attribute_accuracy
from mmcl.eval.vqa import vqa_accuracy
from mmcl.io.wordpiece import load_wordpiece, train_wordpiece

CAPTION_METRICS = [bleu, cider_d]


@pytest.mark.parametrize("metric", CAPTION_METRICS)
def test_caption_metrics_refuse_lists_of_different_lengths(metric):
    with pytest.raises(
        ValueError,
        match=r"candidates has 2 entries but references has 1 entry; give one of each per image",
    ):
        metric(["a cat", "a dog"], [["a cat"]])


@pytest.mark.parametrize("metric", CAPTION_METRICS)
def test_caption_metrics_refuse_an_empty_reference_list_naming_its_index(metric):
    with pytest.raises(
        ValueError, match=r"references\[1\] is an empty list; every image needs at least one"
    ):
        metric(["a cat", "a dog"], [["a cat"], []])


@pytest.mark.parametrize("metric", CAPTION_METRICS)
def test_caption_metrics_refuse_a_bare_string_reference(metric):
    with pytest.raises(ValueError, match=r"references\[0\] must be a list of str, got str"):
        metric(["a cat"], ["a cat"])
    with pytest.raises(
        ValueError, match=r"candidates must be a list of str \(one per image\), got str"
    ):
        metric("a cat", [["a cat"]])
    with pytest.raises(ValueError, match=r"references\[0\]\[1\] must be a str, got int"):
        metric(["a cat"], [["a cat", 3]])


@pytest.mark.parametrize("metric", CAPTION_METRICS)
def test_caption_metrics_refuse_an_empty_corpus(metric):
    with pytest.raises(ValueError, match="need at least one image"):
        metric([], [])


@pytest.mark.parametrize("n", [0, -1, 2.0, True])
def test_bleu_refuses_an_order_that_is_not_a_positive_int(n):
    with pytest.raises(ValueError, match="n must be a positive int"):
        bleu(["a cat"], [["a cat"]], n=n)


def test_vqa_accuracy_refuses_mismatched_or_empty_answers():
    with pytest.raises(ValueError, match=r"predictions has 1 entry but answers has 2 entries"):
        vqa_accuracy(["yes"], [["yes"], ["no"]])
    with pytest.raises(ValueError, match=r"answers\[0\] is an empty list"):
        vqa_accuracy(["yes"], [[]])
    with pytest.raises(ValueError, match=r"answers\[0\] must be a list of str, got str"):
        vqa_accuracy(["yes"], ["yes"])
    with pytest.raises(ValueError, match="need at least one question"):
        vqa_accuracy([], [])


def test_attribute_accuracy_refuses_mismatched_lists():
    scene = Scene("star", "red", "small", 2, None, "white", layout_seed=0)
    with pytest.raises(ValueError, match="captions has 2 entries but scenes has 1 entry"):
        attribute_accuracy(["two red stars", "a star"], [scene])
    with pytest.raises(ValueError, match=r"scenes\[0\] must be a Scene, got str"):
        attribute_accuracy(["two red stars"], ["star"])


@pytest.mark.parametrize("kinds", [(), ("shape", "size"), ("shape", "shape"), "shape"])
def test_scene_questions_refuse_unknown_missing_or_repeated_kinds(kinds):
    with pytest.raises(ValueError, match=r"kinds must be .*'shape', 'colour', 'count', 'where'"):
        SceneQuestions("train", 10, kinds=kinds)


# ------------------------------------------------------------------------------ WordPiece
GOOD_VOCAB = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb\n##a\n##b\n"


def vocab_folder(tmp_path, vocab: str | bytes, name: str = "vocab.txt"):
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_bytes(vocab if isinstance(vocab, bytes) else vocab.encode())
    return folder, path


def test_wordpiece_missing_folder_or_files_name_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer folder not found: .*nowhere"):
        load_wordpiece(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no tokenizer.json or vocab.txt"):
        load_wordpiece(tmp_path / "empty")


@pytest.mark.parametrize(
    ("vocab", "message"),
    [
        (b"[PAD]\n[UNK]\n\xff\xfe\n", r"vocab.txt, line 3: not UTF-8"),
        ("", r"vocab.txt: the vocabulary file is empty"),
        ("[PAD]\n\n[UNK]\n", r"vocab.txt, line 2: an empty token"),
        (GOOD_VOCAB + "a\n", r"vocab.txt, line 10: the token 'a' is already on line 6"),
        ("[PAD]\n[CLS]\n[SEP]\na\n", r"vocab.txt: the vocabulary lacks .*'\[UNK\]', '\[MASK\]'"),
    ],
)
def test_wordpiece_garbled_vocab_txt_is_named(tmp_path, vocab, message):
    folder, _ = vocab_folder(tmp_path, vocab)
    with pytest.raises(ValueError, match=message):
        load_wordpiece(folder)


def test_wordpiece_garbled_tokenizer_json_is_named(tmp_path):
    folder, _ = vocab_folder(tmp_path, '{"version": "1.0", "model": ', "tokenizer.json")
    with pytest.raises(ValueError, match=r"tokenizer.json: not a valid tokenizer.json"):
        load_wordpiece(folder)


def test_wordpiece_refuses_a_tokenizer_json_that_is_not_wordpiece(tmp_path):
    from tokenizers import Tokenizer, models

    folder = tmp_path / "model"
    folder.mkdir()
    Tokenizer(models.BPE({"a": 0, "[UNK]": 1}, [], unk_token="[UNK]")).save(
        str(folder / "tokenizer.json")
    )
    with pytest.raises(ValueError, match=r"tokenizer.json: a BPE tokenizer, expected WordPiece"):
        load_wordpiece(folder)


@pytest.mark.parametrize(
    ("config", "message"), [("{oops", "not valid JSON"), ("[1, 2]", "expected a JSON object")]
)
def test_wordpiece_garbled_tokenizer_config_is_named(tmp_path, config, message):
    folder, _ = vocab_folder(tmp_path, GOOD_VOCAB)
    vocab_folder(tmp_path, config, "tokenizer_config.json")
    with pytest.raises(ValueError, match=rf"tokenizer_config.json: {message}"):
        load_wordpiece(folder)


def test_wordpiece_save_refuses_a_file_where_the_folder_goes(tmp_path):
    (tmp_path / "model").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="model: not a folder"):
        train_wordpiece(["a red star"], vocab_size=40).save(tmp_path / "model")
