"""benchmarks/serve.py's load test against the app on a loopback port: concurrent text and
image searches all answered, none wrong (each checked against numpy's ranking), none failed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from mmcl.serve.app import create_app
from mmcl.serve.background import serve_in_background
from served_index import shared_served_index

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "serve.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("serve_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return shared_served_index(tmp_path_factory)  # read only: built once a session


def test_concurrent_searches_are_all_answered_right_with_no_errors(served):
    benchmark = load_benchmark()
    queries = benchmark.text_queries(24) + [{"image": path} for path in served.images] * 2
    texts = [query["text"] for query in queries[:24]]
    expected = {
        text: ranking[:3]
        for text, (ranking, _) in zip(texts, served.text_rankings(texts), strict=True)
    }
    for row, path in enumerate(served.images):
        expected[str(path)] = served.image_ranking(row)[0][:3]

    def check(query, answer):
        found = [hit["path"] for hit in answer["results"]]
        want = expected[query.get("text") or str(query["image"])]
        return None if found == want else f"{query}: {found}, numpy ranks {want}"

    with serve_in_background(create_app(served.folder, served.model)) as url:
        report = benchmark.load_test(url, queries, concurrency=6, duration=20, k=3, check=check)
    assert report.errors == []
    assert (len(report.latencies), report.not_started) == (36, 0)
    assert 0 < report.percentile(0.5) <= report.percentile(0.95) <= max(report.latencies)
