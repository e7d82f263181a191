"""Class-incremental split CIFAR-10 with mmcl and with avalanche-lib, side by side.

    python benchmarks/continual_vs_avalanche.py                 # 4 methods, both libraries
    python benchmarks/continual_vs_avalanche.py --quick         # a smoke run (< 1 minute)
    python benchmarks/continual_vs_avalanche.py --methods er --seeds 0,1,2 --json er.json

avalanche-lib is not a dependency of mmcl, only of its tests: `make setup` installs it (with
constraints.txt, so pip leaves torch alone).

One experiment, two implementations: CIFAR-10 (the shared JPEG copy, a seeded class-balanced
subset, the same one `mmcl.continual.protocols.seq_cifar10` picks), 5 tasks of 2 classes in the
natural order ({airplane, automobile}, {bird, cat}, ...), decoded once into a uint8 tensor that
both libraries read through the same `Dataset` and the same augmentation (random 32-pixel crop
after 4 pixels of zero padding, horizontal flip, CIFAR-10 normalisation; none with
--no-augment). The network is `cifar_resnet18(10, width)` (width 20: GEM's reduced ResNet-18),
built once per seed and copied, so both libraries start from the same weights: mmcl's copy
in the memory layout `cifar_resnet18` gives it (channels-last convolution weights, which
oneDNN convolves faster on the CPU), avalanche's in PyTorch's default NCHW layout, what a
torchvision or avalanche model has (--same-layout gives avalanche the channels-last copy too:
the difference then left is the libraries' own). Both train with
plain SGD (constant learning rate, no weight decay, momentum only with --momentum), batch 32,
the same epochs and seed, one head over all 10 classes, on the CPU with the same number of
threads. Per method and library the table shows Class-IL accuracy after the last task (mean
over the 5 tasks' test sets, argmax over all 10 classes; recomputed here by one function for
both, and checked against what each library reports) and the wall time of the whole run
(benchmark construction, training, the method's own work, every evaluation and, for mmcl, the
files its runner always writes: per-task checkpoints, progress and the report with its
heatmap), with the process's CPU time beside it. Runs alternate between the libraries, and
which one goes first alternates per method, after an untimed warm-up of each, so neither
profits from a warm cache. Both use one torch thread by default (--threads): on a small shared
machine two threads that other processes keep waiting make every step several times slower
and the timings erratic.

Matching the protocols. mmcl's runner evaluates every task before training and after each
task; the avalanche run does the same (`strategy.eval(test_stream)` before training and after
every experience). Both drop the last incomplete batch of an epoch (mmcl always does; avalanche
is given `drop_last=True`). Differences that remain, by method:

* every method: mmcl's Class-IL objective is cross-entropy over the classes seen so far (the
  head's columns of tasks 0..t; future classes are not in the softmax), avalanche's over all
  10 outputs, which also pushes the logits of classes not seen yet down. mmcl has no option
  for the latter. mmcl re-seeds the augmentation per item (`SeededItems`) and shuffles with its
  own generator, so the two runs see different crops and batch orders: a single seed's
  difference is partly noise (use --seeds for several).
* EWC (avalanche `EWC(mode="separate")`, mmcl "ewc" with `fisher="minibatch"`): avalanche's
  penalty is lambda * sum F (w - w*)^2, mmcl's lambda / 2 * the same sum, so mmcl gets
  lambda_ = 2 x --ewc-lambda. Both compute the same importance, avalanche's: in eval mode, the
  task's training images in batches of --batch-size (the last one smaller), the square of each
  batch's mean cross-entropy gradient with the true labels, averaged over the batches (a
  mini-batch empirical importance, not the Fisher), here over every image of the task
  (--fisher-samples; mmcl's own default is 256). What remains different: mmcl's cross-entropy
  is over the classes seen so far (see above), and it batches a seeded random order of the
  task's images where avalanche takes them in data-set order. mmcl's default estimator,
  `fisher="sample"` (the true Fisher, per-sample gradients of log p(y|x) with y drawn from the
  model), is what --ewc-fisher sample runs instead; it costs about one backward pass per image
  rather than per batch, and it is about 3x smaller in sum after this benchmark's short first
  task (the mean gradient is not small yet). The penalty's curvature, lr x 2 lambda x sum of
  the past tasks' importances, must stay below 2 for SGD to be stable; at lr 0.1 and lambda 10
  avalanche's run diverged here (non-finite weights by the last task; a run that diverges is
  marked in the table), hence the default of 1 (a weak pull in both). mmcl merges the past
  tasks' quadratics into one per weight (the same value and gradient; avalanche adds one term
  per weight and past task).
* LwF (avalanche `LwF(alpha, temperature)`, mmcl "lwf"): the same loss, alpha * KL(teacher ||
  student) of the old classes' logits at temperature T, batch mean, no T^2. mmcl's teacher is
  in eval mode (BatchNorm running statistics); avalanche's is a copy of the model in training
  mode (BatchNorm batch statistics, the teacher's running statistics drift).
* ER (avalanche `ReplayPlugin(mem_size)` on `Naive`, mmcl "er"): avalanche keeps an
  experience-balanced memory (random items, mem_size / experiences per experience), mmcl a
  reservoir sample of every item seen (the same per-task share in expectation, since the tasks
  are equally large). mmcl trains task t > 0 on the task's n items plus n replayed items,
  shuffled together, in batches of 32 (2n / 32 steps, half replay on average); avalanche's
  default `Replay` strategy would concatenate 32 new and 32 memory items (n / 32 steps of 64).
  To compare one protocol, the avalanche run uses `ReplayPlugin(batch_size=16,
  batch_size_mem=16)`: 16 + 16 per batch, 2n / 32 steps, exactly half replay; the first task
  (empty memory) trains with batches of 32 in both.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import machine_line, print_table
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from mmcl.continual.builtin import (
    MissingDataError,
    balanced_subset,
    labelled_images,
    shared_data_root,
)
from mmcl.continual.methods import build_method
from mmcl.continual.runner import run_continual
from mmcl.continual.scenarios import class_incremental
from mmcl.data.cifar import CIFAR10_MEAN, CIFAR10_STD
from mmcl.data.zeroshot import load_zero_shot_metadata
from mmcl.models.cifar_resnet import cifar_resnet18
from mmcl.train import TrainConfig

METHODS = ("finetune", "ewc", "lwf", "er")
N_TASKS = 5
CLASS_SPLITS = [[2 * t, 2 * t + 1] for t in range(N_TASKS)]
INSTALL = "pip install avalanche-lib -c <(printf 'torch==2.14.1\\ntorchvision==0.29.1\\n')"


# --- data: decoded once, shared by both libraries -------------------------------------------


class CifarTensors(Dataset):
    """``(normalised float image, label)`` from a uint8 ``(N, 3, 32, 32)`` tensor; with
    `augment`, a random 32-pixel crop of the image zero-padded by 4 pixels and a horizontal flip
    drawn from torch's global generator (which mmcl's `SeededItems` seeds per item).
    ``targets`` are the labels as ints, which both libraries read without loading images."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: bool):
        if images.dtype != torch.uint8 or images.shape[1:] != (3, 32, 32):
            raise ValueError(
                f"expected uint8 images (N, 3, 32, 32), got {images.dtype} {images.shape}"
            )
        self.images, self.augment = images, augment
        self.targets = [int(y) for y in labels]
        self.mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR10_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].float().div_(255)
        if self.augment:
            top, left = torch.randint(0, 9, (2,)).tolist()
            image = F.pad(image, (4, 4, 4, 4))[:, top : top + 32, left : left + 32]
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
        return (image - self.mean) / self.std, self.targets[index]


def load_split(split: str, per_class: int | None, seed: int, root=None):
    """CIFAR-10 `split` as (uint8 images, labels, class names): `per_class` images a class
    (None: all), the seeded class-balanced subset `seq_cifar10` also picks."""
    names = list(load_zero_shot_metadata("cifar10").classnames)
    found = labelled_images("cifar10", split, shared_data_root(root), False, names)
    keep = range(len(found.labels))
    if per_class is not None:
        rng = random.Random(f"seq-cifar10/{split}/{seed}")
        keep = balanced_subset(found.labels, per_class * len(names), rng)
    chosen = found.subset(keep, lambda image: np.asarray(image.convert("RGB")))
    images = np.stack([chosen[i][0] for i in range(len(chosen))])
    labels = [found.labels[i] for i in keep]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels), names


@torch.no_grad()
def class_il_accuracy(model, test: CifarTensors, batch_size: int = 256) -> list[float]:
    """Per task, top-1 accuracy over all 10 classes on the task's test images (eval mode)."""
    model.eval()
    predicted = torch.cat(
        [model(images).argmax(1) for images, _ in DataLoader(test, batch_size=batch_size)]
    )
    labels = torch.tensor(test.targets)
    correct = predicted == labels
    return [
        float(correct[torch.isin(labels, torch.tensor(s))].float().mean()) for s in CLASS_SPLITS
    ]


class Clock:
    """Wall time and this process's CPU time since creation (CPU time is what another user's
    load on a shared machine disturbs least)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> dict[str, float]:
        return {
            "seconds": time.perf_counter() - self.wall,
            "cpu_seconds": time.process_time() - self.cpu,
        }


# --- the two libraries ------------------------------------------------------------------------


def method_lr(args, method: str) -> float:
    return args.method_lr.get(method, args.lr)


def run_mmcl(method: str, model, train, test, names, args, seed: int) -> dict:
    arguments = {
        "finetune": {},
        "ewc": {
            "lambda_": 2 * args.ewc_lambda,
            "fisher_samples": args.fisher_samples,
            "fisher": args.ewc_fisher,
        },
        "lwf": {"lambda_": args.lwf_alpha, "temperature": args.lwf_temperature},
        "er": {"buffer_size": args.mem_size},
    }[method]
    with tempfile.TemporaryDirectory(prefix="mmcl-vs-avalanche-") as folder:
        clock = Clock()
        scenario = class_incremental(
            train,
            test,
            names,
            class_splits=CLASS_SPLITS,
            train_targets=train.targets,
            test_targets=test.targets,
            seed=seed,
            name="split-cifar10",
        )
        config = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            optimizer="sgd",
            momentum=args.momentum,
            lr=method_lr(args, method),
            weight_decay=0.0,
            schedule="cosine",  # with min_lr_ratio 1 and no warm-up: a constant rate
            warmup_steps=0,
            min_lr_ratio=1.0,
            precision="fp32",
            workers=0,
            seed=seed,
            output_dir=folder,
            checkpoint_every=None,
            progress=False,
            tensorboard=False,
        )
        result = run_continual(
            model,
            scenario,
            build_method(method, **arguments),
            config,
            Path(folder) / "run",
            eval_batch_size=args.eval_batch_size,
            progress=False,
        )
        return {**clock.read(), "reported": result.matrix[-1]}


def import_avalanche():
    """The avalanche pieces this benchmark uses, or exit saying how to install them."""
    try:
        with warnings.catch_warnings():  # its optional solvers' import-time warnings
            warnings.simplefilter("ignore")
            from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
            from avalanche.evaluation.metrics import accuracy_metrics
            from avalanche.training import EWC, LwF, Naive
            from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    except ImportError as error:
        sys.exit(
            f"this benchmark needs avalanche-lib ({error}). Install it without letting pip "
            f"replace torch:\n    {INSTALL}"
        )
    return {
        "class_incremental_benchmark": class_incremental_benchmark,
        "accuracy_metrics": accuracy_metrics,
        "EWC": EWC,
        "LwF": LwF,
        "Naive": Naive,
        "EvaluationPlugin": EvaluationPlugin,
        "ReplayPlugin": ReplayPlugin,
    }


@contextlib.contextmanager
def quiet_avalanche():
    """Without avalanche's notes on running without loggers and on its own deprecated
    internals (its `deprecated` decorator resets the warning filters, so they are dropped where
    they would be shown)."""
    with warnings.catch_warnings():
        show = warnings.showwarning

        def shown(message, category, *rest, **kwargs):
            text = str(message)
            if not text.startswith(("No loggers specified", "Call to deprecated")):
                show(message, category, *rest, **kwargs)

        warnings.showwarning = shown
        yield


def run_avalanche(av: dict, method: str, model, train, test, args, seed: int) -> dict:
    with quiet_avalanche():
        return _run_avalanche(av, method, model, train, test, args, seed)


def _run_avalanche(av: dict, method: str, model, train, test, args, seed: int) -> dict:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    clock = Clock()
    benchmark = av["class_incremental_benchmark"](
        {"train": train, "test": test}, class_order=list(range(10)), num_experiences=N_TASKS
    )
    common = {
        "model": model,
        "optimizer": torch.optim.SGD(
            model.parameters(), lr=method_lr(args, method), momentum=args.momentum
        ),
        "criterion": torch.nn.CrossEntropyLoss(),
        "train_mb_size": args.batch_size,
        "train_epochs": args.epochs,
        "eval_mb_size": args.eval_batch_size,
        "device": "cpu",
        "evaluator": av["EvaluationPlugin"](av["accuracy_metrics"](experience=True), loggers=[]),
    }
    if method == "finetune":
        strategy = av["Naive"](**common)
    elif method == "ewc":
        strategy = av["EWC"](ewc_lambda=args.ewc_lambda, mode="separate", **common)
    elif method == "lwf":
        strategy = av["LwF"](alpha=args.lwf_alpha, temperature=args.lwf_temperature, **common)
    else:  # er: half new, half memory items per batch of batch_size, as mmcl's ER
        half = args.batch_size // 2
        replay = av["ReplayPlugin"](args.mem_size, batch_size=half, batch_size_mem=half)
        strategy = av["Naive"](plugins=[replay], **common)
    rows = [_experience_accuracies(strategy.eval(benchmark.test_stream))]
    for experience in benchmark.train_stream:
        strategy.train(experience, eval_streams=[], drop_last=True)
        rows.append(_experience_accuracies(strategy.eval(benchmark.test_stream)))
    return {**clock.read(), "reported": rows[-1]}


def _experience_accuracies(metrics: dict) -> list[float]:
    found = {
        int(key.rsplit("Exp", 1)[1]): value
        for key, value in metrics.items()
        if key.startswith("Top1_Acc_Exp/eval_phase/test_stream")
    }
    return [found[e] for e in range(N_TASKS)]


# --- the comparison ---------------------------------------------------------------------------


def warm_up(av: dict, initial, train: CifarTensors, test: CifarTensors, names, args) -> None:
    """An untimed fine-tuning run of each library on a few images a class (first-use costs:
    kernel selection, the allocator, lazy imports such as mmcl's report plotting)."""
    pick = {"train": 16, "test": 4}
    small = []
    for split, data in (("train", train), ("test", test)):
        seen: dict[int, int] = {}
        keep = []
        for i, y in enumerate(data.targets):
            if seen.get(y, 0) < pick[split]:
                seen[y] = seen.get(y, 0) + 1
                keep.append(i)
        keep = torch.tensor(keep)
        small.append(
            CifarTensors(data.images[keep], torch.tensor(data.targets)[keep], data.augment)
        )
    settings = argparse.Namespace(**{**vars(args), "epochs": 1, "fisher_samples": 8})
    run_mmcl("finetune", copy.deepcopy(initial), *small, names, settings, 0)
    layout = torch.channels_last if args.same_layout else torch.contiguous_format
    run_avalanche(
        av, "finetune", copy.deepcopy(initial).to(memory_format=layout), *small, settings, 0
    )


def compare(args, av: dict) -> dict:
    results: dict = {m: {"mmcl": [], "avalanche": []} for m in args.methods}
    print("decoding CIFAR-10 ...", flush=True)
    decoded = time.perf_counter()
    train_images, train_labels, names = load_split("train", args.train_per_class, args.data_seed)
    test_images, test_labels, _ = load_split("test", args.test_per_class, args.data_seed)
    print(
        f"{len(train_labels)} train / {len(test_labels)} test images decoded in "
        f"{time.perf_counter() - decoded:.1f}s\n",
        flush=True,
    )
    train = CifarTensors(train_images, train_labels, augment=not args.no_augment)
    test = CifarTensors(test_images, test_labels, augment=False)
    for seed in args.seeds:
        torch.manual_seed(seed)
        initial = cifar_resnet18(10, width=args.width)
        if seed == args.seeds[0]:
            warm_up(av, initial, train, test, names, args)
        for position, method in enumerate(args.methods):
            order = ("mmcl", "avalanche") if position % 2 == 0 else ("avalanche", "mmcl")
            for library in order:
                model = copy.deepcopy(initial)
                if library == "avalanche" and not args.same_layout:
                    model = model.to(memory_format=torch.contiguous_format)
                if library == "mmcl":
                    run = run_mmcl(method, model, train, test, names, args, seed)
                else:
                    run = run_avalanche(av, method, model, train, test, args, seed)
                run["diverged"] = not all(bool(p.isfinite().all()) for p in model.parameters())
                run["per_task"] = class_il_accuracy(model, test, args.eval_batch_size)
                run["accuracy"] = sum(run["per_task"]) / N_TASKS
                gap = max(abs(a - b) for a, b in zip(run["per_task"], run["reported"], strict=True))
                if gap > 1e-6:
                    print(
                        f"  note: {library} reported {run['reported']}, recomputed {run['per_task']}"
                    )
                run["seed"] = seed
                results[method][library].append(run)
                print(
                    f"seed {seed} {method:<8} {library:<9} acc {100 * run['accuracy']:5.1f}  "
                    f"({' '.join(f'{100 * a:.0f}' for a in run['per_task'])})  "
                    f"{run['seconds']:6.1f}s (cpu {run['cpu_seconds']:.1f}s)"
                    f"{'  DIVERGED (non-finite weights)' if run['diverged'] else ''}",
                    flush=True,
                )
    return results


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _shown(values: list[float], scale: float, digits: int) -> str:
    mean, std = _mean_std([scale * v for v in values])
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(results: dict) -> tuple[list[str], list[list[str]], dict]:
    header = ["method", "mmcl acc", "avalanche acc", "acc diff", "mmcl s", "avalanche s"]
    header += ["speed ratio (mmcl/avalanche)", "cpu ratio"]
    rows, summary = [], {}
    for method, runs in results.items():
        ours, theirs = runs["mmcl"], runs["avalanche"]
        acc = [r["accuracy"] for r in ours], [r["accuracy"] for r in theirs]
        sec = [r["seconds"] for r in ours], [r["seconds"] for r in theirs]
        cpu = [r["cpu_seconds"] for r in ours], [r["cpu_seconds"] for r in theirs]
        diff = [a - b for a, b in zip(*acc, strict=True)]
        diverged = [sum(r["diverged"] for r in side) for side in (ours, theirs)]
        summary[method] = {
            "mmcl_accuracy": _mean_std(acc[0])[0],
            "avalanche_accuracy": _mean_std(acc[1])[0],
            "accuracy_diff": _mean_std(diff)[0],
            "mmcl_seconds": _mean_std(sec[0])[0],
            "avalanche_seconds": _mean_std(sec[1])[0],
            "wall_ratio": sum(sec[0]) / sum(sec[1]),
            "cpu_ratio": sum(cpu[0]) / sum(cpu[1]),
            "mmcl_diverged_runs": diverged[0],
            "avalanche_diverged_runs": diverged[1],
        }
        mark = [f" ({n} diverged)" if n else "" for n in diverged]
        rows.append(
            [
                method,
                _shown(acc[0], 100, 1) + mark[0],
                _shown(acc[1], 100, 1) + mark[1],
                f"{100 * summary[method]['accuracy_diff']:+.1f}",
                _shown(sec[0], 1, 1),
                _shown(sec[1], 1, 1),
                f"{summary[method]['wall_ratio']:.2f}",
                f"{summary[method]['cpu_ratio']:.2f}",
            ]
        )
    return header, rows, summary


def print_markdown(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS), help=f"from {', '.join(METHODS)}")
    parser.add_argument("--train-per-class", type=int, default=300, help="0: all 5,000")
    parser.add_argument("--test-per-class", type=int, default=100, help="0: all 1,000")
    parser.add_argument("--width", type=int, default=20, help="ResNet-18 width (20: GEM's)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per task")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument(
        "--method-lr", default="", help="per-method learning rates, e.g. ewc=0.03,lwf=0.05"
    )
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--no-augment", action="store_true", help="no crop/flip on either side")
    parser.add_argument(
        "--ewc-lambda",
        type=float,
        default=1.0,
        help="avalanche's ewc_lambda (mmcl: twice it); 10 diverges at lr 0.1 in avalanche",
    )
    parser.add_argument(
        "--fisher-samples", type=int, help="mmcl EWC's Fisher images (default: a whole task)"
    )
    parser.add_argument(
        "--ewc-fisher",
        choices=("minibatch", "sample"),
        default="minibatch",
        help="mmcl EWC's importance: minibatch (avalanche's) or sample (mmcl's default, the "
        "true Fisher)",
    )
    parser.add_argument(
        "--same-layout",
        action="store_true",
        help="give avalanche the channels-last model as well (default: PyTorch's NCHW)",
    )
    parser.add_argument("--lwf-alpha", type=float, default=1.0)
    parser.add_argument("--lwf-temperature", type=float, default=2.0)
    parser.add_argument("--mem-size", type=int, default=500, help="replay memory (items)")
    parser.add_argument("--seeds", default="0", help="comma-separated; one run per seed")
    parser.add_argument("--data-seed", type=int, default=0, help="which class-balanced subset")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both libraries (0: torch's default; 1, the default, avoids "
        "the oversubscription that makes a shared CPU's timings erratic)",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_per_class, args.test_per_class, args.width = 20, 10, 8
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; valid: {', '.join(METHODS)}")
    if args.batch_size < 2 or args.batch_size % 2:
        parser.error("--batch-size must be even (replay batches are half memory)")
    try:
        pairs = [p.split("=") for p in args.method_lr.split(",") if p.strip()]
        args.method_lr = {m.strip(): float(v) for m, v in pairs}
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error("--method-lr takes method=lr pairs, --seeds integers, comma-separated")
    if set(args.method_lr) - set(METHODS):
        parser.error(f"--method-lr: unknown methods {sorted(set(args.method_lr) - set(METHODS))}")
    for name in ("train_per_class", "test_per_class"):
        value = getattr(args, name)
        if value < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
        setattr(args, name, value or None)
    per_task = 2 * (args.train_per_class or 5000)
    args.fisher_samples = args.fisher_samples or per_task
    if per_task < args.batch_size:
        parser.error(f"{per_task} training images a task are fewer than one batch")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    av = import_avalanche()
    if args.threads:
        torch.set_num_threads(args.threads)
    import avalanche

    print(machine_line())
    print(f"mmcl vs avalanche-lib {avalanche.__version__}")
    per_class = (
        f"{args.train_per_class or 'all'} train / {args.test_per_class or 'all'} test a class"
    )
    lrs = ", ".join(f"{m} {method_lr(args, m):g}" for m in args.methods)
    print(
        f"split CIFAR-10, 5 tasks x 2 classes, {per_class}, ResNet-18 width {args.width}, "
        f"{args.epochs} epoch(s) a task, batch {args.batch_size}, SGD lr ({lrs}), momentum "
        f"{args.momentum:g}, {'no augmentation' if args.no_augment else 'crop + flip'}, "
        f"seeds {args.seeds}; EWC lambda {args.ewc_lambda:g} (mmcl lambda_ "
        f"{2 * args.ewc_lambda:g}, {args.ewc_fisher} importance on {args.fisher_samples} "
        f"images), LwF alpha {args.lwf_alpha:g} T {args.lwf_temperature:g}, replay memory "
        f"{args.mem_size}; avalanche's model "
        f"{'channels-last, as mmcl' if args.same_layout else 'NCHW, mmcl channels-last'}"
    )
    started = time.perf_counter()
    try:
        results = compare(args, av)
    except MissingDataError as error:
        sys.exit(f"{error}\n(this benchmark reads CIFAR-10 from the shared data folder)")
    header, rows, summary = table(results)
    print("\nterminal table:")
    print_table(header, rows)
    print("\nmarkdown:")
    print_markdown(header, rows)
    print(
        f"\n(acc: Class-IL accuracy after the last task, mean over the 5 tasks, %, mean ± std "
        f"over seeds when several; s: wall seconds of a whole run; ratios: mmcl's time / "
        f"avalanche's, wall and process CPU time, < 1: mmcl faster; total "
        f"{time.perf_counter() - started:.0f}s)"
    )
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine_line(),
                    "settings": settings,
                    "summary": summary,
                    "runs": results,
                },
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
