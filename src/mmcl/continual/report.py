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

import functools
import io
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmcl.continual.generative_metrics import summarize_generative
from mmcl.continual.held_out import PREFIX as HELD_OUT_PREFIX
from mmcl.continual.held_out import summarize_held_out
from mmcl.continual.metrics import (
    as_accuracy_matrix,
    as_initial_accuracy,
    per_task_metrics,
    summarize,
)
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

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
HEATMAP_PNG = "accuracy_matrix.png"
FORMAT_VERSION = 1

# (key in summarize(), label, definition) in the order the Markdown report lists them.
METRIC_ROWS = (
    ("transfer", "Transfer", "zero-shot accuracy on tasks not trained yet (ZSCL, Zheng+ 2023)"),
    ("average_accuracy", "Avg", "mean of every entry of the matrix (ZSCL)"),
    ("last_accuracy", "Last", "mean of the last row (ACC of GEM)"),
    ("backward_transfer", "BWT", "final minus just-learned accuracy (Lopez-Paz & Ranzato 2017)"),
    ("forgetting_max", "Forgetting (max)", "best since learned minus final (Chaudhry+ 2018)"),
    ("forgetting_first", "Forgetting (first)", "just-learned minus final accuracy (= -BWT)"),
    ("forward_transfer", "FWT", "just before training minus initial (Lopez-Paz & Ranzato)"),
    ("initial_average", "Initial Avg", "mean accuracy of the initial model"),
    ("initial_transfer", "Initial Transfer", "initial model on tasks 2..T (ZSCL zero-shot row)"),
)
# (key in the metrics, column header) of compare_table; "Forgetting" is Chaudhry's, since the
# other definition is just -BWT.
COMPARE_COLUMNS = (
    ("transfer", "Transfer"),
    ("average_accuracy", "Avg"),
    ("last_accuracy", "Last"),
    ("backward_transfer", "BWT"),
    ("forgetting_max", "Forgetting (max)"),
)
# Extra columns of compare_table when a report has them (instruction streams' retention).
GENERATIVE_COLUMNS = (
    ("general_retained", "General retained"),
    ("format_retained", "Format retained"),
)
# (key, label, definition) of the instruction streams' retention metrics, in report.md.
GENERATIVE_ROWS = (
    ("general_initial", "General (initial)", "base model: mean of the general sets' scores"),
    ("general_last", "General (last)", "the general sets after the last task"),
    ("general_retained", "General retained", "General (last) / General (initial)"),
    ("format_initial", "Format (initial)", "share of answers in the format asked, base model"),
    ("format_retained", "Format retained", "that share after the last task, every task"),
    ("format_bwt", "Format BWT", "BWT of the format matrix (alignment lost on old tasks)"),
)
MISSING = "—"


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
    png = _heatmap_png(report)

    folder = Path(folder)
    if png is None:
        (folder / HEATMAP_PNG).unlink(missing_ok=True)  # never leave another run's heat map
    else:
        _write_atomically(folder / HEATMAP_PNG, png)
    _write_atomically(folder / REPORT_MD, markdown.encode("utf-8"))
    _write_atomically(folder / REPORT_JSON, json_text.encode("utf-8"))
    return report


def build_report(
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
    """The JSON-ready content of ``report.json`` (see `write_report` for the arguments)."""
    array = as_accuracy_matrix(matrix)
    num_tasks = len(array)
    names = _checked_names(task_names, num_tasks)
    if not isinstance(method_name, str) or not method_name.strip():
        raise ValueError(f"method_name must be a non-empty string, got {method_name!r}")
    a0 = None if initial is None else as_initial_accuracy(initial, num_tasks)
    seconds = _checked_per_task(times, num_tasks, "times")
    memory = _checked_per_task(peak_memory, num_tasks, "peak_memory")
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(f"extra must be a mapping (a dict), got {type(extra).__name__}")
    metrics = summarize(array, a0)
    if generative is not None:
        if len(generative["rows"]) != num_tasks:
            raise ValueError(f"{len(generative['rows'])} generative rows for {num_tasks} tasks")
        metrics |= summarize_generative(generative)
    if held_out is not None:
        if len(held_out["rows"]) != num_tasks:
            raise ValueError(f"{len(held_out['rows'])} held-out rows for {num_tasks} tasks")
        metrics |= summarize_held_out(held_out)
    report = _jsonable(
        {
            "format_version": FORMAT_VERSION,
            "method": method_name,
            "tasks": names,
            "accuracy_matrix": array,
            "initial_accuracy": a0,
            "metrics": metrics,
            "per_task": per_task_metrics(array),
            "seconds_per_task": seconds,
            "total_seconds": None if seconds is None else sum(seconds),
            "peak_memory_mib": memory,
            "extra": dict(extra or {}),
        },
        "report",
    )
    if generative is not None:
        report["generative"] = _jsonable(_generative_record(generative), "generative")
    if held_out is not None:
        record = {"initial": held_out.get("initial"), "after_task": held_out["rows"]}
        report["held_out"] = _jsonable(record, "held_out")
    return report


def _generative_record(generative: Mapping[str, Any]) -> dict[str, Any]:
    """The format and CIDEr-D matrices and the general sets, row by row."""
    rows, initial = generative["rows"], generative.get("initial") or {}
    return {
        "format_matrix": [row["formats"] for row in rows],
        "initial_formats": initial.get("formats"),
        "cider_d_matrix": [row["cider_d"] for row in rows],
        "initial_cider_d": initial.get("cider_d"),
        "general": {
            "initial": initial.get("general"),
            "after_task": [row["general"] for row in rows],
        },
    }


def read_report(path: str | os.PathLike) -> dict[str, Any]:
    """Load a ``report.json`` (or the one in a folder); undefined metrics come back as NaN."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
    report = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(report, dict) or "metrics" not in report or "accuracy_matrix" not in report:
        raise ValueError(f"{path} is not a continual-learning report (no metrics / matrix)")
    report["metrics"] = {k: math.nan if v is None else v for k, v in report["metrics"].items()}
    return report


def render_markdown(report: Mapping[str, Any]) -> str:
    """The human-readable ``report.md`` for a report dictionary (from `write_report`)."""
    names = [_cell(name) for name in report["tasks"]]
    matrix = np.asarray(report["accuracy_matrix"], dtype=np.float64)
    initial = report.get("initial_accuracy")
    decimals = _decimals(matrix.ravel().tolist() + list(initial or []))
    number = functools.partial(_number, decimals=decimals)

    lines = [f"# Continual learning: {_cell(report['method'])}", ""]
    lines += [f"{len(names)} tasks, in training order: {', '.join(names)}.", ""]

    lines += ["## Accuracy matrix", ""]
    lines += [
        "Row *after task k*: evaluated after training tasks 1..k; column: the task evaluated. "
        "**Bold**: the task just trained; *italic*: zero-shot (the task is not trained yet).",
        "",
    ]
    measure = (report.get("extra") or {}).get("measure")
    if measure:  # e.g. a captioned stream's retrieval R@1 in place of accuracy
        lines += [f"Entries are {_cell(str(measure))}.", ""]
    lines += _table_header(["", *names])
    if initial is not None:
        lines.append(_row(["before training", *(f"*{number(v)}*" for v in initial)]))
    for i, row in enumerate(matrix):
        cells = [_emphasised(number(v), i, j) for j, v in enumerate(row)]
        lines.append(_row([f"after task {i + 1} ({names[i]})", *cells]))
    lines.append("")

    lines += ["## Metrics", ""]
    lines += _table_header(["Metric", "Value", "Definition"], align=("---", "---:", "---"))
    for key, label, definition in METRIC_ROWS:
        lines.append(_row([label, number(report["metrics"].get(key)), definition]))
    if report.get("total_seconds") is not None:
        lines.append(_row(["Time", _duration(report["total_seconds"]), "all tasks, in total"]))
    lines.append("")

    per_task = report["per_task"]
    lines += ["## Per task", ""]
    lines += _table_header(["", *names])
    lines.append(_row(["Transfer", *(number(v) for v in per_task["transfer"])]))
    lines.append(_row(["Avg", *(number(v) for v in per_task["average"])]))
    lines.append(_row(["Last", *(number(v) for v in per_task["last"])]))
    if report.get("seconds_per_task") is not None:
        lines.append(_row(["Time", *(_duration(v) for v in report["seconds_per_task"])]))
    if report.get("peak_memory_mib") is not None:
        lines.append(_row(["Peak memory", *(_memory(v) for v in report["peak_memory_mib"])]))
    lines.append("")

    if report.get("generative"):
        lines += _generative_markdown(report, names, number)
    if report.get("held_out"):
        lines += _held_out_markdown(report["held_out"], names)

    if report.get("extra"):
        extra = json.dumps(report["extra"], indent=2, ensure_ascii=False, allow_nan=False)
        lines += ["## Extra", "", "```json", extra, "```", ""]
    return "\n".join(lines)


def compare_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table of methods x (Transfer, Avg, Last, BWT, Forgetting (max), Time).

    ``results`` maps a method's label to its report (from `read_report` / `write_report`) or
    to a bare `summarize` dict (then Time is "—"). Rows keep the mapping's order. A result
    from `mmcl.continual.seeds.aggregate_seeds` (several seeds) shows each cell as
    "mean ± std", Time as the mean per seed.
    """
    if not results:
        raise ValueError("compare_table needs at least one result")
    metrics = {label: result.get("metrics", result) for label, result in results.items()}
    spreads = {label: result.get("metrics_std") or {} for label, result in results.items()}
    columns = compare_columns(list(metrics.values()))
    decimals = _decimals([m.get(key) for m in metrics.values() for key, _ in columns])
    headers = ["Method", *(header for _, header in columns), "Time"]
    lines = _table_header(headers, align=("---", *["---:"] * (len(headers) - 1)))
    for label, result in results.items():
        cells = [
            _with_spread(metrics[label].get(key), spreads[label].get(key), decimals)
            for key, _ in columns
        ]
        seconds = result.get("total_seconds")
        time = MISSING if seconds is None else _duration(seconds)
        if seconds is not None and result.get("total_seconds_std") is not None:
            time += f" ± {_duration(result['total_seconds_std'])}"
        lines.append(_row([_cell(label), *cells, time]))
    return "\n".join(lines)


def compare_columns(metrics: Sequence[Mapping[str, Any]]) -> tuple[tuple[str, str], ...]:
    """(key, header) of a comparison's metric columns: ZSCL's, then the retention columns
    and the held-out zero-shot sets (one each) when any of `metrics` has them."""
    columns = COMPARE_COLUMNS
    if any(GENERATIVE_COLUMNS[0][0] in m for m in metrics):
        columns += GENERATIVE_COLUMNS
    held_out = dict.fromkeys(key for m in metrics for key in m if key.startswith(HELD_OUT_PREFIX))
    return columns + tuple((key, f"Held-out {key[len(HELD_OUT_PREFIX) :]}") for key in held_out)


def _with_spread(value, spread, decimals: int) -> str:
    text = _number(value, decimals)
    if spread is None or text == MISSING or not math.isfinite(spread):
        return text
    return f"{text} ± {_number(spread, decimals)}"


def _generative_markdown(report: Mapping[str, Any], names: list[str], number) -> list[str]:
    """The retention metrics, the format shares and CIDEr-D of every task after the last
    one, and the general sets row by row."""
    record = report["generative"]
    lines = ["## Instruction following and general ability", ""]
    lines += _table_header(["Metric", "Value", "Definition"], align=("---", "---:", "---"))
    for key, label, definition in GENERATIVE_ROWS:
        lines.append(_row([label, number(report["metrics"].get(key)), definition]))
    lines += ["", "After the last task:", ""]
    lines += _table_header(["", *names])
    lines.append(_row(["Format share", *(number(v) for v in record["format_matrix"][-1])]))
    lines.append(_row(["CIDEr-D", *(number(v) for v in record["cider_d_matrix"][-1])]))
    general = record["general"]
    if general.get("initial"):
        sets = list(general["initial"])
        lines += ["", "General sets (the base model's abilities):", ""]
        lines += _table_header(["", *sets])
        rows = [("before training", general["initial"])]
        rows += [(f"after task {i + 1}", g) for i, g in enumerate(general["after_task"])]
        for label, scores in rows:
            lines.append(_row([label, *(number(scores.get(name)) for name in sets)]))
    lines.append("")
    return lines


def _held_out_markdown(record: Mapping[str, Any], names: list[str]) -> list[str]:
    """Each held-out set's zero-shot accuracy before training and after every task."""
    rows = [(f"after task {i + 1} ({names[i]})", r) for i, r in enumerate(record["after_task"])]
    if record.get("initial"):
        rows.insert(0, ("before training", record["initial"]))
    sets = list(rows[0][1])
    decimals = _decimals([v for _, scores in rows for v in scores.values()])
    lines = ["## Held-out zero-shot", ""]
    lines += ["Zero-shot accuracy on classification sets no task trains on.", ""]
    lines += _table_header(["", *(_cell(name) for name in sets)])
    for label, scores in rows:
        lines.append(_row([label, *(_number(scores.get(name), decimals) for name in sets)]))
    lines.append("")
    return lines


# --- heat map -------------------------------------------------------------------------------


def _load_matplotlib():
    """matplotlib's Figure and Agg canvas (no pyplot: no global state, no GUI backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return Figure, FigureCanvasAgg


def _heatmap_png(report: Mapping[str, Any]) -> bytes | None:
    """The accuracy matrix as PNG bytes; zero-shot cells (not trained yet) in grey."""
    try:
        Figure, FigureCanvasAgg = _load_matplotlib()
    except ImportError:
        warnings.warn(
            f"matplotlib is not installed, so {HEATMAP_PNG} is not written "
            f"(pip install matplotlib)",
            stacklevel=3,
        )
        return None

    names = list(report["tasks"])
    num_tasks = len(names)
    values = np.asarray(report["accuracy_matrix"], dtype=np.float64)
    trained = np.tril(np.ones((num_tasks, num_tasks), dtype=bool))
    row_labels = [f"after {i + 1}: {name}" for i, name in enumerate(names)]
    if report.get("initial_accuracy") is not None:
        values = np.vstack([report["initial_accuracy"], values])
        trained = np.vstack([np.zeros(num_tasks, dtype=bool), trained])
        row_labels.insert(0, "before training")
    top = 1.0 if values.max() <= 1.0 else 100.0
    decimals = 2 if top == 1.0 else 1
    font = max(5.0, min(10.0, 90.0 / num_tasks))

    size = (2.5 + 0.75 * num_tasks, 1.8 + 0.6 * len(row_labels))
    figure = Figure(figsize=size, dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_where(~trained, values), cmap="viridis", vmin=0, vmax=top)
    # Light greys for zero-shot cells: the darkest grey is reached at twice the top accuracy.
    axes.imshow(np.ma.masked_where(trained, values), cmap="Greys", vmin=0, vmax=2 * top)
    for (row, column), value in np.ndenumerate(values):
        if trained[row, column]:
            red, green, blue, _ = image.cmap(image.norm(value))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            color, style = ("white" if dark else "black"), "normal"
        else:
            color, style = "black", "italic"
        text = f"{value:.{decimals}f}"
        axes.text(
            column, row, text, ha="center", va="center", color=color, fontsize=font, fontstyle=style
        )
    axes.set_xticks(range(num_tasks), labels=names, rotation=45, ha="right", fontsize=font)
    axes.set_yticks(range(len(row_labels)), labels=row_labels, fontsize=font)
    axes.set_xlabel("evaluated on task")
    _outline_trained_cells(axes, trained)
    title = f"{report['method']}\ngrey italic: zero-shot (task not trained yet)"
    axes.set_title(title, fontsize=font + 1)
    figure.colorbar(image, ax=axes, label="accuracy on trained tasks", shrink=0.8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _outline_trained_cells(axes, trained: np.ndarray) -> None:
    """A staircase line between the trained cells (on and below the diagonal) and the rest."""
    xs, ys = [], []
    for row, width in enumerate(trained.sum(axis=1)):  # trained cells: a prefix of each row
        xs += [width - 0.5, width - 0.5]
        ys += [row - 0.5, row + 0.5]
    axes.plot(xs, ys, color="black", linewidth=1.5, scalex=False, scaley=False)


# --- helpers --------------------------------------------------------------------------------


def _write_atomically(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _checked_names(task_names: Sequence[str], num_tasks: int) -> list[str]:
    if isinstance(task_names, str) or not all(isinstance(n, str) for n in task_names):
        raise ValueError(f"task_names must be a sequence of strings, got {task_names!r}")
    if len(task_names) != num_tasks:
        raise ValueError(f"{len(task_names)} task names for a {num_tasks}-task matrix")
    return list(task_names)


def _checked_per_task(values: Sequence[float] | None, num_tasks: int, what: str):
    if values is None:
        return None
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    if array.shape != (num_tasks,) or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{what} must hold one number per task ({num_tasks}), got {values!r}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(f"{what} must be finite and non-negative, got {values!r}")
    return array.tolist()


def _jsonable(value: Any, where: str) -> Any:
    """``value`` with numpy/torch values, tuples and paths converted, non-finite floats None."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _jsonable(value.item(), where)
    if isinstance(value, np.ndarray) or hasattr(value, "tolist"):  # numpy arrays, tensors
        return _jsonable(value.tolist(), where)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        converted = {}
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)):
                raise TypeError(f"{where} has a key JSON cannot hold: {key!r}")
            converted[str(key)] = _jsonable(item, f"{where}[{key!r}]")
        return converted
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, f"{where}[{index}]") for index, item in enumerate(value)]
    raise TypeError(f"{where} is not JSON-serialisable: {type(value).__name__} {value!r}")


def _decimals(values: Sequence[float | None]) -> int:
    """4 decimals when every value looks like a fraction, else 2 (percentages)."""
    finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
    return 4 if all(v <= 1.0 for v in finite) else 2


def _number(value: float | None, decimals: int) -> str:
    if value is None or not math.isfinite(value):
        return MISSING
    return f"{value:.{decimals}f}".replace(f"-{0:.{decimals}f}", f"{0:.{decimals}f}")  # no "-0.00"


def _emphasised(text: str, row: int, column: int) -> str:
    if column == row:
        return f"**{text}**"
    return f"*{text}*" if column > row else text


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _memory(mib: float) -> str:
    return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _table_header(headers: Sequence[str], align: Sequence[str] | None = None) -> list[str]:
    align = align or ("---", *["---:"] * (len(headers) - 1))
    return [_row(headers), _row(align)]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
