"""Deterministic, resumable sampling for map-style data sets.

The order of an epoch is a function of (seed, epoch) alone, so a run resumed from a checkpoint
sees exactly the batches the uninterrupted run would have seen. Items are keyed by
(epoch, index) so that random augmentation can be seeded per item too (`SeededItems`): the
result then depends neither on worker processes nor on where a run was resumed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (epoch, index) pairs: this rank's share of a seeded permutation, from an offset."""

    def __init__(
        self, length: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1
    ):
        if length < world_size:
            raise ValueError(f"a data set of {length} items cannot feed {world_size} ranks")
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0  # items of this rank's share already consumed in this epoch

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.length // self.world_size - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        # Every rank takes an equal-length strided share, so ranks step in lock-step.
        share = order[self.rank :: self.world_size][: self.length // self.world_size]
        for index in share[self.start :]:
            yield self.epoch, index


class SeededItems(Dataset):
    """Wraps a data set so that each (epoch, index) item draws its randomness from its own seed."""

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        # Seed the CPU generator directly: `torch.manual_seed` also seeds every accelerator and
        # costs about a millisecond per call, more than drawing a small image.
        saved = torch.get_rng_state()
        torch.default_generator.manual_seed((self.seed * 1_000_003 + epoch * 7_919 + index) % 2**63)
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(saved)


class IndexedItems(SeededItems):
    """`SeededItems` that also says which item it is: ``(index, item)`` for key (epoch, index),
    so a batch can carry its items' positions in the data set (DER records logits per item)."""

    def __getitem__(self, key: tuple[int, int]):
        return key[1], super().__getitem__(key)
