"""Promises of `mmcl caption`, `mmcl capfilt` and `mmcl retrieval --rerank` about input that
does not fit: one line naming the argument or file and the way out, before any long work."""

from __future__ import annotations

import pytest

from mmcl.cli import main as cli_main
from tiny_captioners import blip_folder, capfilt_argv, image_folder, stopped_capfilt


def run(capsys, *argv) -> str:
    """The command's one-line error (it must fail with status 2)."""
    code = cli_main([*map(str, argv), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    return err[-1]


def test_caption_with_a_clip_model_says_it_has_no_caption_decoder(tmp_path, capsys):
    image_folder(tmp_path / "images", 1)
    error = run(capsys, "caption", "--model", "tiny-vit", "--images", tmp_path / "images",
                "--output", tmp_path / "c.csv")  # fmt: skip
    assert error.startswith("mmcl caption: error: tiny-vit has no caption decoder (CLIP)")
    assert not (tmp_path / "c.csv.parts").exists()


def test_caption_with_a_blip_retrieval_checkpoint_names_its_parts(tmp_path, capsys):
    blip_folder(tmp_path / "blip", "BlipForImageTextRetrieval")
    image_folder(tmp_path / "images", 1)
    error = run(capsys, "caption", "--pretrained", tmp_path / "blip", "--images",
                tmp_path / "images", "--output", tmp_path / "c.csv")  # fmt: skip
    assert "has no caption decoder (a BLIP of parts text_encoder, itc, itm)" in error


def test_caption_with_a_blip_folder_without_vocabulary_asks_for_tokenizer(tmp_path, capsys):
    blip_folder(tmp_path / "blip", vocab=False)
    image_folder(tmp_path / "images", 1)
    error = run(capsys, "caption", "--pretrained", tmp_path / "blip", "--images",
                tmp_path / "images", "--output", tmp_path / "c.csv")  # fmt: skip
    assert "needs its WordPiece vocabulary" in error and "--tokenizer FOLDER" in error


def test_caption_with_another_models_vocabulary_names_the_file_and_the_ids(tmp_path, capsys):
    blip_folder(tmp_path / "blip", vocab=False)
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nred\n")
    image_folder(tmp_path / "images", 1)
    error = run(capsys, "caption", "--pretrained", tmp_path / "blip", "--tokenizer",
                tmp_path / "vocab", "--images", tmp_path / "images", "--output",
                tmp_path / "c.csv")  # fmt: skip
    assert f"{tmp_path / 'vocab' / 'vocab.txt'}: not this model's vocabulary" in error
    assert "[DEC] is 6, the model's 38" in error


def test_caption_output_must_be_csv_or_jsonl_before_the_model_loads(tmp_path, capsys):
    image_folder(tmp_path / "images", 1)
    error = run(capsys, "caption", "--model", "no-such-model", "--images", tmp_path / "images",
                "--output", tmp_path / "c.txt")  # fmt: skip
    assert (
        error
        == f"mmcl caption: error: --output must end in .csv or .jsonl, got {tmp_path / 'c.txt'}"
    )


def test_caption_decoding_options_that_do_not_combine_are_refused(tmp_path, capsys):
    blip_folder(tmp_path / "blip")
    image_folder(tmp_path / "images", 1)
    base = ["caption", "--pretrained", tmp_path / "blip", "--images", tmp_path / "images",
            "--output", tmp_path / "c.csv"]  # fmt: skip
    assert "--top-p samples and --beams searches: choose one" in run(
        capsys, *base, "--beams", 2, "--top-p", 0.9
    )
    error = run(capsys, *base, "--max-length", 30, "--prompt", "a picture of")
    assert "--max-length 30 and the prompt's 4 token(s) exceed" in error
    assert "24 text positions; lower --max-length" in error


def test_caption_prompt_is_refused_for_coca(tmp_path, capsys):
    image_folder(tmp_path / "images", 1)
    error = run(capsys, "caption", "--model", "tiny-coca", "--images", tmp_path / "images",
                "--output", tmp_path / "c.csv", "--prompt", "a photo of")  # fmt: skip
    assert error.endswith("--prompt is for BLIP; tiny-coca (CoCa) starts from its start token")


def test_caption_resume_with_other_decoding_settings_is_refused(tmp_path, capsys):
    blip_folder(tmp_path / "blip")
    image_folder(tmp_path / "images", 2)
    base = ["caption", "--pretrained", tmp_path / "blip", "--images", tmp_path / "images",
            "--output", tmp_path / "c.csv", "--max-length", 3, "--keep-parts"]  # fmt: skip
    assert cli_main([*map(str, base), "--quiet"]) == 0
    (tmp_path / "c.csv").unlink()
    error = run(capsys, *base, "--beams", 2)
    assert "c.csv.parts holds parts of another caption job (decoding differs" in error
    assert "delete the folder to start again" in error
    assert not (tmp_path / "c.csv").exists()


def test_capfilt_resume_with_other_decoding_settings_is_refused(tmp_path, monkeypatch, capsys):
    stopped_capfilt(tmp_path, monkeypatch, tmp_path / "clean.csv")
    capsys.readouterr()
    assert cli_main(capfilt_argv(tmp_path, tmp_path / "clean.csv", "--max-length", "5")) == 2
    error = capsys.readouterr().err
    assert "clean.csv.parts holds parts of another capfilt job (decoding differs" in error
    assert "delete the folder to start again" in error
    assert (tmp_path / "clean.csv.parts" / "part-000000.jsonl").exists()
    assert not (tmp_path / "clean.csv").exists()


def captions_table(tmp_path):
    image_folder(tmp_path / "images", 2)
    table = tmp_path / "captions.csv"
    table.write_text("image,caption\n0.png,a red star\n1.png,a blue circle\n")
    return ["--captions", table, "--images", tmp_path / "images"]


def test_retrieval_rerank_with_a_model_without_itm_head_names_the_model(tmp_path, capsys):
    error = run(capsys, "retrieval", "--model", "tiny-vit", *captions_table(tmp_path),
                "--rerank", 5)  # fmt: skip
    assert error.startswith(
        "mmcl retrieval: error: --rerank needs an image-text matching (ITM) head; tiny-vit "
        "(CLIP) has none"
    )


def test_retrieval_rerank_must_be_positive(tmp_path, capsys):
    error = run(capsys, "retrieval", "--model", "tiny-vit", *captions_table(tmp_path),
                "--rerank", 0)  # fmt: skip
    assert error == "mmcl retrieval: error: --rerank must be a positive number of candidates, got 0"


def test_capfilt_filter_without_itm_head_is_refused_naming_it(tmp_path, capsys):
    blip_folder(tmp_path / "captioner")
    error = run(capsys, "capfilt", *captions_table(tmp_path), "--captioner",
                tmp_path / "captioner", "--filter", tmp_path / "captioner", "--output",
                tmp_path / "clean.csv")  # fmt: skip
    assert (
        f"--filter {tmp_path / 'captioner'} (Blip) has no image-text matching (ITM) head" in error
    )


def test_capfilt_threshold_is_a_probability(tmp_path, capsys):
    error = run(capsys, "capfilt", *captions_table(tmp_path), "--captioner", "x", "--filter",
                "y", "--output", tmp_path / "clean.csv", "--threshold", 1.5)  # fmt: skip
    assert error == "mmcl capfilt: error: --threshold is a probability in [0, 1], got 1.5"


def test_capfilt_needs_both_models(tmp_path, capsys):
    blip_folder(tmp_path / "filter", "BlipForImageTextRetrieval")
    error = run(capsys, "capfilt", *captions_table(tmp_path), "--filter", tmp_path / "filter",
                "--output", tmp_path / "clean.csv")  # fmt: skip
    assert error == "mmcl capfilt: error: give --captioner PATH (or --captioner-model NAME)"
    assert not (tmp_path / "clean.csv").exists()


def test_caption_unreadable_image_stops_naming_it_or_is_skipped_and_listed(tmp_path, capsys):
    blip_folder(tmp_path / "blip")
    image_folder(tmp_path / "images", 2)
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    base = ["caption", "--pretrained", tmp_path / "blip", "--images", tmp_path / "images",
            "--output", tmp_path / "c.csv", "--max-length", 3]  # fmt: skip
    error = run(capsys, *base)
    assert f"{tmp_path / 'images' / 'broken.png'}" in error and not (tmp_path / "c.csv").exists()
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        assert cli_main([*map(str, base), "--skip-bad", "--quiet"]) == 0
    assert f"skipped 1 unreadable image(s): {tmp_path / 'images' / 'broken.png'}" in (
        capsys.readouterr().err
    )
    rows = (tmp_path / "c.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["image", "0.png", "1.png"]
