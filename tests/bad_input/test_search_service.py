"""What `mmcl serve` (mmcl.serve.app) does with bad input.

Promises checked here, one a line:
- An empty or blank query is a 400 saying so; a missing one a 400 saying how to give it.
- A query over 1000 characters is a 400 naming the limit.
- k that is 0, over the limit or not a number is a 400 naming the allowed range.
- An upload that is not an image is a 415 naming the file; an empty upload is a 400.
- A POST that is not multipart, or has no file in the field "image", is refused saying how.
- A request declared larger than the bound is a 413 before its body is read.
- A body sent without a declared size (chunked) is a 413 once it passes the bound.
- Files and thumbnails are reachable only by an indexed row number: paths, "..", negative
  or unknown rows are 404.
- An indexed file that is a symbolic link out of the image folder is not served (404).
- A missing index folder stops `mmcl serve` at start-up with one line naming it.
- A query model whose weights are not the index's stops `mmcl serve` at start-up, naming both.
- An index whose images are not found from the current folder stops start-up, naming --root.
- An index that records no checkpoint stops start-up, asking for --pretrained.
- Without `--host`, the service listens on 127.0.0.1 only.
"""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

import mmcl
from embed_outputs import names, unit_rows, write_embed_output
from mmcl.cli import main
from mmcl.eval.embed_folder import weights_fingerprint
from mmcl.eval.index import build_index
from mmcl.io.checkpoints import save_safetensors
from mmcl.serve.app import create_app
from served_index import shared_served_index

LIMIT = 4096  # bytes: a small bound, so the tests send little


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return shared_served_index(tmp_path_factory)  # read only: built once a session


@pytest.fixture(scope="module")
def client(served):
    return TestClient(create_app(served.folder, served.model, max_k=20, max_request_bytes=LIMIT))


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert "\n" not in message
    return message


@pytest.mark.parametrize("query", ["", "   "])
def test_an_empty_query_is_a_400(client, query):
    assert "the query is empty" in error_of(client.get("/search", params={"q": query}), 400)


def test_a_missing_query_is_a_400_saying_how_to_give_one(client):
    assert "?q=" in error_of(client.get("/search"), 400)


def test_a_query_over_1000_characters_is_a_400(client):
    response = client.get("/search", params={"q": "cat " * 300})
    assert "1200 characters long; at most 1000" in error_of(response, 400)


@pytest.mark.parametrize("k", ["0", "21", "-3", "ten", "2.5"])
def test_k_out_of_range_or_not_a_number_is_a_400(client, k):
    response = client.get("/search", params={"q": "a cat", "k": k})
    assert f"k must be a whole number from 1 to 20, got {k!r}" == error_of(response, 400)


def test_an_upload_that_is_not_an_image_is_a_415_naming_it(client):
    upload = {"image": ("notes.png", b"these are not pixels", "image/png")}
    message = error_of(client.post("/search", files=upload), 415)
    assert message.startswith("the uploaded file 'notes.png' is not a readable image")


def test_an_empty_upload_is_a_400(client):
    upload = {"image": ("empty.png", b"", "image/png")}
    assert "the uploaded file is empty" in error_of(client.post("/search", files=upload), 400)


def test_a_post_that_is_not_multipart_is_a_415(client):
    response = client.post("/search", json={"image": "cat.png"})
    assert "multipart/form-data, in the field 'image'" in error_of(response, 415)


def test_a_post_without_an_image_field_is_a_400(client):
    response = client.post("/search", files={"photo": ("a.png", b"x", "image/png")})
    assert "no file in the field 'image'" in error_of(response, 400)


def test_a_request_declared_larger_than_the_bound_is_a_413(client):
    upload = {"image": ("big.png", b"\0" * (LIMIT + 1), "image/png")}
    assert f"({LIMIT:,} bytes)" in error_of(client.post("/search", files=upload), 413)


def test_a_chunked_body_is_stopped_at_the_bound_with_a_413(client):
    boundary = "mmclboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def body():  # no Content-Length: the size is only known as the chunks arrive
        yield head
        for _ in range(2 * LIMIT // 512):
            yield b"\0" * 512

    response = client.post(
        "/search",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert f"({LIMIT:,} bytes)" in error_of(response, 413)


@pytest.mark.parametrize(
    "url",
    [
        "/image/6",  # one past the last row
        "/image/-1",
        "/image/..%2F..%2F..%2Fetc%2Fpasswd",
        "/image/%2Fetc%2Fpasswd",
        "/image/0%2F..%2F..%2Ftiny.safetensors",
        "/image/photos%2F0.png",
    ],
)
def test_files_are_reachable_only_by_an_indexed_row_number(client, url):
    # A "/" in the row (decoded from %2F) matches no route: the page names the routes.
    for route in ("/image/", "/thumbnail/"):
        response = client.get(url.replace("/image/", route))
        assert error_of(response, 404).startswith(("no indexed image", "no such page"))


def test_a_path_with_dot_dot_segments_reaches_no_file(client):
    # httpx (like browsers) folds "/image/../tiny.safetensors" to "/tiny.safetensors": no route.
    assert "no such page '/tiny.safetensors'" in error_of(
        client.get("/image/../tiny.safetensors"), 404
    )


def test_an_indexed_symbolic_link_out_of_the_image_folder_is_not_served(tmp_path):
    photos, outside = tmp_path / "photos", tmp_path / "secret"
    photos.mkdir(), outside.mkdir()
    (outside / "key.png").write_bytes(b"not for the web")
    (photos / "a.png").write_bytes(b"png")
    (photos / "b.png").symlink_to(outside / "key.png")
    files = [str(photos / "a.png"), str(photos / "b.png")]
    torch.manual_seed(0)
    model = mmcl.create_model("tiny-vit")
    write_embed_output(tmp_path / "p.npy", unit_rows(2, 64), files, weights_fingerprint(model))
    build_index(tmp_path / "p.npy", tmp_path / "ix")
    client = TestClient(create_app(tmp_path / "ix", model))
    assert client.get("/image/0").content == b"png"
    assert "no indexed image" in error_of(client.get("/image/1"), 404)
    assert "no indexed image" in error_of(client.get("/thumbnail/1"), 404)


def run_serve(capsys, *argv) -> str:
    assert main(["serve", *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("mmcl serve: error: ") and error.count("\n") == 1, error
    return error


def test_a_missing_index_stops_start_up_naming_it(tmp_path, capsys):
    error = run_serve(capsys, "--index", str(tmp_path / "absent.index"))
    assert f"{tmp_path / 'absent.index'}: not found" in error


def test_a_query_model_other_than_the_indexs_stops_start_up(served, tmp_path, capsys):
    torch.manual_seed(1)
    save_safetensors(mmcl.create_model("tiny-vit"), tmp_path / "other.safetensors")
    argv = ["--index", str(served.folder), "--pretrained", str(tmp_path / "other.safetensors")]
    error = run_serve(capsys, *argv)
    assert "was built with model tiny-vit" in error and "query with the index's model" in error


def test_images_not_found_from_the_current_folder_stop_start_up(tmp_path, capsys, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    monkeypatch.chdir(tmp_path)
    relative = names(3, prefix="photos/img")  # relative, as `mmcl embed --images photos` lists
    torch.manual_seed(0)
    model = mmcl.create_model("tiny-vit")
    save_safetensors(model, tmp_path / "tiny.safetensors")
    write_embed_output(tmp_path / "p.npy", unit_rows(3, 64), relative, weights_fingerprint(model))
    build_index(tmp_path / "p.npy", tmp_path / "ix")
    argv = ["--index", str(tmp_path / "ix"), "--pretrained", str(tmp_path / "tiny.safetensors")]
    error = run_serve(capsys, *argv, "--model", "tiny-vit")
    assert "its images are not found from" in error and "--root" in error


def test_an_index_that_records_no_checkpoint_asks_for_pretrained(tmp_path, capsys):
    write_embed_output(tmp_path / "p.npy", unit_rows(3, 64), names(3))
    meta = tmp_path / "p.npy.embedding.json"
    meta.write_text(meta.read_text().replace('"weights.safetensors"', "null"))
    build_index(tmp_path / "p.npy", tmp_path / "ix")
    error = run_serve(capsys, "--index", str(tmp_path / "ix"))
    assert "records no checkpoint" in error and "--pretrained" in error


def test_without_host_the_service_listens_on_loopback_only(served, monkeypatch, capsys):
    import uvicorn

    hosts = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: hosts.append(options["host"]))
    assert main(["serve", "--index", str(served.folder), "--quiet"]) == 0
    assert hosts == ["127.0.0.1"]
