"""`benchmarks/continual_mini_mtil.py`: the learnability bar and the expected-shape checks,
computed from hand-worked reports."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

import mmcl
from benchmark_scripts import BENCHMARKS, import_benchmark
from mmcl.io.checkpoints.export import save_safetensors


@pytest.fixture(scope="module")
def benchmark():
    continual_mini_mtil = import_benchmark("continual_mini_mtil")
    return continual_mini_mtil


def run(tasks, matrix, initial):
    return {
        "method": "finetune",
        "tasks": tasks,
        "accuracy_matrix": matrix,
        "initial_accuracy": initial,
    }


def verdicts(lines):
    """'claim: met (...)' -> {claim: True}; the first line is the whole bar."""
    out = {}
    for line in lines:
        claim, _, rest = line.strip().partition(": ")
        out[claim.split(" (")[0]] = rest.startswith("met")
    return out


def test_the_bar_is_zero_shot_plus_20_points_and_70_percent_on_digits(benchmark):
    # Diagonal 0.50, 0.69, 0.75; zero-shot 0.30, 0.10, 0.60. cifar10: 0.50 >= 0.30 + 0.20
    # (met at equality); mnist: 0.69 clears zero-shot + 20 (0.30) but not 70%; scene-count:
    # 0.75 < 0.60 + 0.20.
    report = run(
        ["cifar10", "mnist", "scene-count"],
        [[0.50, 0.20, 0.60], [0.40, 0.69, 0.55], [0.35, 0.50, 0.75]],
        [0.30, 0.10, 0.60],
    )
    found = benchmark.just_trained(report)
    expected = {"cifar10": (0.50, 0.30), "mnist": (0.69, 0.10), "scene-count": (0.75, 0.60)}
    assert found.keys() == expected.keys()
    for name, pair in expected.items():
        assert found[name] == pytest.approx(pair)
    lines = benchmark.learnability_checks(report)
    checks = verdicts(lines)
    assert checks["cifar10"] and not checks["mnist"] and not checks["scene-count"]
    assert not checks["fine-tuning learns every task"]
    assert "not: mnist, scene-count" in lines[0]
    assert "bar 70.0" in lines[3] and "bar 80.0" in lines[4]
    assert not checks["on the tasks with room to learn"]


def test_seeds_are_averaged_per_task_name_whatever_the_order(benchmark):
    # Seed 0 trains digits then cifar10, seed 1 the other way round. digits: diagonal 0.8 and
    # 0.6 (mean 0.7, met at 70%); cifar10: 0.5 and 0.3 (mean 0.4) against zero-shot 0.1 and
    # 0.3 (mean 0.2): 0.4 = 0.2 + 0.2, met.
    summary = {
        "runs": {
            0: run(["digits", "cifar10"], [[0.8, 0.0], [0.5, 0.5]], [0.05, 0.1]),
            1: run(["cifar10", "digits"], [[0.3, 0.1], [0.2, 0.6]], [0.3, 0.15]),
        }
    }
    found = benchmark.just_trained(summary)
    assert found["digits"] == pytest.approx((0.7, 0.1))
    assert found["cifar10"] == pytest.approx((0.4, 0.2))
    assert all(verdicts(benchmark.learnability_checks(summary)).values())


def test_an_unreachable_or_undefined_bar_is_not_met(benchmark):
    # Zero-shot 0.9 puts the bar at 110%; a NaN accuracy meets nothing.
    report = run(["scene-colour", "mnist"], [[1.0, 0.1], [0.9, math.nan]], [0.9, 0.1])
    lines = benchmark.learnability_checks(report)
    assert "unreachable" in lines[2] and "bar above 100 on scene-colour" in lines[1]
    assert verdicts(lines) == {
        "fine-tuning learns every task": False,
        "on the tasks with room to learn": False,
        "scene-colour": False,
        "mnist": False,
    }
    # With mnist learnt, the tasks with room meet the bar; the whole bar still does not.
    report["accuracy_matrix"][1][1] = 0.75
    checks = verdicts(benchmark.learnability_checks(report))
    assert checks["on the tasks with room to learn"] and not checks["fine-tuning learns every task"]
    with pytest.raises(ValueError, match="initial"):
        benchmark.just_trained(run(["mnist"], [[0.9]], None))


def metrics(transfer, last, bwt):
    return {"metrics": {"transfer": transfer, "last_accuracy": last, "backward_transfer": bwt}}


def test_shape_checks_say_met_or_not_met(benchmark):
    # zscl: Transfer 0.39 is 2 points under frozen's 0.41 (within), Last 0.45 >= 0.40: met.
    # moe_adapters: Transfer 0.385 is 2.5 points under: not met; Last 0.52 beats frozen's
    # 0.48 by 4 points, not 5. ewc's BWT equals fine-tuning's: not better.
    reports = {
        "frozen": metrics(0.41, 0.48, 0.0),
        "finetune": metrics(0.38, 0.40, -0.20),
        "zscl": metrics(0.39, 0.45, -0.05),
        "moe_adapters": metrics(0.385, 0.52, -0.01),
        "ewc": metrics(0.40, 0.41, -0.20),
    }
    checks = verdicts(benchmark.shape_checks(reports))
    assert checks == {
        "fine-tuning loses Transfer": True,
        "zscl keeps Transfer within 2 points of frozen, Last >= fine-tuning's": True,
        "moe_adapters keeps Transfer within 2 points of frozen, Last >= fine-tuning's": False,
        "moe_adapters' Last beats frozen's by >= 5 points": False,
        "every method beats fine-tuning on BWT": False,
    }
    reports["ewc"] = metrics(0.40, 0.41, -0.19)
    reports["moe_adapters"] = metrics(0.40, 0.53, -0.01)
    assert all(verdicts(benchmark.shape_checks(reports)).values())
    # Without other methods there is nothing to beat fine-tuning on BWT: no such line.
    alone = {name: reports[name] for name in ("frozen", "finetune")}
    assert list(verdicts(benchmark.shape_checks(alone))) == ["fine-tuning loses Transfer"]


def run_benchmark(output, model, data_root, jobs):
    """The benchmark as a user runs it: a tiny budget on the tasks that need no files."""
    argv = [
        sys.executable,
        str(BENCHMARKS / "continual_mini_mtil.py"),
        "--methods=finetune,lwf",
        "--seeds=2",
        "--steps=2",
        "--batch-size=8",
        "--train-size=16",
        "--test-size=8",
        f"--model={model}",
        f"--data-root={data_root}",
        f"--output={output}",
        f"--jobs={jobs}",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def matrices(output):
    found = {}
    for report in sorted(output.glob("*/seed_*/report.json")):
        data = json.loads(report.read_text())
        found[report.parent.relative_to(output).as_posix()] = (
            data["initial_accuracy"],
            data["accuracy_matrix"],
        )
    return found


@pytest.mark.slow
def test_jobs_run_the_same_runs_in_parallel(tmp_path):
    # A random tiny CLIP (no pre-training to wait for); an empty data root leaves CIFAR-10 and
    # MNIST out. Every (method, seed) run is seeded, so running them two at a time in other
    # processes must give the very matrices that running them one after another gives.
    model = mmcl.create_model("tiny-vit", vision_cfg={"image_size": 32, "layers": 1})
    path = save_safetensors(model, tmp_path / "start.safetensors")
    (tmp_path / "empty").mkdir()
    one = run_benchmark(tmp_path / "one", path, tmp_path / "empty", jobs=1)
    two = run_benchmark(tmp_path / "two", path, tmp_path / "empty", jobs=2)
    expected = matrices(tmp_path / "one")
    assert len(expected) == 4  # 2 methods x 2 seeds
    assert matrices(tmp_path / "two") == expected
    # The table over the seeds is printed the same way (times aside).
    table = [line.split("|")[1:5] for line in one.splitlines() if line.startswith("| lwf")]
    assert table == [line.split("|")[1:5] for line in two.splitlines() if line.startswith("| lwf")]
