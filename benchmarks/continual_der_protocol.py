"""Sequential CIFAR-10 under the DER protocol: published Class-IL accuracy next to mmcl's.

    python benchmarks/continual_der_protocol.py --full --device cuda     # the published setting
    python benchmarks/continual_der_protocol.py                          # shortened, for a CPU

The training engine runs on the GPU whenever one is visible; --device cuda only makes sure one
is (the run stops at once rather than spending days on a CPU by mistake).

The protocol, its source and how mmcl's methods differ from Mammoth's are in
`mmcl.continual.protocols`. --full runs every image for 50 epochs per task (hours on one GPU
for all seven methods); the default is a CPU-sized version of the same protocol: a
class-balanced subset, a few epochs, the same optimiser, schedule (as fractions of the run),
augmentation, network and per-method settings. Its numbers are not comparable with the
published ones in absolute terms (far less training), only in their order. Each method's report
stays in --output; a method already finished there is read back, not run again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from _common import machine_line, print_table

from mmcl.continual.builtin import MissingDataError
from mmcl.continual.methods import build_method
from mmcl.continual.protocols import (
    DER_METHODS,
    DER_PUBLISHED_CLASS_IL,
    der_protocol_model,
    der_training,
    seq_cifar10,
)
from mmcl.continual.report import read_report
from mmcl.continual.runner import run_continual
from mmcl.train import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(DER_METHODS))
    parser.add_argument("--full", action="store_true", help="all data, 50 epochs (a GPU job)")
    parser.add_argument("--epochs", type=int, help="epochs per task (default 50 full, else 2)")
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--width", type=int, default=64, help="ResNet-18 width (64: the paper's)")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument(
        "--device",
        choices=["auto", "cuda"],
        default="auto",
        help="auto: the GPU when one is visible (the engine's choice), else the CPU; cuda: "
        "stop unless a GPU is visible",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("runs/bench-der-protocol"))
    parser.add_argument("--fresh", action="store_true", help="delete earlier reports first")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in DER_METHODS]
    if unknown:
        parser.error(f"unknown protocol methods {unknown}; valid: {', '.join(DER_METHODS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    epochs = args.epochs or (50 if args.full else 2)
    per_class = (None, None) if args.full else (args.train_per_class, args.test_per_class)
    if args.fresh and args.output.exists():
        shutil.rmtree(args.output)

    print(machine_line())
    size = "all images" if args.full else f"{per_class[0]} train / {per_class[1]} test a class"
    print(
        f"Seq-CIFAR-10 (DER protocol): {size}, {epochs} epochs a task, batch 32, plain SGD, "
        f"lr x0.1 at 70% and 90% of each task, ResNet-18 width {args.width}, {args.precision}, "
        f"on {device}\n"
    )
    scenario = seq_cifar10(*per_class, seed=args.seed)
    rows, results = [], {}
    started = time.perf_counter()
    for name in methods:
        setting = DER_METHODS[name]
        folder = args.output / name
        if (folder / "report.json").exists():
            report = read_report(folder)
        else:
            resume = (folder / "progress.json").exists()
            training = der_training(
                name,
                epochs=epochs,
                seed=args.seed,
                workers=args.workers,
                precision=args.precision,
                progress=False,
                output_dir=str(folder),
            )
            torch.manual_seed(args.seed)  # the same initial network for every method
            result = run_continual(
                der_protocol_model(args.width),
                scenario,
                build_method(setting.method, **setting.arguments),
                TrainConfig.from_dict(training, "DER protocol settings"),
                folder,
                resume=resume,
                progress=False,
                extra={"protocol": "der-seq-cifar10", "training": training},
            )
            report = result.report
        ours = 100 * report["metrics"]["last_accuracy"]
        seconds = report.get("total_seconds") or 0
        results[name] = {"published": DER_PUBLISHED_CLASS_IL[name], "ours": ours, "s": seconds}
        arguments = ", ".join(f"{k}={v}" for k, v in setting.arguments.items())
        rows.append(
            [
                name,
                f"{setting.method}({arguments})",
                f"{setting.lr:g}",
                f"{DER_PUBLISHED_CLASS_IL[name]:.1f}",
                f"{ours:.1f}",
                f"{seconds:.0f}s",
            ]
        )
        print(f"{name}: Class-IL {ours:.1f} (published {DER_PUBLISHED_CLASS_IL[name]:.1f})")
    print()
    print_table(["method", "mmcl method", "lr", "published", "mmcl", "time"], rows)
    print(
        f"\n(total {time.perf_counter() - started:.0f}s; published: Buzzega et al. 2020, Table 2)"
    )
    if args.json:
        payload = {"epochs": epochs, "device": device, "results": results}
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, MissingDataError) as error:  # bad settings or missing data: one line
        sys.exit(f"continual_der_protocol.py: error: {error}")
