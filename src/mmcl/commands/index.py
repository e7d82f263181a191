"""`mmcl index`: `mmcl embed` outputs -> a FAISS search index folder (built or updated)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmcl.choices import DEFAULT_INDEX_THRESHOLD, INDEX_KINDS


def add_parser(commands) -> None:
    index = commands.add_parser("index", help="embed outputs -> a FAISS search index folder")
    index.add_argument(
        "--features",
        type=Path,
        required=True,
        help="an `mmcl embed --images` output (.npy or .safetensors, with its .index.txt and "
        ".embedding.json)",
    )
    index.add_argument(
        "--output",
        type=Path,
        required=True,
        help="the index folder: created, or, when it holds an index of the same model, "
        "updated with the files new in --features",
    )
    index.add_argument(
        "--kind",
        choices=INDEX_KINDS,
        default="auto",
        help="flat: exact; ivf / hnsw: approximate, recall@10 measured and printed; auto: flat "
        "up to --threshold rows, ivf above",
    )
    index.add_argument("--threshold", type=int, default=DEFAULT_INDEX_THRESHOLD, metavar="ROWS")
    index.add_argument("--nlist", type=int, help="IVF cells (default 4 sqrt(rows))")
    index.add_argument(
        "--nprobe", type=int, help="IVF cells searched a query (default: tuned to --target-recall)"
    )
    index.add_argument(
        "--ef-search", type=int, help="HNSW candidates a query (default: tuned to --target-recall)"
    )
    index.add_argument(
        "--target-recall",
        type=float,
        default=0.95,
        help="unless --nprobe / --ef-search is given, the search effort doubles from nlist/10 "
        "cells (64 candidates) until the measured recall@10 reaches this",
    )
    index.add_argument(
        "--recall-queries", type=int, default=200, help="rows sampled to measure recall@10"
    )
    index.add_argument(
        "--rebuild",
        action="store_true",
        help="build afresh (needed when files were removed or changed, or the model differs)",
    )
    index.add_argument("--quiet", action="store_true", help="print nothing when it succeeds")
    index.set_defaults(handler=run_index)


def run_index(args: argparse.Namespace) -> int:
    from mmcl.eval.index import IndexSettings, build_index

    settings = IndexSettings(
        kind=args.kind,
        threshold=args.threshold,
        nlist=args.nlist,
        nprobe=args.nprobe,
        ef_search=args.ef_search,
        recall_queries=args.recall_queries,
        target_recall=args.target_recall,
    )
    report = build_index(args.features, args.output, settings, rebuild=args.rebuild)
    if args.quiet:
        return 0
    recall = "exact" if report.recall_at_10 is None else f"{100 * report.recall_at_10:.1f}%"
    action = "built" if report.rebuilt else f"added {report.added} row(s) to"
    params = " ".join(f"{key}={value}" for key, value in report.params.items())
    print(
        f"{action} {report.kind} index {report.folder}: {report.rows} rows {params}".rstrip()
        + f", recall@10 {recall} (against exact search), {report.seconds:.1f}s"
    )
    return 0
