"""`benchmarks/generation.py --quick`: the benchmark runs, both libraries decode the same
greedy tokens in fp32 for LLaVA and BLIP-2, and a chat's second question runs only its new
positions (correctness only; no timing is asserted)."""

from __future__ import annotations

import json

from benchmark_scripts import import_benchmark


def test_quick_generation_benchmark_gives_huggingface_tokens_and_keeps_the_chat_cache(tmp_path):
    generation = import_benchmark("generation")
    output = tmp_path / "generation.json"
    generation.main(["--quick", "--warmup", "0", "--json", str(output)])
    result = json.loads(output.read_text())
    rows = result["rows"]
    assert {(r["model"], r["precision"], r["library"]) for r in rows} == {
        (model, precision, library)
        for model in ("llava", "blip2")
        for precision in ("fp32", "bf16")
        for library in ("transformers", "mmcl")
    }
    assert all(r["same"] == 1.0 for r in rows if r["precision"] == "fp32")
    chat = {c["chat"]: c["positions"] for c in result["chat"]}
    whole = chat["transformers generate"]
    assert chat["mmcl, cache dropped"] == whole
    assert 0 < chat["mmcl, cache kept"] < whole // 2
