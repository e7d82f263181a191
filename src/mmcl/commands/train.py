"""`mmcl train`: train or fine-tune from a recipe (a shipped name or a YAML file)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(commands) -> None:
    train = commands.add_parser("train", help="train or fine-tune from a recipe (YAML)")
    train.add_argument("--config", help="a shipped recipe name (see --list) or a YAML file")
    train.add_argument("--list", action="store_true", help="list the shipped recipes")
    train.add_argument("--show", action="store_true", help="print the recipe and exit")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override an entry, e.g. --set train.lr=0.001 (repeatable)",
    )
    train.add_argument("--resume", help="checkpoint path, or 'latest' in the output folder")
    train.add_argument("--allow-schedule-change", action="store_true")
    train.add_argument("--output-dir", help="where logs, checkpoints and the model go")
    train.add_argument("--steps", type=int, help="total optimizer steps")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument(
        "--data-root",
        type=Path,
        help="folder holding the data sets a recipe names (kind: dataset): CIFAR-10/100 and "
        "MNIST as image folders or as torchvision leaves them (default: $MMCL_DATA_ROOT)",
    )
    train.add_argument(
        "--download", action="store_true", help="let torchvision download them there if absent"
    )
    train.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from mmcl.recipe import load_recipe, recipe_text, run_recipe, shipped_recipes

    if args.list:
        print("\n".join(shipped_recipes()))
        return 0
    if not args.config:
        raise ValueError("give --config NAME_OR_FILE (or --list)")
    if args.show:
        print(recipe_text(args.config)[0])
        return 0
    overrides = list(args.set)
    for key in ("resume", "output_dir", "steps"):
        if getattr(args, key) is not None:  # JSON: a folder named `2024` stays a string
            overrides.append(f"train.{key}={json.dumps(getattr(args, key))}")
    if args.allow_schedule_change:
        overrides.append("train.allow_schedule_change=true")
    if args.quiet:
        overrides.append("train.progress=false")
    recipe = load_recipe(args.config, overrides)
    result = run_recipe(recipe, data_root=args.data_root, download=args.download)
    print(
        f"trained {result.steps} steps in {result.seconds:.0f}s, final loss "
        f"{result.final_loss:.4f}, {result.skipped_samples} unreadable samples skipped"
    )
    for key, value in result.metrics.items():
        print(f"  {key}: {value:.4f}")
    print(f"model: {Path(recipe.train.output_dir) / 'model.safetensors'}")
    return 0
