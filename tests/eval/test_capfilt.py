"""CapFilt: the keep / replace / drop rule by hand, the command with the filter forced to known
verdicts, and random tiny models end to end against Hugging Face's ITM probabilities."""

from __future__ import annotations

import csv
import json

import torch
from PIL import Image

from mmcl.cli import main as cli_main
from mmcl.eval.capfilt import CapFiltCounts, decide
from mmcl.eval.captioner import Captioner
from mmcl.io.transforms import get_preprocess
from mmcl.io.wordpiece import load_wordpiece
from mmcl.models.blip import Blip
from mmcl.nn.generation import Generated
from tiny_captioners import (
    DEC,
    ENC,
    SEP,
    VOCAB,
    albef_folder,
    blip_folder,
    capfilt_argv,
    image_folder,
    stopped_capfilt,
)

GOOD, BAD, STAR = VOCAB.index("good"), VOCAB.index("bad"), VOCAB.index("star")


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_each_web_caption_is_kept_replaced_or_dropped_and_matching_synthetic_ones_added():
    # Images 0..3; web captions 0, 1 of image 0, 2 of image 1, 3, 4 of image 2, 5 of image 3.
    owner = [0, 0, 1, 2, 2, 3]
    web = [True, False, False, False, False, True]
    synthetic = [True, False, True, False]
    rows, counts = decide(owner, web, synthetic)
    assert rows == [("web", 0), ("synthetic", 0), ("synthetic", 2), ("web", 5)]
    assert counts == CapFiltCounts(
        kept=2, replaced=3, dropped=1, synthetic_kept=2, synthetic_dropped=2
    )


def write_table(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("image", "caption"), *rows])


def test_capfilt_counts_and_table_with_the_filter_forced_to_known_verdicts(
    tmp_path, monkeypatch, capsys
):
    """The filter matches exactly the captions that contain "good"; the captioner writes
    "good star" for white images and "bad star" for black ones."""
    blip_folder(tmp_path / "captioner")
    blip_folder(tmp_path / "filter", "BlipForImageTextRetrieval")
    (tmp_path / "images").mkdir()
    for i, colour in enumerate(["white", "black", "white", "black"]):
        Image.new("RGB", (40, 40), colour).save(tmp_path / "images" / f"{i}.png")
    write_table(
        tmp_path / "web.csv",
        [("0.png", "a good star"), ("0.png", "a bad star"), ("1.png", "a bad dog"),
         ("2.png", "bad sky"), ("2.png", "bad cat"), ("3.png", "good square")],
    )  # fmt: skip

    def generate(self, images, prompt=None, **options):
        word = torch.where(images.mean((1, 2, 3)) > 0, GOOD, BAD)
        columns = [torch.full_like(word, DEC), word, torch.full_like(word, STAR)]
        tokens = torch.stack([*columns, torch.full_like(word, SEP)], dim=1)
        return Generated(tokens, torch.zeros(len(images)), torch.full_like(word, 3))

    def itm_logits(self, image_tokens, tokens):
        good = (tokens == GOOD).any(1).float()
        return torch.stack([10 * (1 - good), 10 * good], dim=1)

    monkeypatch.setattr(Blip, "generate", generate)
    monkeypatch.setattr(Blip, "itm_logits", itm_logits)
    assert cli_main(["capfilt", "--captions", str(tmp_path / "web.csv"), "--images", str(tmp_path / "images"), "--captioner",
                     str(tmp_path / "captioner"), "--filter", str(tmp_path / "filter"), "--output",
                     str(tmp_path / "clean.csv"), "--report", str(tmp_path / "counts.json"),
                     "--batch-size", "3", "--max-length", "5", "--quiet"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert (
        "web captions: 2 kept, 3 replaced by their image's synthetic caption, 1 dropped; "
        "synthetic captions: 2 kept, 2 dropped" in out
    )
    assert [tuple(row.values()) for row in read_csv(tmp_path / "clean.csv")] == [
        ("0.png", "a good star", "web", "1.0"),
        ("0.png", "good star", "synthetic", "1.0"),
        ("2.png", "good star", "synthetic", "1.0"),
        ("3.png", "good square", "web", "1.0"),
    ]
    report = json.loads((tmp_path / "counts.json").read_text())
    assert (report["kept"], report["replaced"], report["dropped"], report["written"]) == (
        2,
        3,
        1,
        4,
    )


def test_random_tiny_models_end_to_end_keep_exactly_what_huggingface_itm_matches(tmp_path, capsys):
    blip_folder(tmp_path / "captioner", seed=1)
    hf_filter = blip_folder(tmp_path / "filter", "BlipForImageTextRetrieval", seed=2)
    paths = image_folder(tmp_path / "images", 4)
    owner = [0, 0, 1, 2, 2, 3]
    captions = ["a red star", "a big dog", "two blue circles", "the sky", "a cat", "green square"]
    write_table(
        tmp_path / "web.csv", [(f"{i}.png", c) for i, c in zip(owner, captions, strict=True)]
    )
    tokenizer = load_wordpiece(tmp_path / "filter")
    preprocess = get_preprocess(32)
    pixels = torch.stack([preprocess(Image.open(p)) for p in paths])

    def hf_match(images, texts):
        batch = tokenizer(texts)
        ids = batch.input_ids.clone()
        ids[:, 0] = ENC  # BLIP's ITM input starts with [ENC]
        with torch.no_grad():
            logits = hf_filter(input_ids=ids, attention_mask=batch.attention_mask,
                               pixel_values=images).itm_score  # fmt: skip
        return logits.softmax(-1)[:, 1].tolist()

    web = hf_match(pixels[owner], captions)
    threshold = sum(sorted(web)[2:4]) / 2  # half the web captions pass
    assert cli_main(["capfilt", "--captions", str(tmp_path / "web.csv"), "--images", str(tmp_path / "images"), "--captioner",
                     str(tmp_path / "captioner"), "--filter", str(tmp_path / "filter"), "--output",
                     str(tmp_path / "clean.csv"), "--report", str(tmp_path / "counts.json"),
                     "--threshold", str(threshold), "--max-length", "6", "--quiet"]) == 0  # fmt: skip
    rows = read_csv(tmp_path / "clean.csv")
    report = json.loads((tmp_path / "counts.json").read_text())
    passing = [t for t in range(6) if web[t] >= threshold]
    assert [(r["image"], r["caption"]) for r in rows if r["source"] == "web"] == [
        (f"{owner[t]}.png", captions[t]) for t in passing
    ]
    for row in rows:
        if row["source"] == "web":
            expected = web[captions.index(row["caption"])]
        else:  # the synthetic caption, scored by HF's ITM with its image
            expected = hf_match(pixels[[int(row["image"][0])]], [row["caption"]])[0]
        assert abs(float(row["match"]) - expected) < 1e-4 and expected >= threshold
    synthetic_images = {int(r["image"][0]) for r in rows if r["source"] == "synthetic"}
    failing = [t for t in range(6) if t not in passing]
    assert report["kept"] == len(passing) == 3
    assert report["replaced"] == sum(owner[t] in synthetic_images for t in failing)
    assert report["dropped"] == len(failing) - report["replaced"]
    assert report["synthetic_kept"] == len(synthetic_images)
    assert report["written"] == len(rows)


def test_an_albef_filter_keeps_exactly_the_captions_its_own_itm_head_matches(tmp_path):
    blip_folder(tmp_path / "captioner", seed=1)
    albef, tokenizer = albef_folder(tmp_path / "filter", seed=2)
    paths = image_folder(tmp_path / "images", 3, size=32)
    owner = [0, 0, 1, 2]
    captions = ["a red star", "a big dog", "two blue circles", "the sky"]
    write_table(
        tmp_path / "web.csv", [(f"{i}.png", c) for i, c in zip(owner, captions, strict=True)]
    )
    preprocess = get_preprocess(albef)
    pixels = torch.stack([preprocess(Image.open(p)) for p in paths])

    def albef_match(images, texts):  # [CLS] ... [SEP]: ALBEF keeps its start token
        ids = tokenizer(texts, context_length=albef.context_length).input_ids
        with torch.no_grad():
            logits = albef.itm_logits(albef.encode_image_tokens(images), ids)
        return logits.softmax(-1)[:, 1].tolist()

    web = albef_match(pixels[owner], captions)
    threshold = sum(sorted(web)[1:3]) / 2  # half the web captions pass
    assert cli_main(["capfilt", "--captions", str(tmp_path / "web.csv"), "--images", str(tmp_path / "images"),
                     "--captioner",
                     str(tmp_path / "captioner"), "--filter",
                     str(tmp_path / "filter" / "model.safetensors"), "--output",
                     str(tmp_path / "clean.csv"), "--threshold", str(threshold),
                     "--max-length", "6", "--quiet"]) == 0  # fmt: skip
    rows = read_csv(tmp_path / "clean.csv")
    passing = [t for t in range(4) if web[t] >= threshold]
    assert [(r["image"], r["caption"]) for r in rows if r["source"] == "web"] == [
        (f"{owner[t]}.png", captions[t]) for t in passing
    ]
    for row in rows:
        image = int(row["image"][0])
        expected = albef_match(pixels[[image]], [row["caption"]])[0]
        assert abs(float(row["match"]) - expected) < 1e-4 and expected >= threshold


def test_a_stopped_capfilt_resumes_and_writes_what_an_uninterrupted_run_writes(
    tmp_path, monkeypatch, capsys
):
    stopped_capfilt(tmp_path, monkeypatch, tmp_path / "resumed.csv")
    parts = tmp_path / "resumed.csv.parts"
    assert sorted(p.name for p in parts.iterdir()) == ["manifest.json", "part-000000.jsonl"]
    captioned = []
    caption = Captioner.caption
    monkeypatch.setattr(
        Captioner, "caption", lambda self, pixels, *a: captioned.append(len(pixels)) or
        caption(self, pixels, *a)
    )  # fmt: skip
    assert cli_main(capfilt_argv(tmp_path, tmp_path / "resumed.csv")) == 0
    assert sum(captioned) == 3  # images 2, 3 and 4: part 0's two were not captioned again
    assert "reused 1 finished part(s)" in capsys.readouterr().out
    assert not parts.exists()
    assert cli_main(capfilt_argv(tmp_path, tmp_path / "whole.csv")) == 0
    # Nucleus sampling (capfilt's default) draws from a seed per part: the same captions.
    assert (tmp_path / "resumed.csv").read_text() == (tmp_path / "whole.csv").read_text()
    assert any(row["source"] == "synthetic" for row in read_csv(tmp_path / "whole.csv"))


def test_kept_parts_let_a_rerun_change_only_the_threshold_without_captioning_again(
    tmp_path, monkeypatch
):
    stopped_capfilt(tmp_path, monkeypatch, tmp_path / "clean.csv")
    output = tmp_path / "clean.csv"
    assert cli_main(capfilt_argv(tmp_path, output, "--keep-parts", "--threshold", "1")) == 0
    assert read_csv(output) == []  # no match probability reaches 1
    captioned = []
    monkeypatch.setattr(Captioner, "caption", lambda *a: captioned.append(a))
    assert cli_main(capfilt_argv(tmp_path, output, "--keep-parts", "--threshold", "0")) == 0
    rows = read_csv(output)
    assert captioned == []  # every part was reused
    assert len(rows) == 7 + 5  # every web caption and every image's synthetic one
