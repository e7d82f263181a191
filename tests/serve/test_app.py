"""mmcl.serve.app: the search API answers as numpy's brute-force search over the embedded
features, serves the page and the indexed files, and `mmcl serve` starts it on loopback."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import mmcl
from embed_outputs import unit_rows, write_embed_output
from mmcl.cli import main
from mmcl.eval.embed_folder import weights_fingerprint
from mmcl.eval.index import build_index
from mmcl.serve.app import create_app
from served_index import shared_served_index


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return shared_served_index(tmp_path_factory)  # read only: built once a session


@pytest.fixture(scope="module")
def client(served):
    return TestClient(create_app(served.folder, served.model))


def test_text_search_ranks_as_numpy_brute_force(client, served):
    response = client.get("/search", params={"q": "a red square", "k": 4})
    assert response.status_code == 200
    body = response.json()
    paths, scores = served.text_ranking("a red square")
    assert body["query"] == {"text": "a red square"} and body["k"] == 4
    assert [hit["path"] for hit in body["results"]] == paths[:4]
    np.testing.assert_allclose([hit["score"] for hit in body["results"]], scores[:4], atol=1e-5)
    assert [hit["rank"] for hit in body["results"]] == [1, 2, 3, 4]


def test_k_larger_than_the_collection_returns_every_image_once(client, served):
    body = client.get("/search", params={"q": "anything", "k": 50}).json()
    assert sorted(hit["path"] for hit in body["results"]) == sorted(map(str, served.images))


def test_an_uploaded_image_finds_itself_first_then_ranks_as_numpy(client, served):
    row = 2
    upload = {"image": ("query.png", served.images[row].read_bytes(), "image/png")}
    body = client.post("/search", params={"k": 6}, files=upload).json()
    paths, scores = served.image_ranking(row)
    assert body["results"][0]["path"] == str(served.images[row])
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)  # cosine with itself
    assert [hit["path"] for hit in body["results"]] == paths
    np.testing.assert_allclose([hit["score"] for hit in body["results"]], scores, atol=1e-4)
    assert body["query"] == {"image": "query.png"}


def test_result_urls_serve_the_indexed_files_byte_for_byte(client, served):
    body = client.get("/search", params={"q": "a photo", "k": 6}).json()
    for hit in body["results"]:
        response = client.get("/" + hit["url"])
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        assert response.content == open(hit["path"], "rb").read()
        assert hit["thumbnail"] == hit["url"].replace("image/", "thumbnail/")


def test_health_reports_the_index(client):
    assert client.get("/health").json() == {
        "status": "ok",
        "rows": 6,
        "kind": "flat",
        "model": "tiny-vit",
    }


def test_the_page_has_a_search_box_an_upload_button_and_a_result_grid(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    for element in ('id="q"', 'type="file"', 'id="results"', "<script>"):
        assert element in response.text


def test_the_app_loads_the_model_the_index_records(served):
    # No model given: the name and checkpoint `mmcl embed` recorded are loaded.
    client = TestClient(create_app(served.folder))
    paths, _ = served.text_ranking("a blue square")
    body = client.get("/search", params={"q": "a blue square", "k": 3}).json()
    assert [hit["path"] for hit in body["results"]] == paths[:3]


def test_mmcl_serve_runs_uvicorn_on_the_loopback_address(served, monkeypatch, capsys):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append((app, options)))
    assert main(["serve", "--index", str(served.folder), "--port", "8123", "--quiet"]) == 0
    [(app, options)] = calls
    assert (options["host"], options["port"]) == ("127.0.0.1", 8123)
    assert "open http://127.0.0.1:8123/" in capsys.readouterr().out
    paths, _ = served.text_ranking("green")
    body = TestClient(app).get("/search", params={"q": "green", "k": 2}).json()
    assert [hit["path"] for hit in body["results"]] == paths[:2]


def test_thumbnails_are_jpegs_of_at_most_256_pixels_keeping_the_shape(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (600, 300), (200, 40, 40)).save(photos / "wide.png")
    Image.new("RGB", (40, 90), (40, 40, 200)).save(photos / "small.png")
    files = [str(photos / "wide.png"), str(photos / "small.png")]
    torch.manual_seed(0)
    model = mmcl.create_model("tiny-vit")
    write_embed_output(tmp_path / "p.npy", unit_rows(2, 64), files, weights_fingerprint(model))
    build_index(tmp_path / "p.npy", tmp_path / "ix")
    client = TestClient(create_app(tmp_path / "ix", model))
    for row, size, colour in [(0, (256, 128), (200, 40, 40)), (1, (40, 90), (40, 40, 200))]:
        response = client.get(f"/thumbnail/{row}")
        assert response.headers["content-type"] == "image/jpeg"
        thumbnail = Image.open(io.BytesIO(response.content))
        assert thumbnail.format == "JPEG" and thumbnail.size == size  # small ones not enlarged
        centre = thumbnail.getpixel((size[0] // 2, size[1] // 2))
        assert max(abs(a - b) for a, b in zip(centre, colour, strict=True)) <= 4  # JPEG's loss


def test_a_query_longer_than_the_models_context_is_answered_from_its_start(client, served):
    # 1000 characters: about 250 tokens, cut to the model's 77 as the tokenizer does.
    long_query = "a small red square " * 52 + "a red ring!!"
    assert len(long_query) == 1000
    paths, _ = served.text_ranking(long_query)
    body = client.get("/search", params={"q": long_query, "k": 6}).json()
    assert [hit["path"] for hit in body["results"]] == paths
