"""mmcl's AMX linear kernel alone, one thread: each epilogue against PyTorch's F.linear.

`python benchmarks/linear_kernel.py` times ViT-B/32's first MLP layer at batch 32 (1,600 rows,
768 -> 3,072, with bias), where the epilogue has only 24 k-steps to hide in, with no
activation, the exact GELU and SiLU, and F.linear (oneDNN) without one. The calls take turns
and are timed in CPU time: on a shared machine the ratios hold better than wall-clock figures.
Needs a CPU with AMX (elsewhere the kernel does not run and the script says so).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time

import torch
from _common import machine_line, print_table
from torch.nn import functional as F

from mmcl.nn import kernels


def keep_freed_memory() -> None:
    """Large outputs come from fresh pages on every call unless glibc keeps what it freed; the
    page faults then add a noisy millisecond or more to each call."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: 1 GiB
    libc.mallopt(-1, 1 << 31)  # M_TRIM_THRESHOLD: 2 GiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1600)
    parser.add_argument("--in-features", type=int, default=768)
    parser.add_argument("--out-features", type=int, default=3072)
    parser.add_argument("--repeats", type=int, default=150, help="timed calls of each (median)")
    args = parser.parse_args()
    if args.in_features % 32 or args.out_features % 32:
        parser.error("--in-features and --out-features must be multiples of 32 (AMX tiles)")
    torch.set_num_threads(1)
    if not kernels.build():
        sys.exit("the AMX linear kernel is not available here (no AMX, or MMCL_NATIVE_KERNELS=0)")
    keep_freed_memory()
    generator = torch.Generator().manual_seed(0)
    rows, k, n = args.rows, args.in_features, args.out_features
    x = torch.randn(rows, k, generator=generator).to(torch.bfloat16)
    weight = (k**-0.5 * torch.randn(n, k, generator=generator)).to(torch.bfloat16)
    bias = torch.randn(n, generator=generator).to(torch.bfloat16)
    packed = kernels.pack_linear_weight(weight)
    calls = {
        f"mmcl kernel, {activation}": lambda a=activation: kernels.linear(x, packed, bias, a)
        for activation in ("none", "gelu", "swish")
    }
    calls["F.linear (oneDNN), none"] = lambda: F.linear(x, weight, bias)
    times = {key: [] for key in calls}
    for call in calls.values():
        call()
    order = list(calls)
    for repeat in range(args.repeats):  # turns, each call after each other one in rotation
        for key in order[repeat % len(order) :] + order[: repeat % len(order)]:
            start = time.thread_time()
            calls[key]()
            times[key].append(time.thread_time() - start)
    print(f"machine: {machine_line()}")
    print(f"{rows} rows, {k} -> {n}, bias; one thread, CPU time over {args.repeats} calls each")
    body = []
    for key, seconds in times.items():
        median = statistics.median(seconds)
        low, _, high = statistics.quantiles(seconds, n=4)
        body.append(
            [
                key,
                f"{1e3 * median:.2f}",
                f"{1e3 * low:.2f}-{1e3 * high:.2f}",
                f"{2 * rows * k * n / median / 1e9:,.0f}",
            ]
        )
    print_table(["call", "median ms", "quartiles ms", "GFLOP/s"], body)


if __name__ == "__main__":
    main()
