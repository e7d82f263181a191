"""WebDataset tar shards as a stream of image-caption pairs that resumes at the exact sample.

A shard is a tar file of samples: files sharing a key (``000017.jpg`` + ``000017.txt``) form one
sample, with an image (``.jpg``, ``.jpeg``, ``.png`` or ``.webp``) and either a caption
(``.txt``) or a class index (``.cls``). Tars are read with webdataset's tar iterators
and decoded by `mmcl.data.shards_decode`; `write_shards` (`mmcl.data.shards_write`)
writes them. The names of those modules can be imported from here.

Which reader gets which shard. Each epoch the shard list is put in a fixed order (shuffled by
``(seed, epoch)`` when ``shuffle_shards``); shard ``i`` of that order goes to rank
``i % world_size``, and the ``j``-th shard of a rank goes to its DataLoader worker
``j % num_workers``. Every sample is thus read once per epoch by exactly one (rank, worker).
There must be at least ``world_size * num_workers`` shards (a worker without shards is an
error, not a silent no-op). Ranks get whole shards, so their sample counts differ unless the
shards are the same size: a DDP loop should stop every rank after the same number of steps.

Exact resume. The training loop counts the samples (or batches) it has taken (`advance`);
from that count the stream works out where each DataLoader worker had got and continues
right after, with nothing repeated or skipped (`mmcl.data.shards_resume` explains how).
This holds for the DataLoader that `ShardStream.loader` builds, with the same ``batch_size``
and ``num_workers`` before and after the resume.

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

import itertools
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmcl.data.captions import collate_pairs
from mmcl.data.shards_decode import SHARD_IMAGE_EXTENSIONS, SampleDecoder
from mmcl.data.shards_resume import count_shard_samples, worker_progress
from mmcl.data.shards_write import image_caption_samples, write_shards

__all__ = [
    "SHARD_IMAGE_EXTENSIONS",
    "ShardStream",
    "count_shard_samples",
    "expand_shard_urls",
    "image_caption_samples",
    "worker_progress",
    "write_shards",
]

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
        decode = SampleDecoder(self.transform, self.tokenizer, self.classnames, self.templates)
        # Skipped samples are still read (a tar stream has no index) but not decoded.
        for sample in itertools.islice(samples, skip, None):
            yield decode(sample)


def _too_few_shards(num_shards: int, world_size: int, num_workers: int) -> str:
    return (
        f"{num_shards} shards cannot feed {world_size} rank(s) x {num_workers} DataLoader "
        "worker(s): each needs at least one shard; use fewer workers or more, smaller shards"
    )


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
