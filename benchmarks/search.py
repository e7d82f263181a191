"""Search index speed and recall: exact (flat), IVF and HNSW, on random unit vectors and on the
CIFAR-10 images' embeddings, and the search service's latency under load.

    python benchmarks/search.py                 # 100,000 x 512 random vectors (CLIP ViT-B's width)
    python benchmarks/search.py --quick         # 20,000 x 128, a smoke run
    python benchmarks/search.py --rows 1000000 --nprobe 16 32 64
    python benchmarks/search.py --rows 0 --cifar10 DATA/cifar10 --pretrained model.safetensors
    python benchmarks/search.py --serve         # + p50/p95 of `mmcl serve` (benchmarks/serve.py)

Each index is built once with `mmcl.eval.index.build_index` (what `mmcl index` runs: files
written and search effort tuned to --target-recall included, so the tuned row's build time
holds the tuning), then searched with the held-out queries, one batch of `--batch` queries at
a time: first with the effort the tuning chose, then with each fixed effort of --nprobe /
--ef-search set on the same index (what a fixed default would give). recall@10 is measured here
against numpy's brute-force top 10 for those queries, not the index's own sampled figure.

Random unit vectors are the hard case for IVF and HNSW: in high dimension they have no
clusters, every point is nearly as far from every other, and the cells of IVF cut through
their neighbourhoods. Image embeddings are clustered: --cifar10 FOLDER (train/ and test/ of
class folders of images, e.g. CIFAR-10 as JPEGs) embeds the images with `--pretrained` (a
checkpoint; without it and --model, the scenes-pretrained tiny CLIP of
`mmcl.continual.pretrained`, trained once and cached), holds out --queries of them as queries
and indexes the rest. Recall is independent of the machine's load; times are not. On a machine
whose cores other jobs hold, run with OMP_NUM_THREADS=1: faiss's OpenMP threads then wait on
each other, and one query a call runs several times slower on 2 threads than on 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmcl.eval.embed import save_features
from mmcl.eval.embed_folder import (
    embed_image_folder,
    embedding_record_path,
    write_embedding_record,
)
from mmcl.eval.index import IndexSettings, build_index, exact_top_k, open_index
from mmcl.io.tables import print_table

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine_line  # noqa: E402

HEADER = ["data", "index", "effort", "build s", "queries/s", "recall@10"]
BENCHMARK_IDENTITY = dict.fromkeys(
    ("model", "pretrained", "model_config", "preprocess", "image_reading"), "benchmark"
)


@dataclass
class Collection:
    """Indexed rows (an `mmcl embed`-style output) and held-out queries with their exact top 10."""

    label: str
    path: Path  # the features file to index
    queries: np.ndarray
    truth: list[set[str]]  # names of each query's exact top 10 among the indexed rows


def unit_rows(rows: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write_output(path: Path, features: np.ndarray, names: list[str], identity: dict) -> Path:
    save_features(path, torch.from_numpy(np.ascontiguousarray(features)), names)
    write_embedding_record(path, identity)
    return path


def collection(label, path, features, names, queries) -> Collection:
    truth = exact_top_k(queries, features, 10)
    return Collection(label, path, queries, [{names[r] for r in rows} for rows in truth])


def random_collection(folder: Path, rows: int, dim: int, queries: int) -> Collection:
    features = unit_rows(rows, dim, seed=0)
    names = [f"img{i:07d}.jpg" for i in range(rows)]
    identity = {**BENCHMARK_IDENTITY, "weights_sha256": "0" * 64, "settings": {}}
    path = write_output(folder / "random.npy", features, names, identity)
    return collection(
        f"random {rows:,}x{dim}", path, features, names, unit_rows(queries, dim, seed=1)
    )


def load_model(model_name: str | None, pretrained: str | None):
    """The embedding model and how the table names it."""
    import mmcl

    if model_name is None and pretrained is None:
        from mmcl.continual.pretrained import pretrained_scene_model

        pretrained = str(pretrained_scene_model())
        label = "scenes-pretrained tiny CLIP"
    elif pretrained is None:
        label = f"{model_name}, random weights (not meaningful)"
    else:
        label = Path(pretrained).name if model_name is None else f"{model_name} {pretrained}"
    return mmcl.create_model(model_name, pretrained=pretrained).eval(), label


def cifar_collection(folder: Path, scratch: Path, model, label: str, limit, queries: int):
    """The images of folder's train/ and test/ (`limit` of them, drawn at random) embedded by
    `model`, `queries` of them held out as queries and the rest written as the indexed output."""
    from mmcl.data.images import list_images

    parts = [folder / "train", folder / "test"]
    if not all(part.is_dir() for part in parts):
        raise FileNotFoundError(
            f"--cifar10 {folder}: expected train/ and test/ folders of class folders of images"
        )
    paths = [path.resolve() for part in parts for path in list_images(part)]
    rng = np.random.default_rng(0)
    if limit is not None and limit < len(paths):
        paths = [paths[i] for i in np.sort(rng.choice(len(paths), limit, replace=False))]
    if len(paths) <= queries + 10:
        raise ValueError(f"--cifar10 {folder}: {len(paths)} images, need more than --queries+10")
    every = scratch / "cifar_all.npy"
    start = time.perf_counter()
    embed_image_folder(
        model, paths, every, batch_size=256, source={"model": label, "pretrained": label}
    )
    print(f"embedded {len(paths)} images in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    features = np.load(every)
    names = [str(path) for path in paths]
    record = json.loads(embedding_record_path(every).read_text())
    held_out = np.zeros(len(paths), dtype=bool)
    held_out[rng.choice(len(paths), queries, replace=False)] = True
    indexed = features[~held_out]
    kept = [name for name, out in zip(names, held_out, strict=True) if not out]
    path = write_output(scratch / "cifar.npy", indexed, kept, record)
    name = f"CIFAR-10 {len(kept):,}x{features.shape[1]}, {label}"
    return collection(name, path, indexed, kept, features[held_out])


def search_speed(index, data: Collection, batch: int) -> tuple[float, float]:
    """(queries/s, recall@10) of the opened `index` for the collection's queries."""
    index.search(data.queries[:batch], k=10)  # warm-up
    start = time.perf_counter()
    found = [
        paths
        for i in range(0, len(data.queries), batch)
        for paths in index.search(data.queries[i : i + batch], k=10)[1]
    ]
    seconds = time.perf_counter() - start
    hits = [len(set(paths) & truth) for paths, truth in zip(found, data.truth, strict=True)]
    return len(data.queries) / seconds, float(np.mean(hits)) / 10


def index_rows(data: Collection, folder: Path, args) -> list[list]:
    """Flat, then IVF and HNSW tuned to the target recall, then at each fixed effort."""
    rows = []
    for kind in ("flat", "ivf", "hnsw"):
        settings = IndexSettings(kind=kind, target_recall=args.target_recall)
        start = time.perf_counter()
        build_index(data.path, folder / kind, settings)
        built = time.perf_counter() - start
        index = open_index(folder / kind)
        params = index.meta["params"]
        qps, recall = search_speed(index, data, args.batch)
        effort = {
            "flat": "exact",
            "ivf": f"nlist={params.get('nlist')} nprobe={params.get('nprobe')} (tuned)",
            "hnsw": f"M={params.get('hnsw_m')} efSearch={params.get('ef_search')} (tuned)",
        }[kind]
        rows.append([data.label, kind, effort, f"{built:.1f}", f"{qps:,.0f}", f"{recall:.3f}"])
        fixed = {"flat": [], "ivf": args.nprobe, "hnsw": args.ef_search}[kind]
        for value in fixed:
            if kind == "ivf":
                # 0: nlist / 10, where the tuning starts (a fixed default's usual choice).
                index.faiss_index.nprobe = value or max(1, params["nlist"] // 10)
                effort = f"nlist={params['nlist']} nprobe={index.faiss_index.nprobe} (fixed)"
            else:
                index.faiss_index.hnsw.efSearch = value
                effort = f"M={params['hnsw_m']} efSearch={value} (fixed)"
            qps, recall = search_speed(index, data, args.batch)
            rows.append([data.label, kind, effort, "same", f"{qps:,.0f}", f"{recall:.3f}"])
    return rows


def service_rows(scratch: Path, args, cifar_index: Path | None, model):
    """benchmarks/serve.py's measurement: on the CIFAR-10 flat index with its model, or on
    serve.py's generated collection."""
    from mmcl.serve.app import create_app
    from serve import SERVICE_HEADER, build_synthetic_index, measure_service

    if cifar_index is not None:
        app, label = create_app(cifar_index, model), "the CIFAR-10 flat index"
    else:
        images = 200 if args.quick else 2000
        index, synthetic = build_synthetic_index(scratch, images, "tiny-vit")
        app, label = create_app(index, synthetic), f"{images} generated images, tiny-vit"
    requests = min(args.requests, 40) if args.quick else args.requests
    rows = measure_service(app, requests, args.concurrency, args.duration)
    return label, SERVICE_HEADER, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 x 128: a smoke run")
    parser.add_argument("--rows", type=int, default=100_000, help="random vectors; 0: none")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries a data set")
    parser.add_argument("--batch", type=int, default=1, help="queries a search call")
    parser.add_argument("--target-recall", type=float, default=0.95, help="of the tuned rows")
    parser.add_argument(
        "--nprobe", type=int, nargs="*", default=[0], help="fixed IVF efforts; 0: nlist/10"
    )
    parser.add_argument(
        "--ef-search", type=int, nargs="*", default=[64, 256], help="fixed HNSW efforts"
    )
    parser.add_argument("--cifar10", type=Path, help="folder with train/ and test/ of images")
    parser.add_argument("--cifar-limit", type=int, help="embed this many images (random)")
    parser.add_argument("--model", help="CIFAR-10's embedding model (see `mmcl models`)")
    parser.add_argument("--pretrained", help="its checkpoint (see the notes above)")
    parser.add_argument("--serve", action="store_true", help="+ the service under load")
    parser.add_argument("--requests", type=int, default=400, help="service: requests a kind")
    parser.add_argument("--concurrency", type=int, default=16, help="service: clients")
    parser.add_argument("--duration", type=float, default=60, help="service: s a kind, at most")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = min(args.rows, 20_000)
        args.dim, args.queries = 128, min(args.queries, 200)
    if args.cifar10 is not None and not args.cifar10.is_dir():
        parser.error(f"--cifar10 {args.cifar10}: folder not found")
    rows, service = [], None
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        if args.rows:
            data = random_collection(scratch, args.rows, args.dim, args.queries)
            rows += index_rows(data, scratch / "random", args)
        model = None
        if args.cifar10 is not None:
            model, label = load_model(args.model, args.pretrained)
            data = cifar_collection(
                args.cifar10, scratch, model, label, args.cifar_limit, args.queries
            )
            rows += index_rows(data, scratch / "cifar", args)
        if args.serve:
            cifar_index = scratch / "cifar" / "flat" if model is not None else None
            service = service_rows(scratch, args, cifar_index, model)
    print(
        f"{args.queries} held-out queries a data set ({args.batch} a search call), k=10, "
        f"target recall {args.target_recall}; {machine_line()}"
    )
    print_table(HEADER, rows)
    if service is not None:
        label, header, service_table = service
        print(f"\nthe search service under load ({label}, k=10):")
        print_table(header, service_table)


if __name__ == "__main__":
    main()
