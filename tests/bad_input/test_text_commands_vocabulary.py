"""Promises of `mmcl embed --texts`, `mmcl zeroshot` and `mmcl retrieval` for a BLIP or ALBEF,
which read WordPiece ids: without the model's own vocabulary, or with another one, they stop
with one line naming the folder or file and `--tokenizer FOLDER`, and write nothing."""

from __future__ import annotations

from mmcl.cli import main as cli_main
from tiny_captioners import albef_folder, blip_folder, image_folder


def run(capsys, *argv) -> str:
    """The command's one-line error (it must fail with status 2)."""
    code = cli_main([*map(str, argv), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    return err[-1]


def texts_file(tmp_path):
    (tmp_path / "texts.txt").write_text("a red star\n")
    return tmp_path / "texts.txt"


def test_embed_texts_with_an_albef_file_without_vocabulary_names_its_folder(tmp_path, capsys):
    albef_folder(tmp_path / "albef", vocab=False)
    error = run(capsys, "embed", "--pretrained", tmp_path / "albef" / "model.safetensors",
                "--texts", texts_file(tmp_path), "--output", tmp_path / "t.npy")  # fmt: skip
    assert error.startswith("mmcl embed: error: the ALBEF model needs its WordPiece vocabulary")
    assert f"{tmp_path / 'albef'} holds neither" in error and "--tokenizer FOLDER" in error
    assert not (tmp_path / "t.npy").exists()


def test_zeroshot_with_a_blip_folder_without_vocabulary_asks_for_tokenizer(tmp_path, capsys):
    blip_folder(tmp_path / "blip", "BlipForImageTextRetrieval", vocab=False)
    image_folder(tmp_path / "data" / "star", 1)
    error = run(capsys, "zeroshot", "--pretrained", tmp_path / "blip", "--data",
                tmp_path / "data", "--report", tmp_path / "r.json")  # fmt: skip
    assert error.startswith("mmcl zeroshot: error: the BLIP model needs its WordPiece vocabulary")
    assert f"{tmp_path / 'blip'} holds neither" in error and "--tokenizer FOLDER" in error
    assert not (tmp_path / "r.json").exists()


def test_albef_without_pretrained_weights_or_tokenizer_asks_for_tokenizer(tmp_path, capsys):
    error = run(capsys, "embed", "--model", "tiny-albef", "--texts", texts_file(tmp_path),
                "--output", tmp_path / "t.npy")  # fmt: skip
    assert "no folder was given: give --tokenizer FOLDER" in error


def test_embed_texts_with_another_vocabulary_names_the_file_and_the_ids(tmp_path, capsys):
    albef_folder(tmp_path / "albef")
    other = tmp_path / "other"
    other.mkdir()  # [PAD] and [UNK] swapped, and more ids than the model's embedding has
    tokens = ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(400))]
    (other / "vocab.txt").write_text("".join(f"{token}\n" for token in tokens))
    error = run(capsys, "embed", "--pretrained", tmp_path / "albef" / "model.safetensors",
                "--tokenizer", other, "--texts", texts_file(tmp_path),
                "--output", tmp_path / "t.npy")  # fmt: skip
    assert error.startswith(f"mmcl embed: error: {other / 'vocab.txt'}: not this model's vocab")
    assert "[PAD] is 1, the model's 0" in error and "405 ids, the model has" in error
    assert "--tokenizer FOLDER" in error


def test_retrieval_with_a_blip_without_vocabulary_asks_for_tokenizer(tmp_path, capsys):
    blip_folder(tmp_path / "blip", "BlipForImageTextRetrieval", vocab=False)
    image_folder(tmp_path / "images", 1)
    (tmp_path / "c.csv").write_text("image,caption\n0.png,a red star\n")
    error = run(capsys, "retrieval", "--pretrained", tmp_path / "blip", "--images",
                tmp_path / "images", "--captions", tmp_path / "c.csv")  # fmt: skip
    assert "the BLIP model needs its WordPiece vocabulary" in error and "--tokenizer" in error


def test_tokenizer_for_a_clip_model_is_refused_rather_than_ignored(tmp_path, capsys):
    blip_folder(tmp_path / "blip", "BlipForImageTextRetrieval")
    error = run(capsys, "embed", "--model", "tiny-vit", "--tokenizer", tmp_path / "blip",
                "--texts", texts_file(tmp_path), "--output", tmp_path / "t.npy")  # fmt: skip
    assert error == (
        "mmcl embed: error: --tokenizer is for models that read WordPiece ids (BLIP, ALBEF); "
        "tiny-vit (CLIP) reads CLIP's built-in tokenizer: drop --tokenizer"
    )
