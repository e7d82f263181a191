"""`benchmarks/search.py --quick` on random vectors and a tiny CIFAR-10-like folder, with the
service under load: the rows it prints hold what exact search and the tuning promise (no timing
is asserted)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "search.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("search_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def cifar_like_folder(root: Path, per_split: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for split, count in per_split.items():
        for number in range(count):
            folder = root / split / ("cat", "dog")[number % 2]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).resize((32, 32)).save(folder / f"{number:04d}.jpg")
    return root


def table_rows(text: str, first_column: str) -> list[list[str]]:
    """The rows of the printed table whose header starts with `first_column`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_column + " "))
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_quick_search_benchmark_rows_on_random_vectors_cifar_images_and_the_service(
    tmp_path, capsys
):
    folder = cifar_like_folder(tmp_path / "cifar10", {"train": 40, "test": 20})
    load_benchmark().main([
        "--quick", "--rows", "1500", "--queries", "20", "--cifar10", str(folder),
        "--model", "tiny-vit", "--serve", "--requests", "4", "--concurrency", "2",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    rows = table_rows(printed, "data")
    random_rows = [row for row in rows if row[0] == "random 1,500x128"]
    # 60 images, 20 held out as queries: 40 indexed, at tiny-vit's width 64.
    cifar_rows = [row for row in rows if row[0].startswith("CIFAR-10 40x64, tiny-vit")]
    expected_kinds = ["flat", "ivf", "ivf", "hnsw", "hnsw", "hnsw"]  # tuned, then fixed efforts
    assert [row[1] for row in random_rows] == expected_kinds
    assert [row[1] for row in cifar_rows] == expected_kinds
    for kind_rows in (random_rows, cifar_rows):
        assert kind_rows[0][5] == "1.000"  # flat is exact: numpy's brute force, row for row
        assert all(0 <= float(row[5]) <= 1 for row in kind_rows)
        assert "(tuned)" in kind_rows[1][2] and "(fixed)" in kind_rows[2][2]
    # 1,500 rows: nlist = 1500 // 39 = 38 cells, the fixed row at nlist / 10 = 3 of them; the
    # tuning only ever searches more cells than that, so it finds at least as much.
    assert random_rows[2][2] == "nlist=38 nprobe=3 (fixed)"
    tuned_nprobe = int(re.search(r"nprobe=(\d+)", random_rows[1][2]).group(1))
    assert tuned_nprobe > 3 and float(random_rows[1][5]) >= float(random_rows[2][5])
    service = table_rows(printed, "query")
    assert [row[:6] for row in service] == [
        [kind, "40", "2", "4", "0", "0"] for kind in ("text", "image")
    ]
