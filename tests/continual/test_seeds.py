"""Several seeds per method: the mean ± sample std summary (hand-worked) and
`mmcl continual compare --seeds` end to end on a tiny stream."""

import csv
import io
import json
import math

import pytest

from mmcl.cli import main
from mmcl.continual.comparison import comparison_csv
from mmcl.continual.report import compare_table
from mmcl.continual.seeds import aggregate_seeds, mean_and_std, parse_seeds


def _report(last, bwt, seconds, transfer=float("nan")):
    return {
        "method": "finetune",
        "tasks": ["a", "b"],
        "metrics": {"last_accuracy": last, "backward_transfer": bwt, "transfer": transfer},
        "total_seconds": seconds,
    }


def test_the_summary_is_the_mean_and_the_sample_standard_deviation_of_every_metric():
    # Last 0.2, 0.4, 0.9: mean 0.5; deviations -0.3, -0.1, 0.4; squares sum 0.26; / (3 - 1)
    # = 0.13, std sqrt(0.13). BWT -0.1, -0.1, -0.4: mean -0.2; squares 0.01 + 0.01 + 0.04 =
    # 0.06, / 2 = 0.03. Seconds 10, 20, 30: mean 20, std 10.
    summary = aggregate_seeds(
        {0: _report(0.2, -0.1, 10.0), 1: _report(0.4, -0.1, 20.0), 2: _report(0.9, -0.4, 30.0)}
    )
    assert summary["seeds"] == [0, 1, 2]
    assert summary["metrics"]["last_accuracy"] == pytest.approx(0.5)
    assert summary["metrics_std"]["last_accuracy"] == pytest.approx(math.sqrt(0.13))
    assert summary["metrics"]["backward_transfer"] == pytest.approx(-0.2)
    assert summary["metrics_std"]["backward_transfer"] == pytest.approx(math.sqrt(0.03))
    assert (summary["total_seconds"], summary["total_seconds_std"]) == pytest.approx((20.0, 10.0))
    # Transfer is undefined (one task trained before the last) on every seed: stays undefined.
    assert math.isnan(summary["metrics"]["transfer"])


def test_one_seed_has_a_mean_and_no_standard_deviation():
    mean, std = mean_and_std([0.25])
    assert mean == 0.25 and math.isnan(std)
    assert all(math.isnan(v) for v in mean_and_std([0.2, float("nan")]))


def test_the_table_and_the_csv_carry_mean_and_std():
    summary = aggregate_seeds({0: _report(0.2, -0.1, 10.0), 1: _report(0.4, -0.3, 20.0)})
    # Last: mean 0.3, std sqrt(0.02) = 0.1414; BWT: mean -0.2, std 0.1414.
    table = compare_table({"finetune": summary})
    row = next(line for line in table.splitlines() if line.startswith("| finetune"))
    assert "0.3000 ± 0.1414" in row and "-0.2000 ± 0.1414" in row
    assert "15.0 s ± 7.1 s" in row
    rows = list(csv.DictReader(io.StringIO(comparison_csv({"finetune": summary}))))
    assert rows[0]["seeds"] == "0 1"
    assert float(rows[0]["last_accuracy_mean"]) == pytest.approx(0.3)
    assert float(rows[0]["last_accuracy_std"]) == pytest.approx(math.sqrt(0.02))
    assert rows[0]["transfer_mean"] == "" and rows[0]["transfer_std"] == ""


def test_seeds_are_a_count_or_a_list():
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("0,5") == [0, 5]
    for bad in ("0", "a,b", "1,1"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_compare_with_two_seeds_runs_each_method_per_seed_and_shows_mean_and_std(tmp_path, capsys):
    command = [
        "continual",
        "compare",
        "--scenario",
        "scenes-cil",
        "--model",
        "tiny-vit",
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--train-size",
        "16",
        "--test-size",
        "8",
        "--quiet",
        "--methods",
        "frozen",  # no training: the seeds' streams and models, and the summary, are the point
        "--seeds",
        "2",
        "--output-dir",
        str(tmp_path),
    ]
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "sample standard deviation (n - 1) over 2 seeds" in out
    progress = [
        json.loads((tmp_path / "frozen" / f"seed_{s}" / "progress.json").read_text())
        for s in (0, 1)
    ]
    for seed, record in enumerate(progress):
        assert record["settings"]["training"]["seed"] == seed
        assert record["settings"]["scenario_args"]["seed"] == seed
    assert (
        progress[0]["tasks"] != progress[1]["tasks"]
        or progress[0]["initial"] != progress[1]["initial"]
    )  # another class order or another random model
    lasts = [
        json.loads((tmp_path / "frozen" / f"seed_{s}" / "report.json").read_text())["metrics"][
            "last_accuracy"
        ]
        for s in (0, 1)
    ]
    mean, std = sum(lasts) / 2, abs(lasts[0] - lasts[1]) / math.sqrt(2)
    row = next(line for line in out.splitlines() if line.startswith("| frozen"))
    assert f"{mean:.4f} ± {std:.4f}" in row
    assert "±" in (tmp_path / "comparison.md").read_text()
    stamp = (tmp_path / "frozen" / "seed_1" / "report.json").stat().st_mtime_ns
    assert main(command) == 0  # read back, not rerun
    assert (tmp_path / "frozen" / "seed_1" / "report.json").stat().st_mtime_ns == stamp
