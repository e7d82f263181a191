"""Shared by the benchmarks: the machine's own matmul peak, interleaved timing and a table
printer."""

from __future__ import annotations

import platform
import statistics
import time

import torch

from mmcl.io.tables import print_table  # noqa: F401  (the benchmarks' tables)


def matmul_peak_gflops(
    dtype: torch.dtype, size: int = 2048, repeats: int = 10, device: str = "cpu"
) -> float:
    """Best observed GFLOP/s of a square matmul: the ceiling the models are measured against."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b  # warm-up (and AMX/oneDNN kernel selection)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def timed(calls: dict, warmup: int, repeats: int, clock=time.perf_counter) -> dict:
    """key -> (median seconds, last output); the calls take turns, repeat by repeat, so a
    change in the machine's load touches them all alike. `clock`: wall-clock time by default
    (`time.process_time`, this process's CPU time, is steadier on a shared machine when torch
    runs one thread)."""
    times, outputs = {key: [] for key in calls}, {}
    for key, call in calls.items():
        for _ in range(warmup):
            outputs[key] = call()
    for _ in range(repeats):
        for key, call in calls.items():
            start = clock()
            outputs[key] = call()
            times[key].append(clock() - start)
    return {key: (statistics.median(times[key]), outputs[key]) for key in calls}


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings cover it (no-op on CPUs)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def machine_line() -> str:
    flags = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
    features = [f for f in ("amx_bf16", "avx512_bf16", "avx512f") if f in flags]
    return (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, CPU features: {', '.join(features) or 'none of AMX/AVX-512'}"
    )
