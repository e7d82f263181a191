"""`mmcl retrieval --rerank K` against a by-hand ranking of Hugging Face's ITC and ITM scores
on the same tiny random BLIP, and `recall_from_scores` against the feature path."""

from __future__ import annotations

import json

import torch
from PIL import Image

from mmcl.cli import main as cli_main
from mmcl.eval.retrieval import recall_from_scores, retrieval_recall
from mmcl.io.transforms import get_preprocess
from mmcl.io.wordpiece import load_wordpiece
from tiny_captioners import ENC, albef_folder, blip_folder, image_folder

CAPTIONS = [
    "a red star",
    "a big red star on the left",
    "two blue circles",
    "a green square",
    "a small dog",
    "the cat near the sky",
]
OWNER = [0, 0, 1, 2, 3, 3]


def test_recall_from_scores_equals_the_feature_path_on_dot_products():
    torch.manual_seed(0)
    images, texts = torch.randn(4, 8), torch.randn(6, 8)
    assert recall_from_scores(images @ texts.T, texts @ images.T, OWNER, ks=(1, 2, 5)) == (
        retrieval_recall(images, texts, OWNER, ks=(1, 2, 5))
    )


def descending(score):
    """A sort key: scores are numbers, or (group, score) pairs ranked group first."""
    return tuple(-x for x in score) if isinstance(score, tuple) else (-score,)


def by_hand_recall(scores_i2t, scores_t2i, k_values):
    """Recall by sorting each row (ties to the lower index), image hit when any own caption."""
    out = {}
    for k in k_values:
        hits = 0
        for i, row in enumerate(scores_i2t):
            top = sorted(range(len(row)), key=lambda t: (descending(row[t]), t))[:k]
            hits += any(OWNER[t] == i for t in top)
        out[f"image_to_text_R@{k}"] = hits / len(scores_i2t)
    for k in k_values:
        hits = 0
        for t, row in enumerate(scores_t2i):
            hits += OWNER[t] in sorted(range(len(row)), key=lambda i: (descending(row[i]), i))[:k]
        out[f"text_to_image_R@{k}"] = hits / len(scores_t2i)
    return out


def reranked(itc, itm, k):
    """Each row's top k by ITC get ITM logit + ITC; the rest keep ITC's order below them."""
    rows = []
    for row_itc, row_itm in zip(itc, itm, strict=True):
        top = set(sorted(range(len(row_itc)), key=lambda c: (-row_itc[c], c))[:k])
        rows.append([(1, row_itm[c] + row_itc[c]) if c in top else (0, row_itc[c]) for c in
                     range(len(row_itc))])  # fmt: skip
    return rows


def test_rerank_reports_itc_and_itm_recalls_equal_to_a_ranking_of_huggingface_scores(
    tmp_path, capsys
):
    hf = blip_folder(tmp_path / "blip", "BlipForImageTextRetrieval", seed=2)
    paths = image_folder(tmp_path / "images", 4)
    table = tmp_path / "captions.csv"
    table.write_text(
        "image,caption\n" + "".join(f"{i}.png,{c}\n" for i, c in zip(OWNER, CAPTIONS, strict=True))
    )
    assert cli_main(["retrieval", "--pretrained", str(tmp_path / "blip"), "--captions",
                     str(table), "--images", str(tmp_path / "images"), "--rerank", "2", "--report", str(tmp_path / "r.json"),
                     "--quiet"]) == 0  # fmt: skip
    report = json.loads((tmp_path / "r.json").read_text())
    out = capsys.readouterr().out
    assert "ITC %" in out and "ITM top 2 %" in out

    preprocess = get_preprocess(32)
    pixels = torch.stack([preprocess(Image.open(p)) for p in paths])
    batch = load_wordpiece(tmp_path / "blip")(CAPTIONS)
    enc = batch.input_ids.clone()
    enc[:, 0] = ENC
    with torch.no_grad():
        itc = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                 pixel_values=pixels, use_itm_head=False).itm_score  # fmt: skip
        pairs = [(i, t) for i in range(4) for t in range(6)]
        logits = hf(
            input_ids=enc[[t for _, t in pairs]],
            attention_mask=batch.attention_mask[[t for _, t in pairs]],
            pixel_values=pixels[[i for i, _ in pairs]],
        ).itm_score[:, 1]
    itc, itm = itc.tolist(), logits.view(4, 6).tolist()  # (images, texts)
    itc_t, itm_t = torch.tensor(itc).T.tolist(), torch.tensor(itm).T.tolist()
    assert report["recall"] == by_hand_recall(itc, itc_t, (1, 5, 10))
    i2t, t2i = reranked(itc, itm, 2), reranked(itc_t, itm_t, 2)
    expected = by_hand_recall(i2t, t2i, (1, 5, 10))
    assert report["recall_reranked"] == expected
    assert report["recall_reranked"] != report["recall"]  # the ITM head changed the ranking
    assert report["rerank"] == 2


def test_rerank_with_an_albef_folder_ranks_by_its_own_itc_and_itm_scores(tmp_path):
    model, tokenizer = albef_folder(tmp_path / "albef", seed=3)
    paths = image_folder(tmp_path / "images", 4, size=32)
    table = tmp_path / "captions.csv"
    table.write_text(
        "image,caption\n" + "".join(f"{i}.png,{c}\n" for i, c in zip(OWNER, CAPTIONS, strict=True))
    )
    assert cli_main(["retrieval", "--pretrained", str(tmp_path / "albef" / "model.safetensors"),
                     "--captions", str(table), "--images", str(tmp_path / "images"), "--rerank",
                     "2", "--report", str(tmp_path / "r.json"), "--quiet"]) == 0  # fmt: skip
    report = json.loads((tmp_path / "r.json").read_text())

    preprocess = get_preprocess(model)
    pixels = torch.stack([preprocess(Image.open(p)) for p in paths])
    ids = tokenizer(CAPTIONS, context_length=model.context_length).input_ids  # [CLS] ... [SEP]
    with torch.no_grad():  # every pair through ALBEF's fusion encoder, one at a time
        itc = model.encode_image(pixels, normalize=True) @ model.encode_text(ids, normalize=True).T
        tokens = model.encode_image_tokens(pixels)
        itm = [[model.itm_logits(tokens[i : i + 1], ids[t : t + 1])[0, 1].item()
                for t in range(6)] for i in range(4)]  # fmt: skip
    itc = itc.tolist()
    itc_t, itm_t = torch.tensor(itc).T.tolist(), torch.tensor(itm).T.tolist()
    assert report["recall"] == by_hand_recall(itc, itc_t, (1, 5, 10))
    expected = by_hand_recall(reranked(itc, itm, 2), reranked(itc_t, itm_t, 2), (1, 5, 10))
    assert report["recall_reranked"] == expected
    assert report["recall_reranked"] != report["recall"]  # ALBEF's ITM head changed it
