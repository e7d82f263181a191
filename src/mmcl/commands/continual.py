"""`mmcl continual`: run a continual-learning method on a task stream, or compare several.

mmcl continual --scenario mini-mtil --method zscl --output-dir runs/zscl
mmcl continual --scenario scenes-cil --method er+lwf --method-args er.buffer_size=200,lwf.lambda_=1
mmcl continual compare --scenario mini-mtil --methods frozen,finetune,lwf,zscl,moe_adapters
mmcl continual compare --scenario scenes-cil --methods ewc,lwf+ewc --method-args ewc.lambda_=100
mmcl continual compare --scenario scenes-cil --methods finetune,lwf --seeds 3
mmcl continual --scenario scene-styles --method lwf --held-out shape,colour
mmcl continual --scenario vqa-functions --model runs/llava-scenes/hf --method finetune
mmcl continual --scenario llava-json --task-files a.json,b.json --image-folder images \
    --model llava-scenes-stage1 --method finetune
mmcl continual list
mmcl continual describe ewc
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmcl.choices import PRECISION_NAMES

TRAINING_FLAGS = {  # flag -> TrainConfig field
    "steps": "steps",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "optimizer": "optimizer",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
    "precision": "precision",
    "checkpoint_every": "checkpoint_every",
    "log_every": "log_every",
    "workers": "workers",
    "seed": "seed",
}


def add_parser(commands) -> None:
    continual = commands.add_parser(
        "continual",
        help="continual learning: run a method on a task stream (or `compare`, `list`)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(continual)
    continual.add_argument("--method", help="method name; a+b composes (see `mmcl continual list`)")
    continual.add_argument(
        "--method-args",
        metavar="METHOD.KEY=VALUE,...",
        help="the method's arguments, e.g. ewc.lambda_=100 (a bare KEY goes to the first part "
        "that takes it; see `mmcl continual describe METHOD`)",
    )
    continual.set_defaults(handler=run_one, command="continual")
    actions = continual.add_subparsers(dest="action")
    compare = actions.add_parser("compare", help="several methods on one stream, one table")
    add_run_arguments(compare)
    compare.add_argument("--methods", required=True, help="comma-separated method names")
    compare.add_argument(
        "--method-args",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE,...",
        help="e.g. ewc.lambda_=100: for every compared method with an ewc part (repeatable)",
    )
    compare.add_argument(
        "--seeds",
        metavar="N|S,S,...",
        help="run each method once per seed (a count N: seeds 0..N-1; or a list), in "
        "<output>/<method>/seed_<s>; the seed sets the stream (class order, items drawn), "
        "training and initialisation; the table shows mean ± sample std (n-1)",
    )
    compare.set_defaults(handler=run_compare, command="continual compare")
    # The stream and training options may come before `compare` as well as after it. argparse
    # would overwrite the ones given before with the subcommand's defaults, silently: the
    # subcommand leaves unset what it was not given, and the defaults come from before.
    for action in compare._actions:
        if action.dest in RUN_DESTS:
            action.default = argparse.SUPPRESS
    listing = actions.add_parser("list", help="list scenarios and methods")
    listing.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    listing.set_defaults(handler=run_list, command="continual list")
    describing = actions.add_parser(
        "describe", help="a method's arguments (types, defaults), summary and paper"
    )
    describing.add_argument("name", metavar="METHOD", help="a method name (see `list`)")
    describing.set_defaults(handler=run_describe, command="continual describe")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    before = {action.dest for action in parser._actions}
    _add_run_arguments(parser)
    RUN_DESTS.update({action.dest for action in parser._actions} - before)


RUN_DESTS: set[str] = {"method_args"}  # the options `compare` shares with a single run


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", default="mini-mtil", help="task stream (default mini-mtil)")
    parser.add_argument(
        "--model",
        default="scenes-pretrained",
        help="scenes-pretrained (default: cached tiny CLIP), a checkpoint path, a model name, "
        "or a plain classifier: cifar-resnet18 (-reduced: GEM's width 20); for an "
        "instruction stream a LLaVA folder with its tokenizer, or a LLaVA recipe",
    )
    parser.add_argument("--output-dir", type=Path, help="where reports and checkpoints go")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument(
        "--train-size",
        type=int,
        help="training items: per task for mini-mtil (default 2000) and scene-styles (default "
        "1000, test 200); for the class-incremental "
        "scenarios, of the whole stream, each task keeping the items of its classes: "
        "scenes-cil a quarter each (default 2000), cifar10-cil and seq-cifar10 a fifth "
        "(class-balanced; defaults 2000 and every image)",
    )
    parser.add_argument("--test-size", type=int, help="test items, counted like --train-size")
    parser.add_argument(
        "--data-root",
        type=Path,
        help="folder holding CIFAR-10 / MNIST as image folders (cifar10/train/<class>/...) or "
        "as torchvision leaves them (cifar-10-batches-py/, MNIST/raw/) (default: "
        "$MMCL_DATA_ROOT)",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download CIFAR-10 / MNIST into the data root if they are not there",
    )
    parser.add_argument(
        "--tasks",
        help="the tasks, in order, comma-separated (mini-mtil, scene-styles, vqa-functions, "
        "vqa-scenes, instructions; see `mmcl continual list`)",
    )
    parser.add_argument(
        "--shuffle-order",
        action="store_true",
        help="mini-mtil: train the tasks in an order drawn from the seed (each of --seeds its "
        "own; with --seed S, the stream's seed is S too) instead of the fixed order",
    )
    parser.add_argument(
        "--task-files",
        help="llava-json: LLaVA-format conversation files, one a task, comma-separated",
    )
    parser.add_argument("--image-folder", type=Path, help="llava-json: where their images are")
    parser.add_argument(
        "--general-size",
        type=int,
        help="instruction streams: items in each general set (held-out scene captioning and "
        "scene VQA; default 100; 0: not measured)",
    )
    parser.add_argument(
        "--held-out",
        metavar="VIEW,...",
        help="scene-styles: scene views scored zero-shot after every task, none of them a task "
        "(shape, colour, count, position; --test-size items each)",
    )
    parser.add_argument("--steps", type=int, help="optimizer steps per task (default 100)")
    parser.add_argument("--epochs", type=int, help="epochs per task (instead of --steps)")
    parser.add_argument("--batch-size", type=int, help="per process (default 64)")
    parser.add_argument("--lr", type=float, help="learning rate (default 1e-4)")
    parser.add_argument("--optimizer", choices=["adamw", "sgd"], help="default adamw")
    parser.add_argument("--momentum", type=float, help="SGD momentum (default 0)")
    parser.add_argument("--weight-decay", type=float, help="default 0.1")
    parser.add_argument("--precision", choices=PRECISION_NAMES)
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    parser.add_argument("--log-every", type=int, help="steps between log lines (default 10)")
    parser.add_argument("--workers", type=int, help="data loading processes")
    parser.add_argument("--seed", type=int, help="training seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


# --tasks: the scenario argument that chooses and orders its tasks.
TASK_ARGUMENTS = {
    "mini-mtil": "tasks",
    "scene-styles": "styles",
    "vqa-functions": "functions",
    "vqa-scenes": "styles",
    "instructions": "tasks",
}


def _options(args: argparse.Namespace) -> dict:
    training = {
        field: getattr(args, flag)
        for flag, field in TRAINING_FLAGS.items()
        if getattr(args, flag) is not None
    }
    if args.epochs is not None and args.steps is None:
        training["steps"] = None  # epochs decide the length
    scenario_args = {
        key: getattr(args, key)
        for key in ("train_size", "test_size", "data_root")
        if getattr(args, key) is not None
    }
    if args.download:
        scenario_args["download"] = True
    if args.general_size is not None:
        scenario_args["general_size"] = args.general_size
    if args.tasks:
        if args.scenario not in TASK_ARGUMENTS:
            raise ValueError(
                f"--tasks: scenario {args.scenario!r} has a fixed task list; --tasks applies to "
                f"{', '.join(TASK_ARGUMENTS)}"
            )
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        scenario_args[TASK_ARGUMENTS[args.scenario]] = tasks
    if args.shuffle_order:
        if args.scenario != "mini-mtil":
            raise ValueError(
                f"--shuffle-order: scenario {args.scenario!r} has no task order to draw; it "
                f"applies to mini-mtil"
            )
        scenario_args["shuffle_order"] = True
        if args.seed is not None:  # the seed decides the order, as each of --seeds does
            scenario_args["seed"] = args.seed
    if args.held_out:
        if args.scenario != "scene-styles":
            raise ValueError(
                f"--held-out: scenario {args.scenario!r} has no held-out sets; it applies to "
                f"the captioned stream scene-styles"
            )
        scenario_args["held_out"] = [v.strip() for v in args.held_out.split(",") if v.strip()]
    if args.task_files:
        scenario_args["files"] = [f.strip() for f in args.task_files.split(",") if f.strip()]
    if args.image_folder is not None:
        scenario_args["images"] = args.image_folder
    return {
        "model": args.model,
        "training": training,
        "scenario_args": scenario_args,
        "progress": not args.quiet,
    }


def run_one(args: argparse.Namespace) -> int:
    from mmcl.continual.experiments import parse_method_args, run_experiment

    if args.action is None and not args.method:
        raise ValueError("give --method NAME (see `mmcl continual list`), or use `compare`")
    output = args.output_dir or Path("runs") / "continual" / f"{args.scenario}-{args.method}"
    result = run_experiment(
        args.scenario,
        args.method,
        output,
        parse_method_args(args.method_args),
        resume=args.resume,
        **_options(args),
    )
    print((output / "report.md").read_text() if (output / "report.md").exists() else result)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from mmcl.continual.comparison import COMPARISON_CSV, COMPARISON_MD, compare, seeds_note
    from mmcl.continual.experiments import parse_method_args
    from mmcl.continual.report import compare_table
    from mmcl.continual.seeds import parse_seeds

    if args.method:
        raise ValueError(
            f"--method {args.method} with `compare`: compare runs the methods of --methods"
        )
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ValueError("--methods is empty")
    if isinstance(args.method_args, str):  # given before `compare`
        args.method_args = [args.method_args]
    method_args: dict[str, dict] = {}
    for key, value in parse_method_args(",".join(args.method_args or [])).items():
        part, dot, _ = key.partition(".")
        if not dot:
            raise ValueError(
                f"--method-args {key}={value}: name the method it is for, as "
                f"METHOD.KEY=VALUE (e.g. ewc.{key}={value})"
            )
        owners = [m for m in methods if part in m.split("+")]
        if not owners:
            raise ValueError(
                f"--method-args {key}={value}: no method in --methods ({', '.join(methods)}) "
                f"has a part {part!r}"
            )
        for owner in owners:
            method_args.setdefault(owner, {})[key] = value
    seeds = None if args.seeds is None else parse_seeds(args.seeds)
    if seeds is not None and args.seed is not None:
        raise ValueError("--seed and --seeds: --seeds sets the seed of every run; give one")
    output = args.output_dir or Path("runs") / "continual" / f"{args.scenario}-compare"
    reports = compare(args.scenario, methods, output, method_args, seeds, **_options(args))
    print(compare_table(reports))
    if seeds_note(reports):
        print(seeds_note(reports))
    print(f"saved as {output / COMPARISON_MD} and {output / COMPARISON_CSV}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from mmcl.continual.experiments import SCENARIOS
    from mmcl.continual.methods import METHODS

    print("scenarios:")
    for name, builder in sorted(SCENARIOS.items()):
        print(f"  {name:14s} {_first_line(builder.__doc__)}")
    print("methods (compose with +):")
    for name, method in sorted(METHODS.items()):
        print(f"  {name:14s} {_first_line(sys.modules[method.__module__].__doc__)}")
    return 0


def run_describe(args: argparse.Namespace) -> int:
    from mmcl.continual.methods import METHODS, build_method
    from mmcl.continual.methods.arguments import describe_method

    names = [part.strip() for part in args.name.split("+") if part.strip()]
    build_method(args.name)  # an unknown name: the error that suggests a close one
    print("\n\n".join(describe_method(name, METHODS[name]) for name in names))
    return 0


def _first_line(doc: str | None, width: int = 90) -> str:
    """The docstring's first paragraph on one line, shortened to `width` characters."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    return paragraph if len(paragraph) <= width else paragraph[: width - 3].rstrip() + "..."
