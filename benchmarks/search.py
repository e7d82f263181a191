"""Search index speed and recall: exact (flat), IVF and HNSW on random unit vectors.

    python benchmarks/search.py                 # 100,000 x 512 (CLIP ViT-B's width)
    python benchmarks/search.py --quick         # 20,000 x 128, a smoke run
    python benchmarks/search.py --rows 1000000 --nprobe 16 32 64

Each row builds an index with `mmcl.eval.index.build_index` (what `mmcl index` runs: files
written included) from an `mmcl embed`-style output, then times `search` for the held-out
queries, one batch of `--batch` queries at a time. recall@10 is measured here against numpy's
brute-force top 10 for those queries, not the index's own sampled figure.

Random unit vectors are the hard case for IVF and HNSW: in high dimension they have no
clusters, every point is nearly as far from every other, and the cells of IVF cut through
their neighbourhoods. Real image embeddings are clustered, and recall on them is higher at the
same settings; `mmcl index` prints the recall it measures on the user's own vectors.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmcl.eval.embed import save_features
from mmcl.eval.embed_folder import write_embedding_record
from mmcl.eval.index import IndexSettings, build_index, exact_top_k, open_index
from mmcl.io.tables import print_table

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine_line  # noqa: E402


def unit_rows(rows: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write_output(folder: Path, features: np.ndarray) -> Path:
    path = folder / "vectors.npy"
    save_features(
        path, torch.from_numpy(features), [f"img{i:07d}.jpg" for i in range(len(features))]
    )
    identity = dict.fromkeys(
        ("model", "pretrained", "model_config", "preprocess", "image_reading"), "benchmark"
    )
    write_embedding_record(path, {**identity, "weights_sha256": "0" * 64, "settings": {}})
    return path


def measure(path: Path, folder: Path, settings: IndexSettings, queries, truth, batch: int):
    start = time.perf_counter()
    build_index(path, folder, settings)
    build_seconds = time.perf_counter() - start
    index = open_index(folder)
    index.search(queries[:batch], k=10)  # warm-up
    start = time.perf_counter()
    found = [index.search(queries[i : i + batch], k=10)[1] for i in range(0, len(queries), batch)]
    seconds = time.perf_counter() - start
    found = [paths for block in found for paths in block]
    hits = [
        len(set(paths) & {index.names[r] for r in rows})
        for paths, rows in zip(found, truth, strict=True)
    ]
    return build_seconds, len(queries) / seconds, float(np.mean(hits)) / 10, index.meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 x 128: a smoke run")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1, help="queries a search call")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[0], help="IVF; 0: default")
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 256], help="HNSW")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.dim, args.queries = 20_000, 128, 200
    features = unit_rows(args.rows, args.dim, seed=0)
    queries = unit_rows(args.queries, args.dim, seed=1)
    truth = exact_top_k(queries, features, 10)
    configurations = [("flat", IndexSettings(kind="flat"))]
    configurations += [
        ("ivf", IndexSettings(kind="ivf", nprobe=nprobe or None)) for nprobe in args.nprobe
    ]
    configurations += [("hnsw", IndexSettings(kind="hnsw", ef_search=ef)) for ef in args.ef_search]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = write_output(Path(tmp), features)
        for number, (kind, settings) in enumerate(configurations):
            built, qps, recall, meta = measure(
                path, Path(tmp) / f"index{number}", settings, queries, truth, args.batch
            )
            params = " ".join(f"{k}={v}" for k, v in meta["params"].items()) or "-"
            rows.append([kind, params, f"{built:.1f}", f"{qps:,.0f}", f"{recall:.3f}"])
    print(
        f"{args.rows:,} random unit vectors of {args.dim}, {args.queries} queries "
        f"({args.batch} a call), k=10; {machine_line()}"
    )
    print_table(["index", "settings", "build s", "queries/s", "recall@10"], rows)


if __name__ == "__main__":
    main()
