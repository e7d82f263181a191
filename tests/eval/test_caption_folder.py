"""`mmcl caption`: captions equal Hugging Face's generate, resumable parts, CSV and JSONL."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

from mmcl.cli import main as cli_main
from mmcl.data.captions import read_caption_table
from mmcl.eval.captioner import Captioner
from mmcl.io.tokenizer import get_tokenizer
from mmcl.io.transforms import get_preprocess
from mmcl.io.wordpiece import load_wordpiece
from tiny_captioners import blip_folder, coca_file, image_folder


def caption(*argv) -> int:
    return cli_main(["caption", "--quiet", *map(str, argv)])


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return [tuple(row) for row in csv.reader(handle)]


def test_greedy_captions_equal_huggingface_generate_decoded(tmp_path):
    hf = blip_folder(tmp_path / "blip")
    paths = image_folder(tmp_path / "images", 5)
    out = tmp_path / "captions.csv"
    assert caption("--pretrained", tmp_path / "blip", "--images", tmp_path / "images",
                   "--output", out, "--max-length", 8, "--batch-size", 2) == 0  # fmt: skip
    preprocess = get_preprocess(32)
    pixels = torch.stack([preprocess(Image.open(p)) for p in paths])
    with torch.no_grad():
        tokens = hf.generate(pixel_values=pixels, do_sample=False, num_beams=1, max_new_tokens=8)
    tokenizer = load_wordpiece(tmp_path / "blip")
    expected = [(p.name, tokenizer.decode(row[1:])) for p, row in zip(paths, tokens, strict=True)]
    assert read_csv(out) == [("image", "caption"), *expected]
    assert any(text for _, text in expected)  # the random model writes words, not only [SEP]
    # The table is one `mmcl retrieval` reads: paths relative to the images folder.
    found, captions = read_caption_table(out, image_root=tmp_path / "images")
    assert found == paths and captions == [text for _, text in expected]


def test_interrupted_sampled_job_resumes_with_the_captions_of_an_uninterrupted_one(
    tmp_path, monkeypatch
):
    blip_folder(tmp_path / "blip", seed=1)
    image_folder(tmp_path / "images", 5)
    args = ["--pretrained", tmp_path / "blip", "--images", tmp_path / "images", "--top-p", "1.0",
            "--seed", 7, "--max-length", 6, "--batch-size", 1, "--part-size", 2]  # fmt: skip
    assert caption(*args, "--output", tmp_path / "whole.csv") == 0

    original, calls = Captioner.caption, []

    def failing(self, images, generator=None):
        calls.append(len(images))
        if len(calls) == 4:  # in the second part of three (images 2 and 3)
            raise RuntimeError("interrupted")
        return original(self, images, generator)

    monkeypatch.setattr(Captioner, "caption", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        caption(*args, "--output", tmp_path / "resumed.csv")
    assert not (tmp_path / "resumed.csv").exists()
    assert sorted(p.name for p in (tmp_path / "resumed.csv.parts").glob("part-*")) == [
        "part-000000.jsonl"
    ]
    calls.clear()
    assert caption(*args, "--output", tmp_path / "resumed.csv") == 0
    assert len(calls) == 3  # images 2, 3 and 4 only: part 0 was reused
    assert read_csv(tmp_path / "resumed.csv") == read_csv(tmp_path / "whole.csv")
    assert not (tmp_path / "resumed.csv.parts").exists()


def test_jsonl_output_holds_coca_beam_captions_of_each_image(tmp_path):
    model = coca_file(tmp_path / "coca.safetensors")
    paths = image_folder(tmp_path / "images", 3)
    out = tmp_path / "captions.jsonl"
    assert caption("--pretrained", tmp_path / "coca.safetensors", "--images", tmp_path / "images",
                   "--output", out, "--beams", 2, "--max-length", 4) == 0  # fmt: skip
    preprocess = get_preprocess(32)
    pixels = torch.stack([preprocess(Image.open(p)) for p in paths])
    tokens = model.generate(pixels, max_new_tokens=4, beams=2).tokens
    expected = [{"image": p.name, "caption": get_tokenizer().decode(row[1:])}
                for p, row in zip(paths, tokens, strict=True)]  # fmt: skip
    assert [json.loads(line) for line in out.read_text().splitlines()] == expected
