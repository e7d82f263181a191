"""Where a shard stream resumes: how far each DataLoader worker had got, from a sample or
batch count.

The position in an epoch is how many samples (or batches) this rank's training loop has taken
from the DataLoader; the loop counts them, since workers run in other processes. For an
IterableDataset, DataLoader takes batches from its workers in turn, 0, 1, ..., k-1, 0, 1, ...
(skipping workers that have run out), and each worker batches its own samples, so all batches
are full except each worker's last. `worker_progress` replays that schedule to find how many
samples each worker had handed over and which worker was due next. A new DataLoader asks
worker 0 first, so on resume worker i takes over the shards of the worker that was due i-th,
skips (reads but does not decode) the samples that worker had handed over, and the batches
continue exactly where they stopped. This holds for the DataLoader that `ShardStream.loader`
builds: ``drop_last=False``, ``in_order=True``, no persistent workers, and the same
``batch_size`` and ``num_workers`` before and after the resume. With ``num_workers > 1`` the
replay needs each worker's sample count: `count_shard_samples` counts it from the tar headers
of local shards (no image data is read).
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import webdataset as wds

__all__ = ["count_shard_samples", "worker_progress"]

# Keys webdataset's tar iterator skips (its default `skip_meta`); counting must skip them too.
_WDS_SKIP_META = re.compile(r"__[^/]*__($|/)")


def worker_progress(
    worker_sizes: Sequence[int],
    batch_size: int,
    *,
    samples: int | None = None,
    batches: int | None = None,
) -> tuple[list[int], int]:
    """How far each DataLoader worker had got once the loop took `samples` samples (or
    `batches` batches) of the epoch: the samples each had handed over, and the worker that
    DataLoader would have asked for the next batch.

    Replays DataLoader's order for an IterableDataset: one batch from each worker in turn,
    skipping workers that have run out; each worker's batches are full but its last.

    >>> worker_progress([5, 2], batch_size=2, batches=3)  # w0: 2, w1: 2, w0: 2; next w1
    ([4, 2], 1)
    >>> worker_progress([5, 2], batch_size=2, samples=7)  # ... then w0: 1 (its last)
    ([5, 2], 1)
    """
    if (samples is None) == (batches is None):
        raise TypeError("give exactly one of samples and batches")
    num_workers = len(worker_sizes)
    delivered = [0] * num_workers
    taken_samples = taken_batches = next_worker = 0

    def reached() -> bool:
        return taken_samples == samples if samples is not None else taken_batches == batches

    while not reached():
        progressed = False
        for worker, size in enumerate(worker_sizes):
            batch = min(batch_size, size - delivered[worker])
            if batch <= 0:
                continue
            if samples is not None and taken_samples + batch > samples:
                raise ValueError(
                    f"{samples} samples consumed is not at a batch boundary (batch_size="
                    f"{batch_size}, workers' samples {list(worker_sizes)}): resume with the "
                    "same batch_size and num_workers as before"
                )
            delivered[worker] += batch
            taken_samples += batch
            taken_batches += 1
            next_worker = (worker + 1) % num_workers
            progressed = True
            if reached():
                break
        if not progressed:
            raise ValueError(
                f"resume position {samples if samples is not None else batches} "
                f"{'samples' if samples is not None else 'batches'} is past the end of the "
                f"epoch ({taken_samples} samples in {taken_batches} batches on this rank)"
            )
    return delivered, next_worker


def count_shard_samples(url: str) -> int:
    """Samples in a local tar shard, counted as webdataset groups them, from headers only."""
    path = Path(url.removeprefix("file:"))
    if not path.is_file():
        raise ValueError(
            f"{url}: resuming mid-epoch with several workers counts the samples of each shard, "
            "which needs local shard files"
        )
    stat = path.stat()
    return _count_samples(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


# Shards do not change during a run; the size and mtime in the key catch rewritten ones.
_sample_counts: dict[tuple[str, int, int], int] = {}


def _count_samples(path: str, size: int, mtime_ns: int) -> int:
    key = (path, size, mtime_ns)
    if key not in _sample_counts:
        # Random-access mode reads each header and seeks over the file's data.
        with tarfile.open(path, mode="r:") as tar:
            names = [member.name for member in tar if member.isreg()]
        _sample_counts[key] = _count_keys(names)
    return _sample_counts[key]


def _count_keys(names: Iterable[str]) -> int:
    """Samples webdataset's `group_by_keys` makes of these tar member names, in order."""
    tariterators = wds.tariterators
    count, current = 0, None
    for name in names:
        is_meta = "/" not in name and name.startswith(tariterators.meta_prefix)
        if is_meta and name.endswith(tariterators.meta_suffix) or _WDS_SKIP_META.match(name):
            continue
        key, _ = tariterators.base_plus_ext(name)
        if key is None:
            continue
        if key != current:
            count, current = count + 1, key
    return count
