"""Experience replay (ER) with a reservoir buffer (Chaudhry et al. 2019, "On Tiny Episodic
Memories in Continual Learning"; reservoir sampling: Vitter 1985, algorithm R).

The buffer holds at most `buffer_size` past training items, a uniform random sample of every
item seen so far: after task t, each training item of tasks 0..t is in it with the same
probability, min(1, buffer_size / items seen), whichever task it came from.

What is stored is a reference per item, ``(task, index, label)``: the task index, the item's
index in that task's stream data (`run.stream_data(task)`) and its stream label, never the
image. The buffer is therefore a few kilobytes, checkpoints as one tensor, and is the same on
every rank: its random draws are seeded by the run's seed and the position in the stream where
a task's items start, which is fixed by the task index.

Training on task t uses the task's data plus a replay part of the same length, so a batch is
about half new, half replayed items, as in ER's usual recipe of one memory batch per stream
batch. The replay part cycles through the buffer in a seeded random order: with n task items
and m stored ones, m <= n, each stored item is replayed floor(n / m) or ceil(n / m) times (the
buffer is oversampled); with m > n a seeded random n of them are replayed during that task.
The engine shuffles the concatenation, so the half-and-half split holds per batch on average,
not exactly.

On an instruction stream (`mmcl.continual.instructions`, a LLaVA-style bridge) the items are
``(image, Conversation)``: the buffer refers to past conversations (label 0, there are no
classes), and a replayed one is encoded through the chat template and trained with the LM
loss on its answers like the new task's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset

from mmcl.continual.methods.base import Method


class ReservoirBuffer:
    """A uniform sample of at most `capacity` references from a stream, by reservoir sampling.

    Items are ``(task, index, label)`` triples of ints. The n-th item offered (counting from
    0) fills a free slot while there is one; afterwards it replaces slot j, for j drawn
    uniformly from 0..n, when j < capacity. Each call to `add` draws from its own generator,
    seeded by `seed` and the number of items seen before it, so the contents depend only on
    the seed and the calls made, and a buffer restored from `state_dict` continues exactly.

    >>> buffer = ReservoirBuffer(3, seed=0)
    >>> buffer.add([(0, i, i % 2) for i in range(5)])
    [0, 1, 2, -1, 1]
    >>> _ = buffer.add([(0, i, i % 2) for i in range(5, 10)])
    >>> len(buffer), buffer.seen
    (3, 10)
    """

    def __init__(self, capacity: int, seed: int = 0):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"a reservoir buffer needs a capacity of at least 1, got {capacity}")
        self.capacity = capacity
        self.seed = int(seed)
        self.seen = 0
        self.items: list[tuple[int, int, int]] = []

    def __len__(self) -> int:
        return len(self.items)

    def add(self, items: Iterable[Sequence[int]]) -> list[int]:
        """Offers `items` in order; returns the slot each one went to, -1 where it was not kept
        (a later item of the same call may still overwrite an earlier one's slot)."""
        items = [_reference(item) for item in items]
        if not items:
            return []
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.seen) % 2**63)
        # One draw per item, j_n uniform in 0..n: a 62-bit random integer modulo n + 1 (its
        # bias, below (n + 1) / 2**62, is far beneath anything a test or a run could see).
        bound = torch.arange(self.seen + 1, self.seen + len(items) + 1)
        slots = (torch.randint(2**62, (len(items),), generator=generator) % bound).tolist()
        placed = []
        for item, slot in zip(items, slots, strict=True):
            if len(self.items) < self.capacity:
                placed.append(len(self.items))
                self.items.append(item)
            elif slot < self.capacity:
                placed.append(slot)
                self.items[slot] = item
            else:
                placed.append(-1)
            self.seen += 1
        return placed

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "seed": self.seed,
            "seen": self.seen,
            "items": torch.tensor(self.items, dtype=torch.long).reshape(-1, 3),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(
                f"the saved buffer holds up to {state['capacity']} items, this one "
                f"{self.capacity}: resume with the same buffer size"
            )
        self.seed = int(state["seed"])
        self.seen = int(state["seen"])
        self.items = [_reference(row) for row in state["items"].tolist()]

    def __repr__(self) -> str:
        return f"ReservoirBuffer({len(self)}/{self.capacity}, seen={self.seen})"


class ReplayItems(Dataset):
    """Past training items by reference: item k is ``run.stream_data(task)[index]`` for
    ``references[k] = (task, index)``, with stream labels (``targets`` without loading)."""

    def __init__(self, run, references: Sequence[Sequence[int]], labels: Sequence[int]):
        if len(references) != len(labels):
            raise ValueError(f"{len(references)} references but {len(labels)} labels")
        self.references = [(int(task), int(index)) for task, index in references]
        self.targets = [int(label) for label in labels]
        self._tasks = {task: run.stream_data(task) for task in {t for t, _ in self.references}}

    def __len__(self) -> int:
        return len(self.references)

    def __getitem__(self, k: int):
        task, index = self.references[k]
        return self._tasks[task][index]


class ExperienceReplay(Method):
    name = "er"
    mixes_past_data = True
    takes_captions = True
    takes_instructions = True

    def __init__(self, buffer_size: int = 500):
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int):
            raise ValueError(f"er: buffer_size must be an integer, got {buffer_size!r}")
        if buffer_size < 1:
            raise ValueError(f"er: buffer_size must be at least 1, got {buffer_size}")
        self.buffer_size = buffer_size
        self.buffer = ReservoirBuffer(buffer_size)

    def setup(self, model, run) -> None:
        # A fresh buffer seeded by the run; a resumed run loads the saved one after this.
        self.buffer = ReservoirBuffer(self.buffer_size, seed=run.config.seed)

    def train_data(self, task, run) -> Dataset:
        current = run.stream_data(task.index)
        if not len(self.buffer):
            return current
        generator = torch.Generator().manual_seed(run.config.seed * 1_000_003 + task.index)
        order = torch.randperm(len(self.buffer), generator=generator).tolist()
        picks = [self.buffer.items[order[k % len(order)]] for k in range(len(current))]
        replay = ReplayItems(run, [(t, i) for t, i, _ in picks], [y for _, _, y in picks])
        return ConcatDataset([current, replay])

    def after_task(self, task, model, run) -> None:
        data = run.stream_data(task.index)
        labels = [0] * len(data) if getattr(run, "instructions", False) else data.targets
        self.buffer.add((task.index, index, label) for index, label in enumerate(labels))

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])

    def __repr__(self) -> str:
        return f"ExperienceReplay(buffer_size={self.buffer_size})"


def _reference(item: Sequence[int]) -> tuple[int, int, int]:
    if len(item) != 3:
        raise ValueError(f"a buffer item is (task, index, label), got {item!r}")
    return int(item[0]), int(item[1]), int(item[2])
