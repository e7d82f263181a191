"""A served index of an ALBEF (a WordPiece model) reads text queries with the vocabulary beside
the checkpoint the index records, as `mmcl embed --texts` does, not with CLIP's tokenizer."""

from __future__ import annotations

import numpy as np
import torch

from mmcl.eval.embed_folder import embed_image_folder
from mmcl.eval.index import build_index
from mmcl.io.wordpiece import load_wordpiece
from mmcl.serve.searcher import Searcher
from tiny_captioners import albef_folder, image_folder


def test_text_queries_of_an_albef_index_use_the_checkpoints_vocabulary(tmp_path):
    model, _ = albef_folder(tmp_path / "albef")
    checkpoint = tmp_path / "albef" / "model.safetensors"
    images = image_folder(tmp_path / "photos", count=5)
    source = {"model": None, "pretrained": str(checkpoint)}
    embed_image_folder(model, images, tmp_path / "photos.npy", source=source, progress=False)
    build_index(tmp_path / "photos.npy", tmp_path / "photos.index")

    searcher = Searcher(tmp_path / "photos.index", model, root=tmp_path)
    hits = searcher.search_text("a red star", k=5)

    features = np.load(tmp_path / "photos.npy")
    ids = load_wordpiece(tmp_path / "albef")(["a red star"]).input_ids
    with torch.no_grad():
        query = model.eval().encode_text(ids, normalize=True).numpy()[0]
    scores = features @ query
    np.testing.assert_allclose([hit.score for hit in hits], np.sort(scores)[::-1], atol=1e-5)
