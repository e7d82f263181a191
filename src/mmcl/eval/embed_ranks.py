"""`Ranks`: the processes of a torchrun job that embed one image folder together, and the
steps they take in lockstep so that they all agree on success or failure.

Every step is a collective on a gloo group of its own (CPU objects, whatever the backend of
the job's group), preceded by `monitored_barrier`, so that a rank that stops answering is
named and the others give up after `timeout` seconds instead of waiting forever. A rank
that dies closes its connections, and the others stop at once. Without a process group
(a plain `mmcl embed`) a step is a plain call.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")


class RankFailedError(RuntimeError):
    """Another rank failed, or stopped answering, during a step of the job."""


class Ranks:
    """This process's place in the job: `rank`, `size`, and the steps taken together.

    `hint` ends every error about another rank (what the user can do next).

    >>> with Ranks(timeout=60) as ranks:  # no process group: one rank
    ...     ranks.rank, ranks.size, ranks.each("adding", lambda: 1 + 1)
    (0, 1, 2)
    """

    def __init__(self, timeout: float, hint: str = ""):
        if timeout <= 0:
            raise ValueError(f"the ranks' timeout must be positive, got {timeout}")
        distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if distributed else 0
        self.size = dist.get_world_size() if distributed else 1
        self.timeout = timeout
        self.hint = hint
        self.group = None
        if self.size > 1:
            self.group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout))

    def __enter__(self) -> Ranks:
        return self

    def __exit__(self, *exc) -> None:
        if self.group is not None:  # this object's own group, not the job's
            dist.destroy_process_group(self.group)
            self.group = None

    def each(self, step: str, work: Callable[[], T]) -> T:
        """Every rank runs `work`; then all learn whether every rank succeeded.

        A rank whose `work` raised raises its own error again; the others raise
        `RankFailedError` naming it and its message.
        """
        if self.size == 1:
            return work()
        try:
            value, failure = work(), None
        except Exception as error:
            value, failure = None, error
        failures = self._all_gather(step, None if failure is None else _describe(failure))
        if failure is not None:
            raise failure
        self._raise_failures(step, failures)
        return value

    def first(self, step: str, work: Callable[[], T]) -> T:
        """Rank 0 runs `work`; every rank returns its result, or raises its error."""
        if self.size == 1:
            return work()
        value, failure = None, None
        if self.rank == 0:
            try:
                value = work()
            except Exception as error:
                failure = error
        outcome = [value, None if failure is None else _describe(failure)]
        self._call(step, dist.broadcast_object_list, outcome, src=0, group=self.group)
        if failure is not None:
            raise failure
        self._raise_failures(step, [outcome[1]])
        return outcome[0]

    def gather(self, step: str, value: Any) -> list:
        """Every rank's `value`, in rank order, on every rank."""
        if self.size == 1:
            return [value]
        return self._all_gather(step, value)

    def _all_gather(self, step: str, value: Any) -> list:
        values = [None] * self.size
        self._call(step, dist.all_gather_object, values, value, group=self.group)
        return values

    def _call(self, step: str, collective: Callable, *args, **kwargs) -> None:
        try:
            # Rank 0 names the ranks that did not arrive in time; the collective then moves
            # only small pickled objects.
            wait = datetime.timedelta(seconds=self.timeout)  # not the group's: PyTorch's default
            dist.monitored_barrier(self.group, timeout=wait, wait_all_ranks=True)
            collective(*args, **kwargs)
        except RuntimeError as error:  # gloo's timeouts and lost connections
            raise RankFailedError(
                f"rank {self.rank} of {self.size}: lost the other ranks at {step}: a rank died, "
                f"or did not arrive within {self.timeout:g} s ({_first_line(error)}).{self.hint}"
            ) from None

    def _raise_failures(self, step: str, failures: list) -> None:
        failed = [(rank, message) for rank, message in enumerate(failures) if message]
        if failed:
            rank, message = failed[0]
            others = f" (and {len(failed) - 1} more rank(s))" if len(failed) > 1 else ""
            raise RankFailedError(
                f"rank {rank} failed at {step}{others}: {message.rstrip('.')}.{self.hint}"
            )


def check_same_job(ranks: Ranks, manifest: dict) -> None:
    """Every rank must see the same files, model and settings as rank 0."""
    manifests = ranks.gather("comparing the ranks' jobs", json.dumps(manifest, default=str))
    for rank, found in enumerate(manifests):
        if found != manifests[0]:
            theirs, first = json.loads(found), json.loads(manifests[0])
            keys = [key for key in first if theirs.get(key) != first[key]]
            raise ValueError(
                f"rank {rank} sees another job than rank 0 ({', '.join(keys)} differ): every "
                f"rank must see the same image files under the same paths (a filesystem that "
                f"every node shares), the same checkpoint (without one, each rank draws its own random "
                f"weights) and the same settings"
            )


def check_visible(folder: Path) -> None:
    if not (folder / "manifest.json").is_file():
        raise ValueError(
            f"{folder}, made by rank 0, is not there on this rank's machine: --output must be "
            f"on a filesystem that every node shares"
        )


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
