"""`benchmarks/captioning.py --quick`: the benchmark runs, and what it compares is the same
function (correctness only; no timing is asserted)."""

from __future__ import annotations

import json

from benchmark_scripts import import_benchmark


def test_quick_captioning_benchmark_greedy_tokens_and_losses_equal_huggingface(tmp_path):
    captioning = import_benchmark("captioning")
    output = tmp_path / "captioning.json"
    captioning.main(
        ["--quick", "--warmup", "0", "--repeats", "1", "--clock", "cpu", "--json", str(output)]
    )
    rows = json.loads(output.read_text())["rows"]
    assert {(r["task"], r["library"], r["precision"]) for r in rows} >= {
        (task, library, precision)
        for task in ("greedy", "beam 3")
        for library in ("hf", "mmcl", "mmcl plain")
        for precision in ("fp32", "bf16")
    }
    greedy = [r for r in rows if r["task"] == "greedy" and r["precision"] == "fp32"]
    assert all(r["same"] == 1.0 and r["length"] >= 1 for r in greedy)
    losses = {(r["library"], r["precision"]): r["loss"] for r in rows if r["task"] == "train step"}
    assert abs(losses[("mmcl", "fp32")] - losses[("hf", "fp32")]) < 1e-4


def test_quick_captioning_benchmark_with_end_bias_rows_end_early_and_equal_huggingface(tmp_path):
    """A raised [SEP] logit ends captions before the limit (8 new tokens in --quick): the rows
    that finish early still equal Hugging Face's, token for token, in fp32 greedy."""
    captioning = import_benchmark("captioning")
    output = tmp_path / "captioning.json"
    argv = ["--quick", "--warmup", "0", "--repeats", "1", "--end-bias", "0.5", "--json"]
    captioning.main([*argv, str(output)])
    payload = json.loads(output.read_text())
    assert payload["end_bias"] == 0.5
    greedy = [r for r in payload["rows"] if r["task"] == "greedy" and r["precision"] == "fp32"]
    assert all(r["same"] == 1.0 and r["length"] < 8 for r in greedy)
