"""`benchmarks/generative_routing.py` on a --quick run of the benchmark: what it measures
agrees with what the runs recorded (the base model gives the starting general ability, the
routed or complete model the last), choices count every item, router weights sum to 1."""

from __future__ import annotations

from benchmark_scripts import import_benchmark


def test_routing_analysis_agrees_with_the_runs_it_reads(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCL_CACHE", str(tmp_path / "cache"))
    generative = import_benchmark("continual_generative")
    routing = import_benchmark("generative_routing")
    runs = tmp_path / "runs"
    methods = "task_lora,moe_lora,o_lora"
    generative.main(
        ["--quick", "--streams", "instructions", "--methods", methods, "--output", str(runs)]
    )
    results = routing.main(["--runs", str(runs / "instructions"), "--json", str(tmp_path / "r")])
    assert list(results) == ["task_lora", "moe_lora", "o_lora"]
    for name, result in results.items():
        start, last = result["general_after_task"][0], result["general_after_task"][-1]
        assert len(result["general_after_task"]) == 3  # the start and 2 tasks (--quick)
        base, routed = {
            "task_lora": ("base", "routed"),
            "moe_lora": ("experts off", "experts on"),
            "o_lora": ("base", "LoRA 0..1"),
        }[name]
        assert result["scores"][base] == start, name
        assert result["scores"][routed] == last, name
    task_lora = results["task_lora"]
    # --quick: 2 items a general set and a task; every item chosen once (a task or "base").
    assert all(sum(c.values()) == 2 for c in task_lora["choices"].values())
    assert set(task_lora["scores"]) == {"routed", "base", "LoRA 0", "LoRA 1"}
    assert all(abs(sum(g) - 1) < 1e-5 for g in results["moe_lora"]["gates"].values())
    assert list(results["o_lora"]["scores"]) == ["base", "LoRA 0..0", "LoRA 0..1"]
