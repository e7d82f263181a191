"""Reports of a continual-learning run: ``report.json``, ``report.md``, ``accuracy_matrix.png``.

`write_report` renders the three files in memory first, then writes each one atomically
(temporary file, then rename), ``report.json`` last: a failure while rendering leaves the
previous report untouched, a failure while writing leaves every file either old or new, never
truncated, and ``report.json`` (the file `read_report` and `compare_table` use) always matches
the other two once written. The heat map needs matplotlib; without it the PNG is skipped with
a warning (and a stale one from an earlier report removed).

Accuracies keep their units (fractions or percentages, see `mmcl.continual.metrics`); tables
show fractions with 4 decimals and percentages with 2. NaN metrics (undefined for one task)
are ``null`` in JSON and "—" in Markdown.

>>> import json, pathlib, tempfile, warnings
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> with warnings.catch_warnings():
...     warnings.simplefilter("ignore")  # in case matplotlib is missing
...     report = write_report(folder, [[0.8, 0.3], [0.7, 0.9]], ["cars", "birds"], "finetune")
>>> round(report["metrics"]["backward_transfer"], 4)
-0.1
>>> json.loads((folder / "report.json").read_text())["tasks"]
['cars', 'birds']
>>> print(compare_table({"finetune": read_report(folder)}))
| Method | Transfer | Avg | Last | BWT | Forgetting (max) | Time |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
| finetune | 0.3000 | 0.6750 | 0.8000 | -0.1000 | 0.1000 | — |
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmcl.continual.report_content import REPORT_JSON, build_report, read_report
from mmcl.continual.report_heatmap import HEATMAP_PNG, heatmap_png
from mmcl.continual.report_tables import compare_columns, compare_table, render_markdown
from mmcl.io.atomic import atomic_path

__all__ = [
    "HEATMAP_PNG",
    "REPORT_JSON",
    "REPORT_MD",
    "compare_columns",
    "compare_table",
    "read_report",
    "render_markdown",
    "write_report",
]

REPORT_MD = "report.md"


def write_report(
    folder: str | os.PathLike,
    matrix: Any,
    task_names: Sequence[str],
    method_name: str,
    extra: Mapping[str, Any] | None = None,
    times: Sequence[float] | None = None,
    peak_memory: Sequence[float] | None = None,
    initial: Any = None,
    generative: Mapping[str, Any] | None = None,
    held_out: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``report.json``, ``report.md`` and ``accuracy_matrix.png`` into ``folder``.

    Args:
        folder: created if missing; earlier report files there are replaced.
        matrix: ``T x T`` accuracy matrix, ``A[i, j]`` = accuracy on task j after training
            task i (numpy, torch or nested lists).
        task_names: the ``T`` task names, in training order.
        method_name: the continual-learning method, as the report should name it.
        extra: anything JSON-serialisable to keep alongside (config, seed, git hash, ...);
            numpy and torch values, tuples and paths are converted.
        times: seconds spent on each task (``T`` values), if measured.
        peak_memory: peak memory while each task ran, in MiB (``T`` values), if measured.
        initial: accuracies of the model before any training (``T`` values), if measured.
        generative: an instruction stream's record (`mmcl.continual.generative_metrics`):
            formats, CIDEr-D and general sets before training and after each task; adds the
            retention metrics and a section of their own.
        held_out: a captioned stream's zero-shot accuracies on held-out sets
            (`mmcl.continual.held_out`): ``{"initial": {set: acc}, "rows": [...]}``; adds
            ``held_out_<set>`` (after the last task) and a section of its own.

    Returns:
        The dictionary written to ``report.json`` (undefined metrics as None).
    """
    report = build_report(
        matrix, task_names, method_name, extra, times, peak_memory, initial, generative, held_out
    )
    json_text = json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    markdown = render_markdown(report)
    png = heatmap_png(report)

    folder = Path(folder)
    if png is None:
        (folder / HEATMAP_PNG).unlink(missing_ok=True)  # never leave another run's heat map
    else:
        _write_atomically(folder / HEATMAP_PNG, png)
    _write_atomically(folder / REPORT_MD, markdown.encode("utf-8"))
    _write_atomically(folder / REPORT_JSON, json_text.encode("utf-8"))
    return report


def _write_atomically(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
