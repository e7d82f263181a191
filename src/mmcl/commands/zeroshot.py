"""`mmcl zeroshot`: a folder of class subfolders -> zero-shot accuracy, overall and per class."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmcl.commands.options import (
    add_input_arguments,
    add_model_arguments,
    add_tokenizer_argument,
    check_output_file,
    command_text,
    embed_image_files,
    image_reading,
    load_model,
    write_json,
)
from mmcl.io.tables import print_table
from mmcl.io.text_files import read_text


def add_parser(commands) -> None:
    zeroshot = commands.add_parser("zeroshot", help="class-folder images -> accuracy table")
    add_model_arguments(zeroshot)
    add_input_arguments(zeroshot)
    add_tokenizer_argument(zeroshot)
    zeroshot.add_argument("--data", type=Path, required=True, help="folder of class subfolders")
    zeroshot.add_argument(
        "--dataset",
        help="take class names and templates from this shipped data set "
        "(e.g. cifar10, mnist, imagenet); folder names must be its class names",
    )
    zeroshot.add_argument(
        "--templates",
        help="a shipped data set's templates, or a text file with one "
        "template per line using {} for the class name (default: 'a photo of a {}.')",
    )
    zeroshot.add_argument("--report", type=Path, help="also write the results as JSON here")
    zeroshot.set_defaults(handler=run_zeroshot)


def run_zeroshot(args: argparse.Namespace) -> int:
    import torch

    from mmcl.data.images import class_folders
    from mmcl.data.zeroshot import load_zero_shot_metadata
    from mmcl.eval.zero_shot import accuracy, build_zero_shot_classifier

    paths, labels, folders = class_folders(args.data)
    classnames = [folder.replace("_", " ") for folder in folders]
    templates = ["a photo of a {}."]
    if args.dataset:
        metadata = load_zero_shot_metadata(args.dataset)
        lookup = {name.lower(): name for name in metadata.classnames}
        unknown = [f for f in folders if f.replace("_", " ").lower() not in lookup]
        if unknown:
            raise ValueError(
                f"{args.data}: folders {unknown} are not {metadata.name} class names "
                f"(e.g. {metadata.classnames[:5]})"
            )
        classnames = [lookup[f.replace("_", " ").lower()] for f in folders]
        templates = list(metadata.templates)
    if args.templates:
        templates = read_templates(args.templates)
    check_output_file(args.report, "--report")
    reading = image_reading(args)
    model = load_model(args)
    classifier = build_zero_shot_classifier(
        model,
        command_text(args, model).tokens,
        classnames,
        templates,
        device=args.device,
        progress=not args.quiet,
    )
    with reading:
        result = embed_image_files(args, model, paths, labels)
    targets = torch.tensor(labels)[result.indices]
    logits = result.features @ classifier.float().cpu()
    overall = accuracy(logits, targets, topk=(1, 5))
    predictions = logits.argmax(dim=1)
    rows = []
    per_class = {}
    for label, name in enumerate(classnames):
        mask = targets == label
        count = int(mask.sum())
        top1 = float((predictions[mask] == label).float().mean()) if count else float("nan")
        per_class[name] = {"top1": top1, "count": count}
        rows.append([name, str(count), f"{100 * top1:.2f}"])
    rows.append(["(all)", str(len(targets)), f"{100 * overall['top1']:.2f}"])
    print_table(["class", "images", "top-1 %"], rows)
    print(
        f"top-1 {100 * overall['top1']:.2f}%  top-5 {100 * overall['top5']:.2f}%  "
        f"({len(targets)} images, {len(templates)} templates, {result.skipped} skipped)"
    )
    if args.report:
        write_json(
            args.report,
            {
                "overall": overall,
                "per_class": per_class,
                "images": len(targets),
                "skipped": result.skipped,
            },
        )
    return 0


def read_templates(spec: str) -> list[str]:
    from mmcl.data.zeroshot import load_zero_shot_metadata

    path = Path(spec)
    if path.is_file():
        templates = [line for line in read_text(path, "templates file").splitlines() if line]
        if not templates:
            raise ValueError(f"{path}: no templates in the file")
        return templates
    return list(load_zero_shot_metadata(spec).templates)
