"""Every continual-learning method on the built-in mini-MTIL sequence, one table.

    python benchmarks/continual_mini_mtil.py                 # every method, small per-task budget
    python benchmarks/continual_mini_mtil.py --methods finetune,zscl --steps 200
    python benchmarks/continual_mini_mtil.py --seeds 3       # mean ± sample std over 3 seeds
    python benchmarks/continual_mini_mtil.py --seeds 3 --shuffle-order  # each seed its task order

All methods start from the same scene-pretrained tiny CLIP (`mmcl.continual.pretrained`,
trained once and cached) and see the same tasks, steps, batch and learning rate. The table has
ZSCL's metrics (Transfer: zero-shot accuracy on tasks not trained yet; Avg; Last; BWT) and wall
time, and below it the checks the literature leads one to expect (ZSCL, Zheng et al. 2023;
MoE-Adapters, Yu et al. 2024), each reported as measured, whatever it shows. Reports of every
run stay in --output (re-running reuses finished methods; --fresh starts over). With
--seeds, each method runs once per seed (the items each task draws, batch order and
initialisation; `mmcl.continual.seeds`), the table shows mean ± sample standard deviation
(n - 1) and the checks are applied to the means. The task order is the same for every seed
unless --shuffle-order, which draws each seed's order from that seed (`mini_mtil_order`).
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path

import torch
from _common import machine_line, print_table

from mmcl.continual.comparison import compare
from mmcl.continual.methods import available_methods
from mmcl.continual.seeds import parse_seeds

# Per-method arguments where the defaults suit a full-size model more than a tiny one.
METHOD_ARGS = {
    "ewc": {"lambda_": 100.0, "fisher_samples": 64},
    "online_ewc": {"lambda_": 100.0, "fisher_samples": 64},
    "zscl": {"reference_pairs": 512, "average_every": 10},
    "er": {"buffer_size": 200},
    "icarl": {"memory_size": 200},
}
# Methods that train only a few new parameters (prompts, adapters) use the larger learning
# rates their papers use: CoOp 2e-3 (SGD in the paper), MoE-Adapters 1e-3, L2P 3e-2 (Adam);
# the backbone-tuning methods share --lr.
METHOD_LR = {"coop": 2e-3, "moe_adapters": 1e-3, "l2p": 3e-2}
ORDER = [
    "frozen",
    "finetune",
    "joint",
    "ewc",
    "online_ewc",
    "lwf",
    "zscl",
    "wise_ft",
    "er",
    "icarl",
    "moe_adapters",
    "coop",
    "l2p",
    "er+lwf",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(ORDER))
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per task")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--train-size", type=int, default=512, help="training items per task")
    parser.add_argument("--test-size", type=int, default=200, help="test items per task")
    parser.add_argument("--output", type=Path, default=Path("runs/bench-mini-mtil"))
    parser.add_argument("--fresh", action="store_true", help="delete earlier reports first")
    parser.add_argument(
        "--seeds", help="a count N (seeds 0..N-1) or a list: mean ± std over them (default: one)"
    )
    parser.add_argument(
        "--shuffle-order",
        action="store_true",
        help="each seed trains the tasks in its own order, drawn from the seed",
    )
    args = parser.parse_args()
    seeds = None if args.seeds is None else parse_seeds(args.seeds)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for part in methods for m in part.split("+") if m not in available_methods()]
    if unknown:
        parser.error(f"unknown methods {unknown}; valid: {', '.join(available_methods())}")
    if args.fresh and args.output.exists():
        shutil.rmtree(args.output)

    print(machine_line())
    print(
        f"mini-MTIL, {args.train_size} train / {args.test_size} test items per task, "
        f"{args.steps} steps x batch {args.batch_size} per task, lr {args.lr}"
        + ("" if seeds is None else f"; seeds {', '.join(map(str, seeds))}")
        + ("; task order drawn from each seed" if args.shuffle_order else "")
        + "\n"
    )
    started = time.perf_counter()
    reports = {}
    for name in methods:  # one at a time: the learning rate may differ per method
        training = {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": METHOD_LR.get(name, args.lr),
            "progress": False,
        }
        reports.update(
            compare(
                "mini-mtil",
                [name],
                args.output,
                {name: METHOD_ARGS[name]} if name in METHOD_ARGS else {},
                training=training,
                scenario_args={
                    "train_size": args.train_size,
                    "test_size": args.test_size,
                    **({"shuffle_order": True} if args.shuffle_order else {}),
                },
                seeds=seeds,
                progress=False,
            )
        )
    rows = []
    for name in methods:
        metrics, seconds = reports[name]["metrics"], reports[name].get("total_seconds") or 0
        spread = reports[name].get("metrics_std", {})
        keys = ("transfer", "average_accuracy", "last_accuracy", "backward_transfer")
        rows.append([name, *(_percent(metrics[k], spread.get(k)) for k in keys), f"{seconds:.0f}s"])
    print_table(["method", "Transfer", "Avg", "Last", "BWT", "time"], rows)
    if seeds is not None:
        print(
            f"(mean ± sample standard deviation, n - 1, over {len(seeds)} seeds; time: mean "
            f"per seed; the checks below use the means)"
        )
    print(f"\n(total {time.perf_counter() - started:.0f}s; {task_orders(reports[methods[0]])})")
    print("\nexpected shape (ZSCL / MoE-Adapters papers), as measured here:")
    for line in shape_checks(reports):
        print(f"  {line}")


def task_orders(report: dict) -> str:
    """'tasks: a, b, ...', or each seed's order where the seeds' orders differ."""
    runs = report.get("runs") or {None: report}
    orders = {seed: ", ".join(run["tasks"]) for seed, run in runs.items()}
    if len(set(orders.values())) == 1:
        return f"tasks: {next(iter(orders.values()))}"
    return "task orders: " + "; ".join(f"seed {s}: {order}" for s, order in orders.items())


def _value(x) -> float:
    return math.nan if x is None else float(x)


def _percent(mean, std=None) -> str:
    text = f"{100 * _value(mean):.1f}"
    return text if std is None or math.isnan(std) else f"{text} ± {100 * std:.1f}"


def shape_checks(reports: dict) -> list[str]:
    metric = {name: report["metrics"] for name, report in reports.items()}
    lines = []
    if {"frozen", "finetune"} <= metric.keys():
        frozen, tuned = metric["frozen"]["transfer"], metric["finetune"]["transfer"]
        lines.append(
            f"fine-tuning loses Transfer vs frozen: {100 * tuned:.1f} vs "
            f"{100 * frozen:.1f} -> {'yes' if tuned < frozen else 'NO'}"
        )
        for name in ("zscl", "moe_adapters"):
            if name in metric:
                kept, last = metric[name]["transfer"], metric[name]["last_accuracy"]
                lines.append(
                    f"{name} keeps Transfer within 3 points of frozen: {100 * kept:.1f} -> "
                    f"{'yes' if frozen - kept <= 0.03 else 'NO'}; Last {100 * last:.1f} vs "
                    f"fine-tuning {100 * metric['finetune']['last_accuracy']:.1f}"
                )
    if "finetune" in metric:
        base = metric["finetune"]["backward_transfer"]
        worse = [
            n
            for n, m in metric.items()
            if n not in ("finetune", "frozen") and not m["backward_transfer"] > base
        ]
        lines.append(
            f"every method beats fine-tuning on BWT ({100 * base:.1f}): "
            f"{'yes' if not worse else 'NO, not: ' + ', '.join(worse)}"
        )
    return lines


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
