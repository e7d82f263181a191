"""Throughput mode for CPU inference: a batch split into parts encoded side by side.

One forward pass over a batch of 32 spreads each operation over all intra-op threads, and the
operations that do little work per call (LayerNorm, attention over 50 tokens, the small
matmuls of the last blocks) then spend much of their time starting and joining threads. Two
half-batches run at once, each on its own thread with its share of the cores, keep every core
busy inside large single-threaded kernels instead, so a batch of a few dozen images is
encoded in less time. This is the "throughput mode" of CPU inference runtimes (e.g. Intel's
multi-stream module); latency of a single small batch is better served by the plain call.

`in_streams(fn, batch, streams)` runs ``fn`` on ``batch.tensor_split(streams)`` concurrently and
concatenates the results. Each part runs on a worker thread whose intra-op thread count is its
share of the caller's (with OpenMP, PyTorch's thread count is per thread), so the result
equals, bit for bit, calling ``fn`` on each part in turn at that thread count. Workers are kept
for the next call. Only inference is split: the call is made as it is when gradients are being
recorded, under autocast, for tensors that are not on the CPU, inside a stream (a nested call
would wait on workers that are busy running its caller), and with a single stream: the number
of streams is capped by the batch's items and by the caller's intra-op threads, so a process
limited to one thread keeps to one.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["in_streams", "threads_per_stream"]

_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
_worker = threading.local()  # .active: this thread runs a stream


def threads_per_stream(streams: int) -> int:
    """Each stream's share of the caller's intra-op threads (at least one)."""
    return max(1, torch.get_num_threads() // streams)


def in_streams(
    fn: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, streams: int = 2
) -> torch.Tensor:
    """``torch.cat([fn(part) for part in batch.tensor_split(streams)])``, the parts at once.

    >>> double = lambda x: 2 * x
    >>> in_streams(double, torch.arange(5.0), streams=2)
    tensor([0., 2., 4., 6., 8.])
    """
    if isinstance(streams, bool) or not isinstance(streams, int) or streams < 1:
        raise ValueError(f"streams must be an integer >= 1, got {streams!r}")
    # No more streams than items, nor than the caller's threads (the workers' threads are its).
    streams = min(streams, len(batch), torch.get_num_threads())
    if streams <= 1 or not _splittable(batch):
        return fn(batch)
    parts = batch.tensor_split(streams)
    inference = torch.is_inference_mode_enabled()
    pool = _pool(streams, threads_per_stream(streams))
    futures = [pool.submit(_run, fn, part, inference) for part in parts]
    # Every part finishes before anything is returned or raised: no part may still be using
    # the model when the caller goes on (say, after catching one part's error).
    concurrent.futures.wait(futures)
    return torch.cat([future.result() for future in futures])


def _splittable(batch: torch.Tensor) -> bool:
    # Grad mode, inference mode and autocast are per thread: only the first is carried over.
    # Recording gradients across threads or autocast's dtype choices stay with the plain call.
    return (
        batch.device.type == "cpu"
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not getattr(_worker, "active", False)
    )


def _run(fn, part: torch.Tensor, inference: bool) -> torch.Tensor:
    with torch.inference_mode(inference), torch.no_grad():
        return fn(part)


def _pool(streams: int, threads: int) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get((streams, threads))
        if pool is None:
            pool = ThreadPoolExecutor(
                max_workers=streams,
                thread_name_prefix=f"mmcl-stream-{threads}t",
                initializer=_start_worker,
                initargs=(threads,),
            )
            # `torch.set_num_threads` in a worker also changes the count that threads started
            # later begin with: start every worker now (they meet at a barrier), then give
            # that default back the caller's count. The workers keep their own.
            callers = torch.get_num_threads()
            barrier = threading.Barrier(streams)
            concurrent.futures.wait([pool.submit(barrier.wait) for _ in range(streams)])
            torch.set_num_threads(callers)
            _pools[(streams, threads)] = pool
        return pool


def _start_worker(threads: int) -> None:
    _worker.active = True
    torch.set_num_threads(threads)
    torch.get_num_threads()  # settles this thread's count before the default is given back
