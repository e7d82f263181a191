"""Several methods on one stream, one table: `mmcl continual compare`.

Each method runs in its own folder under the comparison's (`<output>/<method>`, `+` written as
`_`). A method whose run there is finished is read back, not run again, and an interrupted one
is resumed, but only when the run was made with the settings asked for now (the record in its
``progress.json``, `mmcl.continual.settings`); otherwise nothing runs and the error names the
folder and each setting that differs. The table is saved beside the runs as
``comparison.md`` and ``comparison.csv``.

With `seeds`, each method runs once per seed, in ``<output>/<method>/seed_<s>`` (the seed
sets the scenario's ``seed`` and the training ``seed``: see `mmcl.continual.seeds`), and the
table shows the mean ± sample standard deviation over the seeds of every metric.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from mmcl.continual.report import compare_columns, compare_table, read_report
from mmcl.continual.seeds import aggregate_seeds
from mmcl.continual.settings import differences, run_settings
from mmcl.io.atomic import atomic_path

COMPARISON_MD = "comparison.md"
COMPARISON_CSV = "comparison.csv"


def compare(
    scenario: str,
    methods: list[str],
    output_dir: str | Path,
    method_args: dict[str, dict[str, Any]] | None = None,
    seeds: list[int] | None = None,
    **options,
) -> dict[str, Any]:
    """Run several methods on one stream; returns their reports by method name and writes
    the comparison table into `output_dir`. `method_args` maps a method to its arguments.
    With `seeds`, each method runs once per seed and its entry is the summary of
    `mmcl.continual.seeds.aggregate_seeds` (its ``runs`` the reports by seed)."""
    from mmcl.continual.experiments import plan_run, run_experiment

    method_args = method_args or {}
    output_dir = Path(output_dir)
    runs = [(name, seed) for name in methods for seed in (seeds or [None])]
    seeded = {run: _seeded_options(options, run[1]) for run in runs}
    resumable = {}
    for name, seed in runs:  # every name, argument and earlier run checked before training
        folder = method_folder(output_dir, name, seed)
        training = {k: v for k, v in seeded[name, seed].items() if k != "progress"}
        planned = run_settings(*plan_run(scenario, name, folder, method_args.get(name), **training))
        resumable[name, seed] = _check_earlier_run(folder, name, planned)
    done = {}
    for name, seed in runs:
        folder = method_folder(output_dir, name, seed)
        if (folder / "report.json").exists():
            done[name, seed] = read_report(folder)
            continue
        result = run_experiment(
            scenario,
            name,
            folder,
            method_args.get(name),
            resume=resumable[name, seed],
            **seeded[name, seed],
        )
        done[name, seed] = result.report
    if seeds is None:
        reports = {name: done[name, None] for name in methods}
    else:
        reports = {
            name: aggregate_seeds({seed: done[name, seed] for seed in seeds}) for name in methods
        }
    write_comparison(output_dir, reports)
    return reports


def method_folder(output_dir: Path, method: str, seed: int | None = None) -> Path:
    folder = output_dir / method.replace("+", "_")
    return folder if seed is None else folder / f"seed_{seed}"


def _seeded_options(options: dict[str, Any], seed: int | None) -> dict[str, Any]:
    """`options` with `seed` as the training seed and the scenario's seed."""
    if seed is None:
        return options
    training = dict(options.get("training") or {})
    scenario_args = dict(options.get("scenario_args") or {})
    for given, where in ((training, "--seed (training)"), (scenario_args, "the scenario's")):
        if "seed" in given:
            raise ValueError(
                f"compare: {where} seed and --seeds both given; --seeds sets both the "
                f"training seed and the scenario's, so leave the other out"
            )
    training["seed"] = scenario_args["seed"] = seed
    return {**options, "training": training, "scenario_args": scenario_args}


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
    """The comparison as CSV: one row per method, the metrics as plain numbers, seconds.
    Over several seeds, each metric has a ``_mean`` and a ``_std`` column (sample standard
    deviation, n - 1) and ``seeds`` lists them."""
    columns = compare_columns([report.get("metrics", {}) for report in reports.values()])
    keys = [key for key, _ in columns] + ["total_seconds"]
    several = any("metrics_std" in report for report in reports.values())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if several:
        header = [f"{key}_{part}" for key in keys for part in ("mean", "std")]
        writer.writerow(["method", "seeds", *header])
    else:
        writer.writerow(["method", *keys])
    for name, report in reports.items():
        values = {**report.get("metrics", {}), "total_seconds": report.get("total_seconds")}
        if not several:
            writer.writerow([name, *(_plain(values.get(key)) for key in keys)])
            continue
        spreads = {
            **report.get("metrics_std", {}),
            "total_seconds": report.get("total_seconds_std"),
        }
        cells = [_plain(d.get(key)) for key in keys for d in (values, spreads)]
        writer.writerow([name, " ".join(map(str, report.get("seeds", []))), *cells])
    return buffer.getvalue()


def seeds_note(reports: dict[str, Any]) -> str | None:
    """The line under a table of several seeds saying what its cells are; None otherwise."""
    seeds = next((r["seeds"] for r in reports.values() if "metrics_std" in r), None)
    if seeds is None:
        return None
    return (
        f"Mean ± sample standard deviation (n - 1) over {len(seeds)} seeds "
        f"({', '.join(map(str, seeds))}); Time: mean per seed."
    )


def _plain(value) -> Any:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def write_comparison(output_dir: Path, reports: dict[str, Any]) -> tuple[Path, Path]:
    """`comparison.md` and `comparison.csv` in `output_dir`, each written atomically."""
    paths = (output_dir / COMPARISON_MD, output_dir / COMPARISON_CSV)
    note = seeds_note(reports)
    markdown = compare_table(reports) + "\n" + ("" if note is None else f"\n{note}\n")
    for path, text in zip(paths, (markdown, comparison_csv(reports)), strict=True):
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return paths
