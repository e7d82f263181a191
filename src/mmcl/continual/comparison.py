"""Several methods on one stream, one table: `mmcl continual compare`.

Each method runs in its own folder under the comparison's (`<output>/<method>`, `+` written as
`_`). A method whose run there is finished is read back, not run again, and an interrupted one
is resumed, but only when the run was made with the settings asked for now (the record in its
``progress.json``, `mmcl.continual.settings`); otherwise nothing runs and the error names the
folder and each setting that differs. The table is saved beside the runs as
``comparison.md`` and ``comparison.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from mmcl.continual.report import COMPARE_COLUMNS, compare_table, read_report
from mmcl.continual.settings import differences, run_settings
from mmcl.io.atomic import atomic_path

COMPARISON_MD = "comparison.md"
COMPARISON_CSV = "comparison.csv"


def compare(
    scenario: str,
    methods: list[str],
    output_dir: str | Path,
    method_args: dict[str, dict[str, Any]] | None = None,
    **options,
) -> dict[str, Any]:
    """Run several methods on one stream; returns their reports by method name and writes
    the comparison table into `output_dir`. `method_args` maps a method to its arguments."""
    from mmcl.continual.experiments import plan_run, run_experiment

    method_args = method_args or {}
    output_dir = Path(output_dir)
    training = {k: v for k, v in options.items() if k != "progress"}
    resumable = {}
    for name in methods:  # every name, argument and earlier run checked before any training
        folder = method_folder(output_dir, name)
        planned = run_settings(*plan_run(scenario, name, folder, method_args.get(name), **training))
        resumable[name] = _check_earlier_run(folder, name, planned)
    reports = {}
    for name in methods:
        folder = method_folder(output_dir, name)
        if (folder / "report.json").exists():
            reports[name] = read_report(folder)
            continue
        result = run_experiment(
            scenario, name, folder, method_args.get(name), resume=resumable[name], **options
        )
        reports[name] = result.report
    write_comparison(output_dir, reports)
    return reports


def method_folder(output_dir: Path, method: str) -> Path:
    return output_dir / method.replace("+", "_")


def _check_earlier_run(folder: Path, method: str, planned: dict[str, Any]) -> bool:
    """True if `folder` holds a run of `method` made with `planned`; False if it holds none."""
    progress = folder / "progress.json"
    if not progress.exists():
        return False
    recorded = json.loads(progress.read_text()).get("settings")
    if recorded is None:
        raise ValueError(
            f"compare: {folder} holds a {method} run that records no settings (an older "
            f"mmcl made it), so it cannot be reused; give a new --output-dir"
        )
    # The runner records what the stream's matrix measures; it follows from the scenario,
    # which is compared, and is not part of a plan.
    changed = differences({k: v for k, v in recorded.items() if k != "measure"}, planned)
    if changed:
        raise ValueError(
            f"compare: {folder} holds a {method} run made with other settings "
            f"({'; '.join(changed)}); give a new --output-dir, or the same settings"
        )
    return True


def comparison_csv(reports: dict[str, Any]) -> str:
    """The comparison as CSV: one row per method, the metrics as plain numbers, seconds."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", *(key for key, _ in COMPARE_COLUMNS), "total_seconds"])
    for name, report in reports.items():
        metrics = report.get("metrics", {})
        values = [metrics.get(key) for key, _ in COMPARE_COLUMNS]
        writer.writerow([name, *map(_plain, values), _plain(report.get("total_seconds"))])
    return buffer.getvalue()


def _plain(value) -> Any:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def write_comparison(output_dir: Path, reports: dict[str, Any]) -> tuple[Path, Path]:
    """`comparison.md` and `comparison.csv` in `output_dir`, each written atomically."""
    paths = (output_dir / COMPARISON_MD, output_dir / COMPARISON_CSV)
    for path, text in zip(
        paths, (compare_table(reports) + "\n", comparison_csv(reports)), strict=True
    ):
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return paths
