"""`mmcl embed --texts` and `mmcl zeroshot` read BLIP's and ALBEF's texts with the model's own
WordPiece vocabulary (from its folder), not CLIP's BPE: the features are those of
`encode_text` on the vocabulary's ids, and the zero-shot accuracy is a by-hand one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mmcl
from mmcl.cli import main as cli_main
from mmcl.eval.embed import embed_texts
from mmcl.eval.model_text import model_text
from mmcl.eval.zero_shot import build_zero_shot_classifier
from mmcl.io.transforms import get_preprocess
from mmcl.io.wordpiece import load_wordpiece
from tiny_captioners import WORDS, albef_folder, blip_folder

TEXTS = ["a red star", "two blue circles on the left", "a dog", "the big green square"]


def saved_model(kind, tmp_path):
    """(--pretrained path, its vocabulary's folder) of a tiny BLIP or ALBEF."""
    if kind == "blip":
        blip_folder(tmp_path / "blip", "BlipForImageTextRetrieval")
        return tmp_path / "blip", tmp_path / "blip"
    albef_folder(tmp_path / "albef")
    return tmp_path / "albef" / "model.safetensors", tmp_path / "albef"


@pytest.mark.parametrize("kind", ["blip", "albef"])
def test_embed_texts_encodes_the_ids_of_the_models_own_vocabulary(kind, tmp_path):
    pretrained, vocabulary = saved_model(kind, tmp_path)
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    output = tmp_path / "texts.npy"
    argv = ["embed", "--pretrained", pretrained, "--texts", tmp_path / "texts.txt"]
    assert cli_main([*map(str, argv), "--output", str(output), "--quiet"]) == 0

    model, _ = mmcl.load(pretrained)
    ids = load_wordpiece(vocabulary)(TEXTS).input_ids
    with torch.no_grad():
        expected = model.eval().encode_text(ids, normalize=True)
    torch.testing.assert_close(torch.from_numpy(np.load(output)), expected)
    # CLIP's ids could not be these: they lie far outside the model's embedding table.
    assert int(mmcl.tokenize(TEXTS).max()) >= text_vocab_size(model)


def text_vocab_size(model) -> int:
    text = getattr(model.config, "albef_text", None) or model.config.blip_text
    return text.vocab_size


CLASSES = {"blue": 3, "green": 3, "red": 4}  # images a class
TEMPLATES = ["a {} star", "the {} circle on the left"]


def by_hand_accuracy(model, vocabulary, data):
    """Per-class and overall top-1 of prompt-ensembled classes on the vocabulary's ids."""
    tokenizer, preprocess = load_wordpiece(vocabulary), get_preprocess(model)
    with torch.no_grad():
        columns = []
        for name in CLASSES:  # sorted, as the class folders are
            ids = tokenizer([t.format(name) for t in TEMPLATES]).input_ids
            prompts = F.normalize(model.encode_text(ids), dim=-1)
            columns.append(F.normalize(prompts.mean(dim=0), dim=0))
        per_class, hits = {}, 0
        for label, name in enumerate(CLASSES):
            paths = sorted((data / name).iterdir())
            images = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
            features = F.normalize(model.encode_image(images), dim=-1)
            correct = int(((features @ torch.stack(columns).T).argmax(dim=1) == label).sum())
            per_class[name], hits = correct / len(paths), hits + correct
    return per_class, hits / sum(CLASSES.values())


@pytest.mark.parametrize("kind", ["blip", "albef"])
def test_zeroshot_builds_its_classifier_with_the_models_own_vocabulary(kind, tmp_path):
    pretrained, vocabulary = saved_model(kind, tmp_path)
    data, noise = tmp_path / "data", np.random.default_rng(0)
    for name, count in CLASSES.items():  # noise: a random tower tells solid colours apart little
        (data / name).mkdir(parents=True)
        for i in range(count):
            pixels = noise.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(data / name / f"{i}.png")
    (tmp_path / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    argv = ["zeroshot", "--pretrained", pretrained, "--data", data, "--templates",
            tmp_path / "templates.txt", "--report", tmp_path / "report.json", "--quiet"]  # fmt: skip
    if kind == "blip":  # the vocabulary in a folder of its own, named with --tokenizer
        vocabulary = tmp_path / "vocabulary"
        vocabulary.mkdir()
        (pretrained / "vocab.txt").rename(vocabulary / "vocab.txt")
        argv += ["--tokenizer", vocabulary]
    assert cli_main(list(map(str, argv))) == 0

    model, _ = mmcl.load(pretrained)
    per_class, overall = by_hand_accuracy(model.eval(), vocabulary, data)
    report = json.loads((tmp_path / "report.json").read_text())
    found = {name: row["top1"] for name, row in report["per_class"].items()}
    assert found == pytest.approx(per_class)  # the command's fractions are float32
    assert report["overall"]["top1"] == pytest.approx(overall)


def test_wordpiece_rows_fit_the_model_and_their_padding_changes_no_feature(tmp_path):
    model, tokenizer = albef_folder(tmp_path / "albef")
    text = model_text(model, tmp_path / "albef")
    long, short = " ".join(WORDS * 2), "a dog"
    tokens = text.tokens([long, short])
    # The vocabulary allows 35 ids, the model 20: rows are cut to 20 and still end in [SEP].
    assert tokenizer.context_length == 35 and model.context_length == 20
    assert tokens.shape == (2, 20) and int(tokens[0, -1]) == tokenizer.sep_token_id
    assert tokens[1].tolist()[4:] == [tokenizer.pad_token_id] * 16  # [CLS] a dog [SEP], padding
    with torch.no_grad():
        alone = model.encode_text(text.tokens([short]), normalize=True)[0]  # no padding at all
        features = embed_texts(model, [long, short], text.tokens, progress=False)
        classifier = build_zero_shot_classifier(model, text.tokens, [long, "dog"], ["a {}"])
    torch.testing.assert_close(features[1], alone)
    torch.testing.assert_close(classifier[:, 1], alone)
