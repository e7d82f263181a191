"""`benchmarks/linear_kernel.py` on a small shape: it times every epilogue and F.linear, and
says why where it cannot run (no timing is asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "linear_kernel.py"


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARK), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


@pytest.mark.usefixtures("amx")
def test_it_times_each_epilogue_and_pytorchs_linear():
    result = run("--rows", "40", "--in-features", "64", "--out-features", "96", "--repeats", "4")
    assert result.returncode == 0, result.stderr
    assert "40 rows, 64 -> 96, bias; one thread" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(("mmcl", "F."))]
    names = [" ".join(row[:-3]) for row in rows]
    assert names == [
        "mmcl kernel, none",
        "mmcl kernel, gelu",
        "mmcl kernel, swish",
        "F.linear (oneDNN), none",
    ]
    assert all(float(row[-1].replace(",", "")) > 0 for row in rows)


def test_without_the_kernel_it_says_so():
    result = run("--rows", "4", "--repeats", "1", MMCL_NATIVE_KERNELS="0")
    assert result.returncode == 1
    assert "the AMX linear kernel is not available here" in result.stderr


def test_a_width_the_tiles_cannot_take_is_refused_by_name():
    result = run("--in-features", "48")
    assert result.returncode == 2
    assert "--in-features and --out-features must be multiples of 32" in result.stderr
