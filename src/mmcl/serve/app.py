"""The search service's HTTP face: a FastAPI app over a `Searcher` (the `mmcl serve` command).

    GET  /              the search page (static/index.html)
    GET  /search?q=&k=  text-to-image search: JSON {"query", "k", "results": [{rank, score,
                        path, url, thumbnail}]}
    POST /search?k=     image-to-image search: the image as the multipart field "image"
    GET  /image/{row}   an indexed file, by its row number (from a result's url)
    GET  /thumbnail/{row}  the same as a JPEG of at most 256 pixels a side
    GET  /health        {"status": "ok", "rows", "kind", "model"}

Errors are JSON {"error": "one line saying what is wrong and what to do"} with a 4xx status:
400 a bad query or k, 404 an unknown file, 413 a request over `max_request_bytes`, 415 an upload
that is not multipart or not an image.
"""

from __future__ import annotations

import importlib.resources
import os

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmcl.serve.limits import RequestTooLarge, limit_request_size
from mmcl.serve.searcher import Hit, QueryError, Searcher

DEFAULT_K = 12
MAX_K = 100
MAX_QUERY_CHARS = 1000
MAX_REQUEST_BYTES = 10 * 2**20  # an upload of a large photo, not a folder of them
ROUTES = "the service answers /, /search, /image/ROW, /thumbnail/ROW (from results) and /health"
NO_SNIFF = {"X-Content-Type-Options": "nosniff"}  # a file is shown as its type, never as a page


def create_app(
    index_folder: str | os.PathLike,
    model=None,
    device: str = "cpu",
    root: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    max_k: int = MAX_K,
    max_request_bytes: int = MAX_REQUEST_BYTES,
) -> FastAPI:
    """The search app for the index in `index_folder`, queried with `model`.

    `model` defaults to the one `mmcl embed` recorded for the index (its name and checkpoint);
    either way its weights must be the index's. See `Searcher` for `root` and `image_root`.

    >>> # import uvicorn; uvicorn.run(create_app("photos.index"), host="127.0.0.1", port=8000)
    """
    if max_k < 1 or max_request_bytes < 1:
        raise ValueError(f"max_k and max_request_bytes must be positive, got {max_k}, "
                         f"{max_request_bytes}")  # fmt: skip
    if model is None:
        model = _index_model(index_folder, device)
    searcher = Searcher(index_folder, model, device=device, root=root, image_root=image_root)
    page = importlib.resources.files("mmcl.serve").joinpath("static/index.html").read_text()
    app = FastAPI(title="mmcl search", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.searcher = searcher
    limit_request_size(app, max_request_bytes)

    @app.exception_handler(QueryError)
    async def bad_query(request: Request, error: QueryError):
        return _error(400, str(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        if error.status_code == 404:
            return _error(404, f"no such page {request.url.path!r}: {ROUTES}")
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(RequestTooLarge)
    async def too_large(request: Request, error: RequestTooLarge):
        return _error(413, str(error))

    @app.get("/", response_class=HTMLResponse)
    def home():
        return page

    @app.get("/health")
    def health():
        meta = searcher.index.meta
        return {
            "status": "ok",
            "rows": searcher.rows,
            "kind": meta["kind"],
            "model": meta["model"].get("model"),
        }

    @app.get("/search")
    def search_text(q: str | None = None, k: str | None = None):
        count = _parse_k(k, max_k)
        if q is None:
            raise QueryError("give the query as ?q=words (or POST an image as the field 'image')")
        if len(q) > MAX_QUERY_CHARS:
            raise QueryError(f"the query is {len(q)} characters long; at most {MAX_QUERY_CHARS}")
        return _results({"text": q}, count, searcher.search_text(q, count))

    @app.post("/search")
    async def search_image(request: Request, k: str | None = None):
        count = _parse_k(k, max_k)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return _error(415, "send the image as multipart/form-data, in the field 'image'")
        async with request.form(max_files=1, max_fields=1) as form:
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise QueryError("no file in the field 'image': choose an image to search with")
            data = await upload.read()
            name = upload.filename or "image"
        try:
            hits = await run_in_threadpool(searcher.search_image, data, name, count)
        except QueryError as error:
            return _error(415 if data else 400, str(error))
        return _results({"image": name}, count, hits)

    @app.get("/image/{row}")
    def image(row: str):
        path = searcher.file(int(row)) if row.isdecimal() else None
        if path is None:
            return _no_image(row)
        return FileResponse(path, headers=NO_SNIFF)

    @app.get("/thumbnail/{row}")
    def thumbnail(row: str):
        jpeg = searcher.thumbnail(int(row)) if row.isdecimal() else None
        if jpeg is None:
            return _no_image(row)
        return Response(jpeg, media_type="image/jpeg", headers=NO_SNIFF)

    return app


def _index_model(index_folder, device: str):
    """The model `mmcl embed` recorded for the index: its name and checkpoint."""
    from mmcl.models.factory import create_model
    from mmcl.serve.searcher import index_model_source

    name, pretrained = index_model_source(index_folder)
    if pretrained is None:
        raise ValueError(
            f"{index_folder}: the index records no checkpoint (it was embedded with random "
            f"weights, or from Python): give the model it was made with (--model, --pretrained)"
        )
    return create_model(name, pretrained=pretrained, device=device)


def _parse_k(value: str | None, max_k: int) -> int:
    if value is None:
        return min(DEFAULT_K, max_k)
    if not value.strip().isdecimal() or not 1 <= int(value) <= max_k:
        raise QueryError(f"k must be a whole number from 1 to {max_k}, got {value!r}")
    return int(value)


def _results(query: dict, k: int, hits: list[Hit]) -> dict:
    return {
        "query": query,
        "k": k,
        "results": [
            {
                "rank": rank,
                "score": hit.score,
                "path": hit.path,
                "url": f"image/{hit.row}",
                "thumbnail": f"thumbnail/{hit.row}",
            }
            for rank, hit in enumerate(hits, start=1)
        ],
    }


def _no_image(row: str) -> JSONResponse:
    return _error(404, f"no indexed image {row!r}: use the urls that /search returns")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
