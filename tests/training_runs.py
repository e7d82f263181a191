"""Training-loop test helpers: a learnable random data set, and a plugin that stops a run at a
given step (a crash, for the resume tests)."""

from __future__ import annotations

import torch

import mmcl
from mmcl.train import TrainingPlugin

WORDS = "red green blue cat dog tree house car boat sun moon star fish bird apple chair".split()


class RandomPairs(torch.utils.data.Dataset):
    """Fixed random images with distinct random captions: a learnable matching problem."""

    def __init__(self, size=32, image_size=32, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(size, 3, image_size, image_size, generator=generator)
        picks = torch.randint(len(WORDS), (size, 3), generator=generator).tolist()
        self.tokens = mmcl.tokenize([" ".join(WORDS[i] for i in row) for row in picks])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], self.tokens[index]


class Stop(Exception):
    """Raised by `StopAfter`: the run stopped as if killed."""


class StopAfter(TrainingPlugin):
    """Raise `Stop` after optimizer step `step` (None: never)."""

    name = "stop"

    def __init__(self, step=None):
        self.stop_step = step

    def after_optimizer_step(self, trainer):
        if trainer.step == self.stop_step:
            raise Stop
