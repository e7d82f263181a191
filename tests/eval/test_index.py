"""mmcl.eval.index: the FAISS index over `mmcl embed` outputs, checked against brute-force numpy
search, a full rebuild, and a real embed run of a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mmcl
from embed_outputs import clustered_unit_rows, names, unit_rows, write_embed_output
from mmcl.cli import main
from mmcl.eval import index as index_module
from mmcl.eval.embed_folder import embed_image_folder
from mmcl.eval.index import IndexSettings, ModelMismatchError, build_index, open_index
from mmcl.io.checkpoints import save_safetensors


def numpy_top_k(queries: np.ndarray, features: np.ndarray, k: int):
    scores = queries @ features.T
    order = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def recall_at_10(found_paths, queries, features, all_names) -> float:
    _, truth = numpy_top_k(queries, features, 10)
    hits = [
        len(set(paths) & {all_names[r] for r in rows})
        for paths, rows in zip(found_paths, truth, strict=True)
    ]
    return float(np.mean(hits)) / 10


def test_exact_index_returns_numpy_brute_force_top_k(tmp_path):
    features, files = unit_rows(500, 16), names(500)
    write_embed_output(tmp_path / "photos.npy", features, files)
    report = build_index(tmp_path / "photos.npy", tmp_path / "photos.index")
    assert (report.kind, report.rows, report.recall_at_10) == ("flat", 500, None)
    queries = unit_rows(20, 16, seed=1)
    scores, paths = open_index(tmp_path / "photos.index").search(queries, k=7)
    expected_scores, expected_rows = numpy_top_k(queries, features, 7)
    assert paths == [[files[r] for r in rows] for rows in expected_rows]
    np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_recall_on_clustered_vectors(tmp_path, kind):
    # 6000 unit vectors in 40 tight clusters (noise 0.05 a coordinate against centres about
    # 1.4 apart): a point's 10 nearest neighbours are in its own cluster. IVF makes 153 cells
    # (6000 / 39), about 4 a cluster, and probes 15: the cells of the query's own cluster are
    # the nearest to it, so nearly every true neighbour is seen (HNSW's graph, with 64
    # candidates, likewise). 0.9 leaves room for neighbours in a sibling cell not probed; a
    # broken index (wrong metric, rows misnumbered) scores near 10 / 150 = 0.07.
    features = clustered_unit_rows(6000, 32, clusters=40, spread=0.05)
    files = names(6000)
    write_embed_output(tmp_path / "photos.npy", features, files)
    report = build_index(tmp_path / "photos.npy", tmp_path / "ix", IndexSettings(kind=kind))
    queries = clustered_unit_rows(300, 32, clusters=40, spread=0.05, seed=7)
    _, paths = open_index(tmp_path / "ix").search(queries, k=10)
    measured = recall_at_10(paths, queries, features, files)
    print(f"{kind} recall@10 on clustered vectors: {measured:.3f} (reported {report.recall_at_10})")
    assert measured > 0.9
    assert report.kind == kind and 0.9 < report.recall_at_10 <= 1.0


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_default_search_effort_reaches_the_target_recall_on_random_vectors(tmp_path, kind):
    # Random unit vectors in 64 dimensions have no clusters, so nlist/10 cells (or 64 HNSW
    # candidates on a graph of 8 links a node) find under 95% of the true top 10 (about 0.5 and
    # 0.88 here): the default effort must grow until
    # the recall is reached. Checked on held-out queries against numpy's brute force, with
    # room for the gap between the index's sampled figure (indexed rows as queries) and these.
    features, files = unit_rows(4000, 64), names(4000)
    write_embed_output(tmp_path / "photos.npy", features, files)
    graph = {"hnsw_m": 8} if kind == "hnsw" else {}
    settings = IndexSettings(kind=kind, **graph)
    report = build_index(tmp_path / "photos.npy", tmp_path / "ix", settings)
    assert report.recall_at_10 >= 0.95
    effort, start = ("nprobe", 102 // 10) if kind == "ivf" else ("ef_search", 64)
    assert report.params[effort] > start  # 4000 // 39 = 102 cells
    queries = unit_rows(200, 64, seed=3)
    _, paths = open_index(tmp_path / "ix").search(queries, k=10)
    assert recall_at_10(paths, queries, features, files) >= 0.9
    # An effort given explicitly is kept, whatever recall it gives.
    given = {"nprobe": 2} if kind == "ivf" else {"ef_search": 16}
    fixed = IndexSettings(kind=kind, **graph, **given)
    report = build_index(tmp_path / "photos.npy", tmp_path / "ix", fixed, rebuild=True)
    assert report.params[effort] == next(iter(given.values())) and report.recall_at_10 < 0.95


def test_a_flat_index_grown_past_the_threshold_is_rebuilt_as_ivf(tmp_path):
    features, files = unit_rows(2000, 8), names(2000)
    write_embed_output(tmp_path / "old.npy", features[:1000], files[:1000])
    write_embed_output(tmp_path / "new.npy", features, files)
    settings = IndexSettings(threshold=1500)
    assert build_index(tmp_path / "old.npy", tmp_path / "ix", settings).kind == "flat"
    update = build_index(tmp_path / "new.npy", tmp_path / "ix", settings)
    assert (update.kind, update.rebuilt, update.rows) == ("ivf", True, 2000)
    assert open_index(tmp_path / "ix").faiss_index.ntotal == 2000


def test_auto_kind_switches_to_ivf_above_the_threshold(tmp_path):
    write_embed_output(tmp_path / "p.npy", unit_rows(2000, 8), names(2000))
    settings = IndexSettings(threshold=1999)
    assert build_index(tmp_path / "p.npy", tmp_path / "ix", settings).kind == "ivf"
    settings = IndexSettings(threshold=2000)
    assert build_index(tmp_path / "p.npy", tmp_path / "flat", settings).kind == "flat"


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_incremental_add_gives_the_results_of_a_full_rebuild(tmp_path, kind, monkeypatch):
    monkeypatch.setattr(index_module, "_CHUNK", 64)  # rows added and compared in chunks
    features, files = unit_rows(400, 16), names(400)
    first = np.random.default_rng(3).permutation(400)[:300]  # new files fall in between
    write_embed_output(
        tmp_path / "old.npy", features[np.sort(first)], [files[i] for i in sorted(first)]
    )
    write_embed_output(tmp_path / "new.npy", features, files)
    settings = IndexSettings(kind=kind, ef_search=400)  # HNSW exhaustive enough to compare
    build_index(tmp_path / "old.npy", tmp_path / "ix", settings)
    update = build_index(tmp_path / "new.npy", tmp_path / "ix", settings)
    assert (update.added, update.rebuilt, update.rows) == (100, False, 400)
    build_index(tmp_path / "new.npy", tmp_path / "full", settings)
    queries = unit_rows(30, 16, seed=5)
    updated_scores, updated_paths = open_index(tmp_path / "ix").search(queries, k=10)
    full_scores, full_paths = open_index(tmp_path / "full").search(queries, k=10)
    assert updated_paths == full_paths
    np.testing.assert_allclose(updated_scores, full_scores, atol=1e-6)
    assert build_index(tmp_path / "new.npy", tmp_path / "ix", settings).added == 0


def test_incremental_ivf_keeps_its_cells_and_finds_the_new_files(tmp_path):
    features = clustered_unit_rows(3000, 16, clusters=20, spread=0.05)
    files = names(3000)
    write_embed_output(tmp_path / "old.npy", features[:2500], files[:2500])
    write_embed_output(tmp_path / "new.npy", features, files)
    built = build_index(tmp_path / "old.npy", tmp_path / "ix", IndexSettings(kind="ivf"))
    update = build_index(tmp_path / "new.npy", tmp_path / "ix")  # auto: keeps the index's kind
    assert (update.kind, update.added, update.params) == ("ivf", 500, built.params)
    _, paths = open_index(tmp_path / "ix").search(features[2500:], k=1)
    assert [p[0] for p in paths] == files[2500:]  # each new file is its own nearest row


def test_interrupted_write_leaves_the_old_index_intact(tmp_path, monkeypatch):
    features, files = unit_rows(300, 8), names(300)
    write_embed_output(tmp_path / "old.npy", features[:200], files[:200])
    write_embed_output(tmp_path / "new.npy", features, files)
    build_index(tmp_path / "old.npy", tmp_path / "ix")
    queries = unit_rows(5, 8, seed=2)
    before = open_index(tmp_path / "ix").search(queries, k=5)
    listing = sorted(p.name for p in (tmp_path / "ix").iterdir())
    write_files = index_module._write_files

    def crash_after_the_index_file(staging, index, names, meta):
        write_files(staging, index, names, meta)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(index_module, "_write_files", crash_after_the_index_file)
    with pytest.raises(KeyboardInterrupt):
        build_index(tmp_path / "new.npy", tmp_path / "ix")
    assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == listing  # nothing staged left
    after = open_index(tmp_path / "ix")
    assert after.rows == 200
    np.testing.assert_array_equal(after.search(queries, k=5)[0], before[0])
    assert after.search(queries, k=5)[1] == before[1]


def test_a_query_from_another_model_is_refused_naming_both(tmp_path):
    write_embed_output(tmp_path / "p.npy", unit_rows(50, 8), names(50), weights="1" * 64)
    index = open_index(build_index(tmp_path / "p.npy", tmp_path / "ix").folder)
    index.search(unit_rows(1, 8), k=3, model="1" * 64)  # the same model: accepted
    with pytest.raises(ModelMismatchError, match="tiny-vit .*weights 111111111111.*weights 222"):
        index.search(unit_rows(1, 8), k=3, model="2" * 64)


def _image_folder(folder, count: int):
    folder.mkdir()
    for i in range(count):
        Image.new("RGB", (40, 40), (30 * i, 255 - 30 * i, 7 * i)).save(folder / f"{i}.png")
    return sorted(folder.glob("*.png"))


def test_a_real_embed_run_is_indexed_and_searched_by_text(tmp_path):
    torch.manual_seed(0)
    model = mmcl.create_model("tiny-vit").eval()
    paths = _image_folder(tmp_path / "photos", 6)
    embed_image_folder(
        model, paths, tmp_path / "photos.npy", source={"model": "tiny-vit"}, progress=False
    )
    build_index(tmp_path / "photos.npy", tmp_path / "ix")
    index = open_index(tmp_path / "ix")
    tokenizer = mmcl.get_tokenizer("tiny-vit")
    scores, found = index.search_text(["a red square"], model, tokenizer, k=6)
    with torch.no_grad():
        text = model.encode_text(tokenizer(["a red square"]), normalize=True)
    image_features = np.load(tmp_path / "photos.npy")
    expected = (image_features @ text.numpy().T)[:, 0]
    order = np.argsort(-expected)
    assert found[0] == [str(paths[i]) for i in order]
    np.testing.assert_allclose(scores[0], expected[order], atol=1e-5)
    torch.manual_seed(1)
    other = mmcl.create_model("tiny-vit").eval()
    with pytest.raises(ModelMismatchError, match="built with model tiny-vit"):
        index.search_text(["a red square"], other, tokenizer)


def test_cli_builds_then_updates(tmp_path, capsys):
    features, files = unit_rows(40, 8), names(40)
    write_embed_output(tmp_path / "old.npy", features[:30], files[:30])
    write_embed_output(tmp_path / "new.npy", features, files)
    assert (
        main(["index", "--features", str(tmp_path / "old.npy"), "--output", str(tmp_path / "ix")])
        == 0
    )
    assert "built flat index" in capsys.readouterr().out
    assert (
        main(["index", "--features", str(tmp_path / "new.npy"), "--output", str(tmp_path / "ix")])
        == 0
    )
    assert "added 10 row(s)" in capsys.readouterr().out
    args = ["index", "--features", str(tmp_path / "new.npy"), "--output", str(tmp_path / "hn")]
    assert main([*args, "--kind", "hnsw", "--recall-queries", "40"]) == 0
    assert "recall@10 " in capsys.readouterr().out
    assert main([*args, "--quiet"]) == 0 and capsys.readouterr().out == ""


def test_mmcl_embed_then_mmcl_index_on_the_command_line(tmp_path, capsys):
    _image_folder(tmp_path / "photos", 5)
    save_safetensors(mmcl.create_model("tiny-vit"), tmp_path / "tiny.safetensors")
    common = ["--model", "tiny-vit", "--pretrained", str(tmp_path / "tiny.safetensors"), "--quiet"]
    for output in ("photos.npy", "photos.safetensors"):
        embed = ["embed", *common, "--images", str(tmp_path / "photos")]
        assert main([*embed, "--output", str(tmp_path / output)]) == 0
        index = ["index", "--features", str(tmp_path / output)]
        assert main([*index, "--output", str(tmp_path / (output + ".index"))]) == 0
    assert "built flat index" in capsys.readouterr().out
    from_npy = open_index(tmp_path / "photos.npy.index")
    from_safetensors = open_index(tmp_path / "photos.safetensors.index")
    assert from_npy.meta["model"]["model"] == "tiny-vit"
    assert from_npy.meta["model"]["pretrained"] == str(tmp_path / "tiny.safetensors")
    assert from_npy.meta["model"] == from_safetensors.meta["model"]
    queries = np.load(tmp_path / "photos.npy")
    scores, paths = from_safetensors.search(queries, k=1)
    assert [p[0] for p in paths] == from_npy.names  # each image finds itself first
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
