"""BLIP on the built-in scenes: train the `blip-scenes` recipe, then caption held-out scenes.

    python benchmarks/blip_scenes.py                   # the recipe as shipped
    python benchmarks/blip_scenes.py --steps 20        # a smoke run
    python benchmarks/blip_scenes.py --model runs/blip-scenes   # evaluate a trained folder
    python benchmarks/blip_scenes.py --recipe coca-scenes --steps 300   # CoCa, same evaluation

Prints the training's wall-clock time, its CPU time (this process plus its data workers: a
single-thread run's CPU time bounds its wall time on a quiet machine, so it is the figure to
read on a shared one) and the load average around it, then one table: the captioner's greedy captions ("a picture of ...")
beside the nearest-neighbour baseline (the caption of the most similar training image under the
same model's ITC), each scored by attribute accuracy (shape, colour, count), BLEU-4 and CIDEr-D
against 5 truthful references per held-out scene (`mmcl.eval.scene_captioning`). The issue's
target: training within 10 minutes on a 2-core CPU, colour >= 90% and shape >= 80%, and
CIDEr-D at or above the baseline.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import torch

import mmcl
from mmcl.eval.scene_captioning import scene_captioning_table
from mmcl.recipe import load_recipe, run_recipe

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine_line, print_table  # noqa: E402

COLUMNS = ("colour", "shape", "count", "bleu4", "cider_d")


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the data workers,
    joined when their loader runs out)."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def load_text() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a trained model folder: evaluate it, train nothing")
    parser.add_argument("--recipe", default="blip-scenes", help="a captioner's scene recipe")
    parser.add_argument("--steps", type=int, help="train this many steps (default: the recipe's)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe override"
    )
    parser.add_argument("--output-dir", help="default: runs/<recipe>-benchmark")
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--train-size", type=int, default=2000, help="the baseline's pool")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    if args.model is None:
        args.output_dir = args.output_dir or f"runs/{args.recipe}-benchmark"
        overrides = [f"train.output_dir={args.output_dir}", "train.progress=false"]
        if args.steps:
            overrides.append(f"train.steps={args.steps}")
        recipe = load_recipe(args.recipe, overrides + args.set)
        # One pass over the data, as the recipe's: the loader runs out with the last step, so its
        # worker is joined and its CPU time counted.
        recipe.data["size"] = recipe.train.steps * recipe.train.batch_size
        recipe.eval = {}  # evaluated below, outside the timed training
        print(f"before training: {load_text()}")
        start, cpu_start = time.perf_counter(), cpu_seconds()
        result = run_recipe(recipe)
        wall, cpu = (time.perf_counter() - start) / 60, (cpu_seconds() - cpu_start) / 60
        print(
            f"trained {result.steps} steps x {recipe.train.batch_size} in {wall:.1f} min wall, "
            f"{cpu:.1f} min CPU (model built, data, training); after: {load_text()}"
        )
        args.model = args.output_dir
    model, _ = mmcl.load(args.model)
    start = time.perf_counter()
    table = scene_captioning_table(model, args.test_size, args.train_size)
    print(f"evaluated {args.test_size} held-out scenes in {time.perf_counter() - start:.0f} s")
    rows = [
        [who, *(f"{100 * table[key][c]:.1f}%" for c in COLUMNS[:3]),
         f"{table[key]['bleu4']:.3f}", f"{table[key]['cider_d']:.3f}"]
        for who, key in ((f"{type(model).__name__} greedy captions", "captioner"),
                         ("nearest-neighbour baseline (ITC)", "nearest_neighbour"))
    ]  # fmt: skip
    print_table(["", "colour", "shape", "count", "BLEU-4", "CIDEr-D"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
