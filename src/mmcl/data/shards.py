"""WebDataset tar shards as a stream of image-caption pairs that resumes at the exact sample.

A shard is a tar file of samples: files sharing a key (``000017.jpg`` + ``000017.txt``) form one
sample, with an image (``.jpg``, ``.jpeg``, ``.png`` or ``.webp``) and either a caption
(``.txt``) or a class index (``.cls``). Tars are read with webdataset's tar iterators;
`write_shards` writes them.

Which reader gets which shard. Each epoch the shard list is put in a fixed order (shuffled by
``(seed, epoch)`` when ``shuffle_shards``); shard ``i`` of that order goes to rank
``i % world_size``, and the ``j``-th shard of a rank goes to its DataLoader worker
``j % num_workers``. Every sample is thus read once per epoch by exactly one (rank, worker).
There must be at least ``world_size * num_workers`` shards (a worker without shards is an
error, not a silent no-op). Ranks get whole shards, so their sample counts differ unless the
shards are the same size: a DDP loop should stop every rank after the same number of steps.

Exact resume. The position in an epoch is how many samples (or batches) this rank's training
loop has taken from the DataLoader; the loop counts them, since workers run in other processes.
For an IterableDataset, DataLoader takes batches from its workers in turn, 0, 1, ..., k-1, 0,
1, ... (skipping workers that have run out), and each worker batches its own samples, so all
batches are full except each worker's last. `worker_progress` replays that schedule to find
how many samples each worker had handed over and which worker was due next. A new DataLoader
asks worker 0 first, so on resume worker i takes over the shards of the worker that was due
i-th, skips (reads but does not decode) the samples that worker had handed over, and the
batches continue exactly where they stopped. This holds for the DataLoader that
`ShardStream.loader` builds: ``drop_last=False``, ``in_order=True``, no persistent workers,
and the same ``batch_size`` and ``num_workers`` before and after the resume. With
``num_workers > 1`` the replay needs each worker's sample count: when resuming mid-epoch it is
counted from the tar headers of this rank's local shards (no image data is read).

A training loop::

    stream = ShardStream("shards/shard-{000000..000099}.tar", transform, tokenize,
                         rank=rank, world_size=world_size, batch_size=256, num_workers=8)
    loader = stream.loader(pin_memory=True)
    if checkpoint:
        stream.load_state_dict(checkpoint["data"])   # or stream.resume_from(epoch, samples)
    for epoch in range(stream.epoch, epochs):
        stream.set_epoch(epoch)          # keeps the resumed position for the resumed epoch
        for images, tokens, dropped in loader:
            stream.advance(len(images) + dropped)    # bad samples still count as consumed
            ...
            save({"data": stream.state_dict(), ...})

In DDP, either save every rank's `state_dict` or, with one checkpoint for all ranks, resume
with ``resume_from(epoch, batches_consumed=steps_in_epoch)``: ranks step in lockstep, so the
number of batches is the same on every rank while the number of samples may not be.
"""

from __future__ import annotations

import io
import itertools
import os
import random
import re
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmcl.data.captions import class_caption, collate_pairs
from mmcl.data.images import ImageReadError
from mmcl.io.atomic import atomic_path

__all__ = [
    "SHARD_IMAGE_EXTENSIONS",
    "ShardStream",
    "count_shard_samples",
    "expand_shard_urls",
    "image_caption_samples",
    "worker_progress",
    "write_shards",
]

SHARD_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

# Keys webdataset's tar iterator skips (its default `skip_meta`); counting must skip them too.
_WDS_SKIP_META = re.compile(r"__[^/]*__($|/)")

# DataLoader options that would change which worker a batch comes from, or keep stale copies
# of the stream in workers across epochs; either would break the resume arithmetic.
_ORDER_BREAKING_OPTIONS = {
    "drop_last": False,
    "in_order": True,
    "persistent_workers": False,
}


def expand_shard_urls(urls: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard URLs from a list or a brace pattern such as ``"data/shard-{000000..000099}.tar"``."""
    if isinstance(urls, str | os.PathLike):
        return list(wds.shardlists.expand_urls(os.fspath(urls)))
    return [os.fspath(url) for url in urls]


class ShardStream(IterableDataset):
    """Image-caption pairs from webdataset tar shards, split over ranks and workers, resumable.

    Items are ``(image, tokens)`` as in `mmcl.data.captions`: ``tokenizer([caption])[0]``, or
    the caption string when `tokenizer` is None. A ``.cls`` sample is captioned from
    `templates` when `classnames` is given (template chosen by a hash of the sample key), and
    is ``(image, class_index)`` otherwise. A bad sample (undecodable image, no image, no
    caption) is ``None``, with a warning naming the shard and key; `collate_pairs` drops and
    counts it.

    `batch_size` and `num_workers` must be those of the DataLoader (`loader()` builds a
    matching one); they are needed to resume mid-epoch. `shuffle_buffer` > 0 also shuffles
    samples (within each worker, across its shards) with a seeded buffer of that many samples;
    it is deterministic, so resuming stays exact. `shard_sizes` (samples per shard, keyed by
    URL or file name, e.g. a ``sizes.json``) saves counting tar headers when resuming.

    >>> stream = ShardStream(["a.tar", "b.tar"], transform=lambda image: image, seed=1)
    >>> stream.shards_for(epoch=0) == stream.shards_for(epoch=0)
    True
    >>> sorted(stream.shards_for(epoch=0, worker_id=0, num_workers=2)
    ...        + stream.shards_for(epoch=0, worker_id=1, num_workers=2))
    ['a.tar', 'b.tar']
    """

    def __init__(
        self,
        urls: str | os.PathLike | Sequence[str | os.PathLike],
        transform: Callable[[Image.Image], Any],
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_shards: bool = True,
        *,
        batch_size: int | None = None,
        num_workers: int | None = None,
        shuffle_buffer: int = 0,
        classnames: Sequence[str] | None = None,
        templates: Sequence[str] = ("a photo of a {}.",),
        shard_sizes: Mapping[str, int] | None = None,
    ):
        self.urls = expand_shard_urls(urls)
        if not self.urls:
            raise ValueError(f"no shards in {urls!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if len(self.urls) < world_size:
            raise ValueError(
                f"{len(self.urls)} shard(s) cannot feed {world_size} ranks: every rank needs at "
                "least one shard; write smaller shards"
            )
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_workers is not None and num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if num_workers and len(self.urls) < world_size * num_workers:
            raise ValueError(_too_few_shards(len(self.urls), world_size, num_workers))
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.transform = transform
        self.tokenizer = tokenizer
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle_shards = shuffle_shards
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.classnames = list(classnames) if classnames is not None else None
        self.templates = list(templates)
        self.shard_sizes = dict(shard_sizes or {})
        # Position within the epoch, as counted by the training loop (see `advance`). Only one
        # unit may be known: after resuming from a sample count the batch count is unknown to
        # this process, and vice versa.
        self.epoch = 0
        self.samples_consumed: int | None = 0
        self.batches_consumed: int | None = 0

    # -- which shards ---------------------------------------------------------------------

    def epoch_shards(self, epoch: int) -> list[str]:
        """All shards in their order for `epoch` (shuffled by ``(seed, epoch)`` if enabled)."""
        order = list(self.urls)
        if self.shuffle_shards:
            # A string seed is hashed with SHA-512, so the order is the same in every process.
            random.Random(f"mmcl-shards:{self.seed}:{epoch}").shuffle(order)
        return order

    def shards_for(self, epoch: int, worker_id: int = 0, num_workers: int = 1) -> list[str]:
        """The shards that worker `worker_id` of `num_workers` on this rank reads in `epoch`."""
        return self._rank_shards(epoch)[worker_id :: max(1, num_workers)]

    def _rank_shards(self, epoch: int) -> list[str]:
        return self.epoch_shards(epoch)[self.rank :: self.world_size]

    # -- position -------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning; a no-op when already at `epoch` (e.g. resumed).

        Call it at the start of every epoch, like `DistributedSampler.set_epoch`; it must be
        called before the DataLoader iterator is created (workers copy the stream then).
        """
        if epoch != self.epoch:
            self.epoch = epoch
            self.samples_consumed = 0
            self.batches_consumed = 0

    def resume_from(
        self,
        epoch: int,
        samples_consumed: int | None = None,
        *,
        batches_consumed: int | None = None,
    ) -> None:
        """Continue `epoch` right after the samples (or batches) this rank's loop already took.

        Give exactly one of `samples_consumed` (this rank's count, bad samples included) and
        `batches_consumed`. The next iteration starts at the following sample, with nothing
        repeated; a position at the end of the epoch delivers nothing (no wrap-around).
        """
        if (samples_consumed is None) == (batches_consumed is None):
            raise TypeError("give exactly one of samples_consumed and batches_consumed")
        for name, value in (("samples", samples_consumed), ("batches", batches_consumed)):
            if value is not None and value < 0:
                raise ValueError(f"{name}_consumed must be >= 0, got {value}")
        self.epoch = epoch
        self.samples_consumed = samples_consumed
        self.batches_consumed = batches_consumed

    def advance(self, num_samples: int) -> None:
        """Record that the loop took one batch of `num_samples` items (kept and dropped)."""
        if self.samples_consumed is not None:
            self.samples_consumed += num_samples
        if self.batches_consumed is not None:
            self.batches_consumed += 1

    def state_dict(self) -> dict[str, Any]:
        """The position (epoch, samples and/or batches consumed) and the layout it depends on."""
        return {
            "epoch": self.epoch,
            "samples_consumed": self.samples_consumed,
            "batches_consumed": self.batches_consumed,
            "rank": self.rank,
            **self._layout(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from `state_dict()`; raises ValueError if the shard layout has changed."""
        mine = self._layout()
        if state.get("samples_consumed") is not None:
            mine["rank"] = self.rank  # a sample count is one rank's own
        changed = {
            key: (state[key], mine[key])
            for key in mine
            if key in state
            and state[key] != mine[key]
            and not (key in ("batch_size", "num_workers") and None in (state[key], mine[key]))
        }
        if changed:
            details = ", ".join(
                f"{key}: saved {old!r}, now {new!r}" for key, (old, new) in changed.items()
            )
            raise ValueError(f"cannot resume the shard stream, its layout changed ({details})")
        if state.get("samples_consumed") is not None:
            self.resume_from(state["epoch"], state["samples_consumed"])
        else:
            self.resume_from(state["epoch"], batches_consumed=state["batches_consumed"])

    def _layout(self) -> dict[str, Any]:
        # Everything that decides which sample comes n-th; the rank is left out on purpose so
        # that one checkpoint's batch count can resume every rank.
        return {
            "num_shards": len(self.urls),
            "world_size": self.world_size,
            "seed": self.seed,
            "shuffle_shards": self.shuffle_shards,
            "shuffle_buffer": self.shuffle_buffer,
            "batch_size": self.batch_size,
            # 0 and 1 workers read alike: one reader per rank.
            "num_workers": None if self.num_workers is None else max(1, self.num_workers),
        }

    # -- reading --------------------------------------------------------------------------

    def loader(self, **dataloader_options: Any) -> DataLoader:
        """A DataLoader over the stream with its `batch_size`, `num_workers` and `collate_pairs`.

        Options that would break exact resuming (drop_last, in_order=False,
        persistent_workers) are refused.
        """
        if self.batch_size is None:
            raise ValueError("set ShardStream(batch_size=...) to build its loader")
        for name, required in _ORDER_BREAKING_OPTIONS.items():
            if name in dataloader_options and dataloader_options[name] != required:
                raise ValueError(f"{name}={dataloader_options[name]!r} would break exact resuming")
        for name in ("batch_size", "num_workers", "shuffle", "sampler", "batch_sampler"):
            if name in dataloader_options:
                raise ValueError(f"{name} is set by the stream, not by loader()")
        dataloader_options.setdefault("collate_fn", collate_pairs)
        return DataLoader(
            self,
            batch_size=self.batch_size,
            num_workers=self.num_workers or 0,
            **dataloader_options,
        )

    def __iter__(self) -> Iterator[tuple[Any, Any] | None]:
        # Snapshot the position now: the loop advances it while this iterator runs.
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.num_workers is not None and max(1, self.num_workers) != num_workers:
            raise ValueError(
                f"the stream was built for num_workers={self.num_workers} but the DataLoader "
                f"runs {num_workers} worker(s); resuming depends on it, so make them equal"
            )
        if len(self.urls) < self.world_size * num_workers:
            raise ValueError(_too_few_shards(len(self.urls), self.world_size, num_workers))
        role, skip = self._resume_role(self.epoch, worker_id, num_workers)
        return self._items(self.epoch, role, num_workers, skip)

    def _resume_role(self, epoch: int, worker_id: int, num_workers: int) -> tuple[int, int]:
        """Which worker of the interrupted run this worker stands in for, and how many of that
        worker's samples were already handed over.

        A new DataLoader asks worker 0 first, while the interrupted one would have asked
        `next_worker` next; so worker i takes over the shards (and the rest of the samples)
        of worker ``(next_worker + i) % num_workers``, which reproduces the batch order.
        """
        samples, batches = self.samples_consumed, self.batches_consumed
        if not samples and not batches:
            return worker_id, 0
        if samples is None and self.batch_size is None:
            raise ValueError("resuming from batches_consumed needs ShardStream(batch_size=...)")
        if num_workers == 1:
            # One worker hands over the rank's samples in order: the position is the count.
            return 0, samples if samples is not None else batches * self.batch_size
        if self.batch_size is None:
            raise ValueError(
                "resuming mid-epoch with several DataLoader workers needs "
                "ShardStream(batch_size=...) to replay the workers' batch order"
            )
        rank_shards = self._rank_shards(epoch)
        sizes = [
            sum(self._shard_size(url) for url in rank_shards[worker::num_workers])
            for worker in range(num_workers)
        ]
        delivered, next_worker = worker_progress(
            sizes, self.batch_size, samples=samples, batches=batches
        )
        role = (next_worker + worker_id) % num_workers
        return role, delivered[role]

    def _shard_size(self, url: str) -> int:
        for key in (url, os.path.basename(url)):
            if key in self.shard_sizes:
                return self.shard_sizes[key]
        return count_shard_samples(url)

    def _items(
        self, epoch: int, worker: int, num_workers: int, skip: int
    ) -> Iterator[tuple[Any, Any] | None]:
        shards = self.shards_for(epoch, worker, num_workers)
        samples: Iterator[dict[str, Any]] = itertools.chain.from_iterable(
            wds.tariterators.tarfile_samples([{"url": url}]) for url in shards
        )
        if self.shuffle_buffer > 0:
            rng = random.Random(
                f"mmcl-samples:{self.seed}:{epoch}:{self.rank}:{worker}:{num_workers}"
            )
            samples = _buffer_shuffle(samples, self.shuffle_buffer, rng)
        # Skipped samples are still read (a tar stream has no index) but not decoded.
        for sample in itertools.islice(samples, skip, None):
            yield self._decode(sample)

    def _decode(self, sample: dict[str, Any]) -> tuple[Any, Any] | None:
        where = f"{sample.get('__url__')}, key {sample['__key__']!r}"
        image_ext = next((ext for ext in SHARD_IMAGE_EXTENSIONS if ext in sample), None)
        if image_ext is None:
            return _skip(f"{where}: no image ({', '.join(SHARD_IMAGE_EXTENSIONS)})")
        target = self._target(sample, where)  # before the image: it is cheap to check
        if target is None:
            return None
        try:
            image = _open_image(sample[image_ext], f"{where}, .{image_ext}")
        except ImageReadError as error:
            return _skip(str(error))
        return self.transform(image), target

    def _target(self, sample: dict[str, Any], where: str) -> Any:
        if "txt" in sample:
            try:
                caption = sample["txt"].decode("utf-8")
            except UnicodeDecodeError:
                return _skip(f"{where}: the .txt caption is not UTF-8")
        elif "cls" in sample:
            try:
                label = int(sample["cls"].decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                return _skip(f"{where}: the .cls class index is not an integer")
            if self.classnames is None:
                return label
            if not 0 <= label < len(self.classnames):
                return _skip(
                    f"{where}: class {label} is not in the {len(self.classnames)} classnames"
                )
            caption = class_caption(
                self.classnames[label], self.templates, zlib.crc32(sample["__key__"].encode())
            )
        else:
            return _skip(f"{where}: no caption (.txt) or class index (.cls)")
        return self.tokenizer([caption])[0] if self.tokenizer is not None else caption


def _too_few_shards(num_shards: int, world_size: int, num_workers: int) -> str:
    return (
        f"{num_shards} shards cannot feed {world_size} rank(s) x {num_workers} DataLoader "
        "worker(s): each needs at least one shard; use fewer workers or more, smaller shards"
    )


def _skip(reason: str) -> None:
    warnings.warn(f"skipping bad sample {reason}", stacklevel=3)
    return None


def _open_image(data: bytes, name: str) -> Image.Image:
    """Decode image bytes fully, so truncated files fail here; errors name the sample."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(name, str(error) or type(error).__name__) from error


def _buffer_shuffle(
    items: Iterable[dict[str, Any]], size: int, rng: random.Random
) -> Iterator[dict[str, Any]]:
    """Shuffle a stream through a buffer of `size` items: each new item evicts a random one."""
    buffer: list[dict[str, Any]] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = rng.randrange(size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


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


# -- writing ------------------------------------------------------------------------------


def write_shards(
    samples: Iterable[Mapping[str, Any]],
    folder: str | Path,
    samples_per_shard: int,
    prefix: str = "shard",
) -> list[Path]:
    """Write samples into ``folder/{prefix}-000000.tar``, ... and return the shard paths.

    A sample maps file extensions to contents: bytes as they are, a str as UTF-8, an int as
    decimal text (for ``cls``), a `Path` as that file's bytes; ``"__key__"`` names the sample
    (default: its running number). Each shard is written to a temporary file and renamed, so
    an interrupted conversion never leaves a truncated shard behind.

    >>> import tempfile
    >>> paths = write_shards([{"txt": "a cat", "cls": 3}], tempfile.mkdtemp(), 100)
    >>> [path.name for path in paths]
    ['shard-000000.tar']
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    folder = Path(folder)
    numbered = enumerate(samples)
    paths = []
    for shard_index in itertools.count():
        chunk = list(itertools.islice(numbered, samples_per_shard))
        if not chunk:
            return paths
        path = folder / f"{prefix}-{shard_index:06d}.tar"
        with atomic_path(path) as tmp, tarfile.open(tmp, mode="w") as tar:
            for number, sample in chunk:
                _add_sample(tar, sample, number)
        paths.append(path)
    return paths


def _add_sample(tar: tarfile.TarFile, sample: Mapping[str, Any], number: int) -> None:
    key = str(sample.get("__key__", f"{number:09d}"))
    if "." in key.rsplit("/", 1)[-1]:
        # webdataset splits a file name at the first dot of its base name: key.extension.
        raise ValueError(f"sample key {key!r} must not contain a dot")
    for extension, value in sample.items():
        if extension.startswith("__"):
            continue
        data = _encode(value)
        info = tarfile.TarInfo(f"{key}.{extension}")
        info.size = len(data)
        info.mode = 0o444  # fixed metadata (mtime 0, no owner): the same samples, the same bytes
        tar.addfile(info, io.BytesIO(data))


def _encode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode("ascii")
    if isinstance(value, Path):
        return value.read_bytes()
    raise TypeError(
        f"cannot store a {type(value).__name__} in a shard: use bytes, str, int or Path"
    )


def image_caption_samples(
    paths: Sequence[str | Path], captions: Sequence[str]
) -> Iterator[dict[str, Any]]:
    """Samples for `write_shards` from image files and their captions, e.g. of a caption table.

    >>> from mmcl.data.captions import CaptionedImages
    >>> data = CaptionedImages("train.csv", transform=None)  # doctest: +SKIP
    >>> write_shards(image_caption_samples(data.paths, data.captions), "shards", 10_000)
    ... # doctest: +SKIP
    """
    if len(paths) != len(captions):
        raise ValueError(f"{len(paths)} image paths but {len(captions)} captions")
    for path, caption in zip(paths, captions, strict=True):
        path = Path(path)
        extension = path.suffix.lower().lstrip(".")
        if extension not in SHARD_IMAGE_EXTENSIONS:
            raise ValueError(f"{path}: shards hold {', '.join(SHARD_IMAGE_EXTENSIONS)} images only")
        yield {extension: path, "txt": caption}
