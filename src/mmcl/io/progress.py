"""Progress for long work: tqdm's bar on a terminal, a plain line now and then in a log.

tqdm redraws its bar with carriage returns about ten times a second, which fills a log file or
a CI log with frames when stderr is not a terminal. `progress` gives tqdm's bar on a terminal
and otherwise a `LogProgress`, which writes whole lines (tqdm's text without the bar): one at
the start, one at each whole percent but at most every `LINE_SECONDS` seconds (every
`UNSIZED_LINE_SECONDS` without a total), and one at the end.

    for batch in progress(loader, desc="embedding images", unit="batch"):
        ...
    with progress(total=len(paths), desc="embedding images", unit="image") as bar:
        bar.update(len(batch))
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from tqdm.auto import tqdm

__all__ = ["LINE_SECONDS", "UNSIZED_LINE_SECONDS", "LogProgress", "progress"]

LINE_SECONDS = 5.0
UNSIZED_LINE_SECONDS = 30.0


def progress(
    iterable: Iterable | None = None,
    *,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    initial: float = 0,
    disable: bool = False,
    file: IO[str] | None = None,
    **tqdm_options: Any,
):
    """A tqdm bar when `file` (default: stderr) is a terminal (or in a notebook), else a
    `LogProgress`.

    Both iterate over `iterable` and have tqdm's ``update``, ``set_postfix`` and ``close`` and
    work as context managers. `tqdm_options` go to tqdm only. With `disable`, nothing is shown.
    """
    stream = file if file is not None else sys.stderr
    if disable or _is_terminal(stream) or _NOTEBOOK:
        return tqdm(
            iterable,
            total=total,
            desc=desc,
            unit=unit,
            initial=initial,
            disable=disable,
            file=stream,
            **tqdm_options,
        )
    return LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream)


# tqdm.auto's widget in a Jupyter notebook, whose stderr is not a terminal but shows a bar well.
_NOTEBOOK = any(kind.__module__ == "tqdm.notebook" for kind in tqdm.__mro__)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LogProgress:
    """Progress written as whole lines, for logs: no carriage returns, a bounded line count.

    A line at the start, one each time the count passes a new whole percent of `total`
    (without a total: on any progress) once `LINE_SECONDS` (`UNSIZED_LINE_SECONDS`) have
    passed since the last line, and one at the end. `clock` is for tests.

    >>> import io
    >>> log = io.StringIO()
    >>> with LogProgress(total=3, desc="work", unit="item", file=log) as bar:
    ...     bar.update(3)
    >>> log.getvalue().splitlines()[-1].startswith("work: 100% 3/3")
    True
    """

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: float | None = None,
        desc: str = "",
        unit: str = "it",
        initial: float = 0,
        file: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = initial
        self.file = file if file is not None else sys.stderr
        self.clock = clock
        self.start = self.last_line = clock()
        self.last_percent = self._percent()
        self.postfix = ""
        self.closed = False
        self._write_line()

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LogProgress made without an iterable cannot be iterated")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = self.clock()
        if self.total:
            due = self._percent() > self.last_percent and now - self.last_line >= LINE_SECONDS
        else:
            due = now - self.last_line >= UNSIZED_LINE_SECONDS
        if due:
            self._write_line(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write_line()

    def _percent(self) -> int:
        return int(100 * self.n / self.total) if self.total else 0

    def _write_line(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        elapsed = now - self.start
        done = self.n - self.initial
        line = tqdm.format_meter(
            self.n,
            self.total,
            elapsed,
            ncols=0,  # no bar, only the numbers
            prefix=self.desc,
            unit=self.unit,
            rate=done / elapsed if elapsed > 0 and done else None,
            postfix=self.postfix or None,
        )
        self.file.write(line + "\n")
        self.file.flush()
        self.last_line, self.last_percent = now, self._percent()
