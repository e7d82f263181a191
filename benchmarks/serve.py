"""The search service under load: concurrent searches against `mmcl serve`'s app on a loopback
port, bounded in count and time, with p50/p95 latency and errors.

    python benchmarks/serve.py                        # 2,000 generated images, tiny-vit
    python benchmarks/serve.py --quick                # 200 images, 100 requests, a smoke run
    python benchmarks/serve.py --index photos.index   # your index, with the model it records
    python benchmarks/serve.py --requests 1000 --concurrency 32 --duration 60

The server is the app `mmcl serve` runs (mmcl.serve.app.create_app), served by uvicorn in this
process; the clients are threads with one HTTP connection each. Text queries
(GET /search?q=...) and image queries (POST /search with an indexed image) are measured in turn.
A request counts as an error if it fails, answers other than 200, or returns no results; the
run stops starting requests at --duration seconds, and those never started are reported.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine_line, print_table  # noqa: E402

WORDS = "a photo of red green blue dog cat car tree house sky sea night small large old".split()


@dataclass
class LoadReport:
    latencies: list[float] = field(default_factory=list)  # seconds, of answered requests
    errors: list[str] = field(default_factory=list)  # one line each
    not_started: int = 0  # requests left when the time was up
    seconds: float = 0.0

    def percentile(self, share: float) -> float:
        return float(np.percentile(self.latencies, 100 * share)) if self.latencies else np.nan


def load_test(
    url: str,
    queries: list[dict],
    concurrency: int,
    duration: float = 60.0,
    k: int = 10,
    check: Callable[[dict, dict], str | None] | None = None,
) -> LoadReport:
    """Send every query of `queries` ({"text": ...} or {"image": path}) to the service at `url`,
    `concurrency` at a time, starting none after `duration` seconds. `check(query, answer)`
    returns what is wrong with an answer (an error), or None."""
    import httpx

    report, lock = LoadReport(), threading.Lock()
    local = threading.local()  # one client (one kept-alive connection) a thread
    start = time.perf_counter()

    def run(query: dict) -> None:
        if time.perf_counter() - start > duration:
            with lock:
                report.not_started += 1
            return
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=30)
        sent = time.perf_counter()
        try:
            if "text" in query:
                response = local.client.get("/search", params={"q": query["text"], "k": k})
            else:
                upload = {"image": (Path(query["image"]).name, Path(query["image"]).read_bytes())}
                response = local.client.post("/search", params={"k": k}, files=upload)
            took = time.perf_counter() - sent
            problem = _problem(response, query, check)
        except httpx.HTTPError as error:
            took, problem = time.perf_counter() - sent, f"{type(error).__name__}: {error}"
        with lock:
            if problem:
                report.errors.append(problem)
            else:
                report.latencies.append(took)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(run, queries))
    report.seconds = time.perf_counter() - start
    return report


def _problem(response, query: dict, check) -> str | None:
    if response.status_code != 200:
        return f"{response.status_code}: {response.text[:200]}"
    answer = response.json()
    if not answer["results"]:
        return f"no results for {query}"
    return check(query, answer) if check else None


def text_queries(count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"text": " ".join(rng.choice(WORDS, size=rng.integers(2, 7)))} for _ in range(count)]


def build_synthetic_index(folder: Path, images: int, model_name: str):
    """`images` generated 64 px pictures in folder/photos, embedded by a random `model_name`
    (saved, so the index records it) and indexed, as `mmcl embed` and `mmcl index` would."""
    import torch
    from PIL import Image

    import mmcl
    from mmcl.eval.embed_folder import embed_image_folder
    from mmcl.eval.index import build_index
    from mmcl.io.checkpoints import save_safetensors

    torch.manual_seed(0)
    model = mmcl.create_model(model_name).eval()
    save_safetensors(model, folder / "model.safetensors")
    photos = folder / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(images):
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((64, 64)).save(photos / f"{i:06d}.png")
    paths = sorted(photos.glob("*.png"))
    source = {"model": model_name, "pretrained": str(folder / "model.safetensors")}
    embed_image_folder(model, paths, folder / "photos.npy", source=source, progress=False)
    build_index(folder / "photos.npy", folder / "photos.index")
    return folder / "photos.index", model


SERVICE_HEADER = ["query", "rows", "concurrency", "answered", "errors", "not started",
                  "p50 ms", "p95 ms", "req/s"]  # fmt: skip


def measure_service(
    app, requests: int, concurrency: int, duration: float, k: int = 10, seed: int = 1
) -> list[list]:
    """Text, then image queries (`requests` of each) against `app` (`create_app`'s) served on a
    loopback port: a row for SERVICE_HEADER each, with p50/p95 latency. Errors go to stderr."""
    from mmcl.serve.background import serve_in_background

    searcher = app.state.searcher
    rng = np.random.default_rng(seed)
    images = [{"image": searcher.files[i]} for i in rng.integers(searcher.rows, size=requests)]
    rows = []
    with serve_in_background(app) as url:
        for kind, queries in (("text", text_queries(requests)), ("image", images)):
            report = load_test(url, queries, concurrency, duration, k)
            answered = len(report.latencies)
            rows.append([
                kind, searcher.rows, concurrency, answered, len(report.errors),
                report.not_started, f"{1000 * report.percentile(0.5):.1f}",
                f"{1000 * report.percentile(0.95):.1f}", f"{answered / report.seconds:.1f}",
            ])  # fmt: skip
            for error in report.errors[:3]:
                print(f"{kind} error: {error}", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", type=Path, help="an index folder (default: a generated one)")
    parser.add_argument("--images", type=int, default=2000, help="generated collection's size")
    parser.add_argument("--model", default="tiny-vit", help="the generated collection's model")
    parser.add_argument("--requests", type=int, default=400, help="requests of each kind")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60, help="seconds, each kind at most")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="200 images, 100 requests a kind")
    args = parser.parse_args()
    if args.quick:
        args.images, args.requests = 200, 100

    from mmcl.serve.app import create_app

    with tempfile.TemporaryDirectory() as scratch:
        if args.index is None:
            index, model = build_synthetic_index(Path(scratch), args.images, args.model)
            app = create_app(index, model)
        else:
            app = create_app(args.index)
        rows = measure_service(app, args.requests, args.concurrency, args.duration, args.k)
    print(machine_line())
    print(f"index {args.index or f'generated, {args.images} images, {args.model}'}, k={args.k}")
    print_table(SERVICE_HEADER, rows)


if __name__ == "__main__":
    main()
