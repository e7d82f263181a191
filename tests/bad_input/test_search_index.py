"""What `mmcl index` (mmcl.eval.index) does with bad input.

Promises checked here, one a line:
- A missing features file is an error naming it (and `mmcl index` says so in one line).
- A row-name index (.index.txt) whose count differs from the features' rows is an error naming it.
- An empty collection (no rows) is an error naming the features file.
- Features without the embedding record (.embedding.json) are refused, naming the record.
- A record left by an earlier run (the features rewritten since) is refused, naming it.
- An update where indexed files are gone is an error naming one and pointing to --rebuild.
- An update where a file's embedding changed (the image was replaced) is an error naming it.
- An update from another model's embeddings is refused, pointing to --rebuild.
- An --output folder that holds something other than an index is refused, untouched.
- Query features of the wrong dimension are an error naming both dimensions.
- Opening a folder that holds no index is an error naming it.
"""

from __future__ import annotations

import numpy as np
import pytest

from embed_outputs import names, unit_rows, write_embed_output
from mmcl.cli import main
from mmcl.eval import index as index_module
from mmcl.eval.index import build_index, open_index


def test_missing_features_file_is_named(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="features file not found: .*absent.npy"):
        build_index(tmp_path / "absent.npy", tmp_path / "ix")
    assert main(["index", "--features", str(tmp_path / "absent.npy"), "--output", "ix"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("mmcl index: error: features file not found") and error.count("\n") == 1


def test_row_names_count_mismatch_names_the_index_txt(tmp_path):
    write_embed_output(tmp_path / "p.npy", unit_rows(10, 8), names(10))
    (tmp_path / "p.npy.index.txt").write_text("".join(f"{n}\n" for n in names(9)))
    with pytest.raises(ValueError, match=r"p.npy.index.txt: 9 row names for the 10 rows"):
        build_index(tmp_path / "p.npy", tmp_path / "ix")


def test_empty_collection_is_named(tmp_path):
    write_embed_output(tmp_path / "p.npy", np.zeros((0, 8), np.float32), [])
    with pytest.raises(ValueError, match=r"p.npy: no rows \(an empty collection\)"):
        build_index(tmp_path / "p.npy", tmp_path / "ix")
    assert not (tmp_path / "ix").exists()


def test_features_without_embedding_record_are_refused(tmp_path):
    write_embed_output(tmp_path / "p.npy", unit_rows(10, 8), names(10))
    (tmp_path / "p.npy.embedding.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"p.npy.embedding.json not found"):
        build_index(tmp_path / "p.npy", tmp_path / "ix")


def test_a_stale_embedding_record_is_refused(tmp_path):
    write_embed_output(tmp_path / "p.npy", unit_rows(10, 8), names(10))
    record = (tmp_path / "p.npy.embedding.json").read_text()
    write_embed_output(tmp_path / "p.npy", unit_rows(10, 8), names(10, prefix="other/"))
    (tmp_path / "p.npy.embedding.json").write_text(record)
    with pytest.raises(ValueError, match=r"p.npy.embedding.json describes another output"):
        build_index(tmp_path / "p.npy", tmp_path / "ix")


def test_update_with_removed_files_names_one_and_suggests_rebuild(tmp_path):
    features, files = unit_rows(20, 8), names(20)
    write_embed_output(tmp_path / "old.npy", features, files)
    write_embed_output(tmp_path / "new.npy", features[1:], files[1:])
    build_index(tmp_path / "old.npy", tmp_path / "ix")
    with pytest.raises(ValueError, match=rf"1 indexed file.*{files[0]}.*--rebuild"):
        build_index(tmp_path / "new.npy", tmp_path / "ix")
    assert build_index(tmp_path / "new.npy", tmp_path / "ix", rebuild=True).rows == 19


def test_update_with_a_changed_file_names_it(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "_CHUNK", 7)  # rows compared in several chunks
    features, files = unit_rows(20, 8), names(20)
    write_embed_output(tmp_path / "old.npy", features, files)
    changed = features.copy()
    changed[[4, 15]] = unit_rows(2, 8, seed=9)
    write_embed_output(tmp_path / "new.npy", changed, files)
    build_index(tmp_path / "old.npy", tmp_path / "ix")
    with pytest.raises(
        ValueError, match=rf"^2 indexed file.* another embedding .*{files[4]}.*--rebuild"
    ):
        build_index(tmp_path / "new.npy", tmp_path / "ix")


def test_update_from_another_model_is_refused(tmp_path):
    features, files = unit_rows(20, 8), names(20)
    write_embed_output(tmp_path / "old.npy", features, files, weights="1" * 64)
    write_embed_output(tmp_path / "new.npy", features, files, weights="2" * 64)
    build_index(tmp_path / "old.npy", tmp_path / "ix")
    with pytest.raises(ValueError, match=r"another model or settings .*weights_sha256.*--rebuild"):
        build_index(tmp_path / "new.npy", tmp_path / "ix")


def test_output_folder_holding_other_files_is_refused_untouched(tmp_path):
    write_embed_output(tmp_path / "p.npy", unit_rows(10, 8), names(10))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for rebuild in (False, True):
        with pytest.raises(ValueError, match=r"mine: a folder that holds no index"):
            build_index(tmp_path / "p.npy", tmp_path / "mine", rebuild=rebuild)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_query_of_wrong_dimension_names_both(tmp_path):
    write_embed_output(tmp_path / "p.npy", unit_rows(10, 8), names(10))
    index = open_index(build_index(tmp_path / "p.npy", tmp_path / "ix").folder)
    with pytest.raises(ValueError, match=r"shape \(1, 5\) .*dimension 8"):
        index.search(unit_rows(1, 5), k=3)


def test_opening_a_folder_without_index_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: not an index folder"):
        open_index(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"nowhere: not found"):
        open_index(tmp_path / "nowhere")
