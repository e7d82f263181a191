"""Markdown of continual-learning reports: ``report.md`` of one run (`render_markdown`) and
the table comparing runs (`compare_table`). Accuracies keep their units: fractions show 4
decimals, percentages 2; undefined (NaN or None) values show "—".
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mmcl.continual.held_out import PREFIX as HELD_OUT_PREFIX

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
