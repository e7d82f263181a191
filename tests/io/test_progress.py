"""mmcl.io.progress: tqdm's bar on a terminal, a bounded number of plain lines in a log."""

from __future__ import annotations

import io

import pytest
from tqdm import tqdm

from mmcl.io import progress as progress_module
from mmcl.io.progress import LINE_SECONDS, UNSIZED_LINE_SECONDS, LogProgress, progress


class FakeClock:
    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_at_most_one_a_percent_and_every_few_seconds():
    log = io.StringIO()
    # 20,000 updates over about 200 s: at most one line every LINE_SECONDS, and at most 100.
    clock = FakeClock(step=0.01)
    with LogProgress(total=20_000, desc="embedding", unit="image", file=log, clock=clock) as bar:
        for _ in range(20_000):
            bar.update(1)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    elapsed = clock.now
    assert len(lines) <= elapsed / LINE_SECONDS + 2
    assert lines[0].startswith("embedding:   0% 0/20000")
    assert lines[-1].startswith("embedding: 100% 20000/20000")
    # The lines in between advance: a whole percent more each time.
    percents = [int(line.split("%")[0].split()[-1]) for line in lines]
    assert percents == sorted(percents) and len(set(percents[1:-1])) == len(percents[1:-1])


def test_a_slow_job_gets_a_line_a_percent():
    log = io.StringIO()
    clock = FakeClock(step=60.0)  # a minute a step: one line each whole percent
    for _ in LogProgress(range(300), desc="slow", file=log, clock=clock):
        pass
    lines = log.getvalue().splitlines()
    assert len(lines) == 101 + 1  # 0%, each percent to 100%, and the closing line


def test_without_a_total_a_line_every_half_minute():
    log = io.StringIO()
    clock = FakeClock(step=1.0)
    for _ in LogProgress(iter(range(300)), desc="stream", unit="batch", file=log, clock=clock):
        pass
    lines = log.getvalue().splitlines()
    assert len(lines) <= 300 / UNSIZED_LINE_SECONDS + 2
    assert lines[-1].startswith("stream: 300batch")


def test_postfix_and_initial_count():
    log = io.StringIO()
    with LogProgress(total=10, initial=4, desc="train", unit="step", file=log) as bar:
        bar.set_postfix(loss="0.5000")
        bar.update(6)
    assert log.getvalue().splitlines()[-1].startswith("train: 100% 10/10")
    assert "loss=0.5000" in log.getvalue()


def test_progress_picks_the_bar_on_a_terminal_and_lines_elsewhere(monkeypatch):
    monkeypatch.setattr(progress_module, "_NOTEBOOK", False)
    assert isinstance(progress(range(3), file=io.StringIO()), LogProgress)
    on_terminal = progress(range(3), file=Terminal())
    assert isinstance(on_terminal, tqdm)
    on_terminal.close()
    quiet = progress(range(3), disable=True, file=io.StringIO())
    assert list(quiet) == [0, 1, 2]


def test_iterating_a_log_progress_without_an_iterable_is_an_error():
    with pytest.raises(TypeError, match="without an iterable"):
        iter(LogProgress(total=3, file=io.StringIO())).__next__()
