"""`benchmarks/continual_generative.py`: the tables' structure, and the expected-order checks
computed from the measured numbers (hand-worked rows, and a --quick run)."""

from __future__ import annotations

import json
import math

import pytest

from benchmark_scripts import import_benchmark
from mmcl.continual.methods import METHODS


@pytest.fixture(scope="module")
def benchmark():
    continual_generative = import_benchmark("continual_generative")
    return continual_generative


def row(bwt, start=math.nan, last=math.nan):
    return {"backward_transfer": bwt, "general_initial": start, "general_last": last}


def test_checks_say_met_or_not_met_from_the_rows_given(benchmark):
    # Fine-tuning forgets less than o_lora here, er forgets less than fine-tuning, lwf was
    # not run; task_lora lost 0.04 of general ability (within 0.05), o_lora 0.10 (not).
    rows = {
        "frozen": row(0.0),
        "finetune": row(-0.30),
        "er": row(-0.10),
        "task_lora": row(-0.20, 0.50, 0.46),
        "o_lora": row(-0.35, 0.50, 0.40),
    }
    checks = {c["claim"].split(" (")[0]: c["met"] for c in benchmark.expected_order(rows, 0.05)}
    assert checks == {
        "fine-tuning forgets most": False,
        "er forgets less than fine-tuning": True,
        "lwf forgets less than fine-tuning": None,
        "o_lora keeps general ability within 5 points of the start": False,
        "task_lora keeps general ability within 5 points of the start": True,
    }
    rows["o_lora"] = row(-0.25, 0.50, 0.40)  # now fine-tuning's -0.30 is the lowest
    first = benchmark.expected_order(rows, 0.05)[0]
    assert first["met"] is True and first["values"]["finetune"] == -0.30


def test_checks_are_not_met_trivially_when_nothing_was_learnt_or_forgotten(benchmark):
    # A fine-tuning that forgot nothing does not "forget most", even tied with the others;
    # a start of 0 general ability has nothing a LoRA expert could keep.
    rows = {"finetune": row(0.0), "er": row(0.0), "task_lora": row(0.0, 0.0, 0.0)}
    checks = [c["met"] for c in benchmark.expected_order(rows, 0.05)]
    assert checks == [False, False, None, None]


def test_default_methods_are_the_registered_ones_that_take_instructions(benchmark):
    names = benchmark.instruction_methods()
    assert sorted(names) == sorted(n for n, kind in METHODS.items() if kind.takes_instructions)
    assert names[:3] == ["frozen", "finetune", "joint"]


@pytest.mark.slow
def test_quick_run_prints_one_table_a_stream_with_checks_from_its_numbers(
    benchmark, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MMCL_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "table.json"
    methods = ["finetune", "task_lora"]
    arguments = ["--quick", "--methods", ",".join(methods), "--output", str(tmp_path / "runs")]
    benchmark.main([*arguments, "--json", str(output)])
    printed = capsys.readouterr().out
    table = json.loads(output.read_text())
    # Run again into the same folder: the finished runs are read back, not refused or rerun.
    again = benchmark.main(arguments)
    assert json.dumps(again["streams"]) == json.dumps(table["streams"])
    # The starting bridge was pre-trained once into the cache, nothing temporary left there.
    cached = [p.name for p in (tmp_path / "cache" / "pretrained").iterdir()]
    assert len(cached) == 1 and cached[0].startswith("scenes-llava-")
    assert table["bridge"] == str(tmp_path / "cache" / "pretrained" / cached[0])
    assert list(table["streams"]) == ["vqa-functions", "instructions"]
    assert table["streams"]["vqa-functions"]["tasks"] == ["shape", "colour"]
    assert table["streams"]["instructions"]["tasks"] == ["scene-captions", "digit-words"]
    keys = {key for key, _ in benchmark.COLUMNS} | {"seconds"}
    for stream in table["streams"].values():
        assert list(stream["rows"]) == methods
        assert all(set(r) == keys for r in stream["rows"].values())
        for name, r in stream["rows"].items():
            assert 0 <= r["average_accuracy"] <= 1 and r["seconds"] >= 0, name
        # Both start from the same cached bridge, so from the same general ability.
        starts = {r["general_initial"] for r in stream["rows"].values()}
        assert len(starts) == 1
        # The checks, recomputed here from the table's own numbers.
        bwt = {n: r["backward_transfer"] for n, r in stream["rows"].items()}
        checks = {c["claim"].split(" (")[0]: c for c in stream["checks"]}
        forgets_most = checks["fine-tuning forgets most"]
        assert forgets_most["met"] == (bwt["finetune"] <= bwt["task_lora"] and bwt["finetune"] < 0)
        assert checks["er forgets less than fine-tuning"]["met"] is None  # er was not run
        lora = checks["task_lora keeps general ability within 5 points of the start"]
        task_lora = stream["rows"]["task_lora"]
        lost = task_lora["general_initial"] - task_lora["general_last"]
        if task_lora["general_initial"] == 0:  # the tiny bridge may answer nothing at all
            assert lora["met"] is None
        else:
            assert lora["met"] == (lost <= 0.05)
        for check in stream["checks"]:
            verdict = {True: "met", False: "NOT met", None: "not measured"}[check["met"]]
            assert f"{check['claim']}: {verdict} (" in printed
    headers = [line for line in printed.splitlines() if line.startswith("method ")]
    assert len(headers) == 2 and all("General retained" in line for line in headers)
