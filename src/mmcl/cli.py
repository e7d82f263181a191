"""The `mmcl` command: models, embed, index, zeroshot, retrieval, convert, train, continual.

mmcl models
mmcl embed --model tiny-vit --images photos/ --output photos.npy
mmcl index --features photos.npy --output photos.index
mmcl zeroshot --model ViT-B-32 --pretrained ViT-B-32.pt --data cifar10/test --dataset cifar10
mmcl retrieval --model ViT-B-32 --pretrained ViT-B-32.pt --captions captions.csv
mmcl convert ViT-B-32.pt clip-vit-b32-hf --to hf
mmcl train --config demo
mmcl continual --scenario mini-mtil --method zscl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

import mmcl
from mmcl import cli_continual
from mmcl.choices import (
    DEFAULT_INDEX_THRESHOLD,
    HIGH_BIT_DEPTH_CHOICES,
    INDEX_KINDS,
    PRECISION_NAMES,
)
from mmcl.io.atomic import atomic_path
from mmcl.io.tables import print_table
from mmcl.io.text_files import read_text

# Building the parser imports nothing heavy: torch and the rest load when a command runs, so
# `mmcl --help` and argument errors answer at once (tests/test_cli_startup.py holds it to that).
EXPORT_FORMATS = {
    "mmcl": "save_safetensors",
    "open_clip": "save_open_clip",
    "hf": "save_huggingface",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:  # CheckpointError is a ValueError
        print(f"mmcl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`mmcl models | head`): stop quietly, as other Unix tools do.
        # stdout goes to devnull so that Python's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmcl", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"mmcl {mmcl.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list model names")
    models.add_argument("--filter", default="", help="only names containing this text")
    models.add_argument(
        "--pretrained",
        action="store_true",
        help="list the pretrained tags (create_model(name, pretrained=tag), --pretrained TAG), "
        "their Hugging Face repositories and whether the cache holds them",
    )
    models.set_defaults(handler=run_models)

    embed = commands.add_parser("embed", help="images or texts -> .npy / .safetensors")
    add_model_arguments(embed)
    add_input_arguments(embed)
    source = embed.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="folder of images (searched recursively)")
    source.add_argument("--texts", type=Path, help="text file, one text per line")
    embed.add_argument(
        "--output",
        type=Path,
        required=True,
        help="file.npy or file.safetensors (row names go to <output>.index.txt)",
    )
    embed.add_argument(
        "--part-size",
        type=int,
        default=4096,
        help="images: write finished parts of this many images to <output>.parts/ as they "
        "come; a rerun after an interruption computes only the missing parts",
    )
    embed.add_argument(
        "--keep-parts", action="store_true", help="keep <output>.parts/ after joining them"
    )
    embed.set_defaults(handler=run_embed)

    index = commands.add_parser("index", help="embed outputs -> a FAISS search index folder")
    index.add_argument(
        "--features",
        type=Path,
        required=True,
        help="an `mmcl embed --images` output (.npy or .safetensors, with its .index.txt and "
        ".embedding.json)",
    )
    index.add_argument(
        "--output",
        type=Path,
        required=True,
        help="the index folder: created, or, when it holds an index of the same model, "
        "updated with the files new in --features",
    )
    index.add_argument(
        "--kind",
        choices=INDEX_KINDS,
        default="auto",
        help="flat: exact; ivf / hnsw: approximate, recall@10 measured and printed; auto: flat "
        "up to --threshold rows, ivf above",
    )
    index.add_argument("--threshold", type=int, default=DEFAULT_INDEX_THRESHOLD, metavar="ROWS")
    index.add_argument("--nlist", type=int, help="IVF cells (default 4 sqrt(rows))")
    index.add_argument("--nprobe", type=int, help="IVF cells searched a query (default nlist/10)")
    index.add_argument("--ef-search", type=int, default=64, help="HNSW candidates a query")
    index.add_argument(
        "--recall-queries", type=int, default=200, help="rows sampled to measure recall@10"
    )
    index.add_argument(
        "--rebuild",
        action="store_true",
        help="build afresh (needed when files were removed or changed, or the model differs)",
    )
    index.add_argument("--quiet", action="store_true", help="print nothing when it succeeds")
    index.set_defaults(handler=run_index)

    zeroshot = commands.add_parser("zeroshot", help="class-folder images -> accuracy table")
    add_model_arguments(zeroshot)
    add_input_arguments(zeroshot)
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

    retrieval = commands.add_parser("retrieval", help="images + captions CSV -> recall@k")
    add_model_arguments(retrieval)
    add_input_arguments(retrieval)
    retrieval.add_argument(
        "--captions",
        type=Path,
        required=True,
        help="CSV (or .tsv) with columns image,caption, UTF-8 (one row per caption; paths "
        "relative to --images or to the table's folder)",
    )
    retrieval.add_argument("--images", type=Path, help="folder the image paths are relative to")
    retrieval.add_argument("--report", type=Path, help="also write the results as JSON here")
    retrieval.set_defaults(handler=run_retrieval)

    convert = commands.add_parser("convert", help="convert a checkpoint between formats")
    convert.add_argument("input", type=Path, help="checkpoint file or Hugging Face folder")
    convert.add_argument("output", type=Path, help="file (mmcl, open_clip) or folder (hf)")
    convert.add_argument("--to", choices=sorted(EXPORT_FORMATS), required=True)
    convert.add_argument(
        "--model",
        help="model name, when the input does not record it (an open_clip state dict does not "
        "record its activation: e.g. ViT-B-32 is GELU, ViT-B-32-quickgelu QuickGELU)",
    )
    convert.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output file; with --to hf, write into a non-empty folder, "
        "replacing only the files it writes (model, tokenizer and image processor files; "
        "other files stay)",
    )
    convert.set_defaults(handler=run_convert)

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
    cli_continual.add_parser(commands)
    return parser


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model name (see `mmcl models`)")
    parser.add_argument(
        "--pretrained",
        help="checkpoint file or folder, a pretrained tag of --model (see `mmcl models "
        "--pretrained`), or hf-hub:ORG/NAME; tags and hf-hub go through the Hugging Face "
        "cache (HF_HOME, HF_HUB_OFFLINE)",
    )
    parser.add_argument("--precision", default="fp32", choices=PRECISION_NAMES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="image decoding processes")
    parser.add_argument(
        "--streams",
        type=int,
        default=1,
        help="CPU: encode each image batch as this many parts side by side, each on its share "
        "of the threads (more images/s at large batches)",
    )
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable images")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """How the user's image files are read (embed, zeroshot, retrieval)."""
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        metavar="N",
        help="images of more pixels are unreadable, like a corrupt file: a small file can "
        f"claim 100000 x 100000 pixels (default: Pillow's limit, {Image.MAX_IMAGE_PIXELS}; "
        "0: no limit)",
    )
    parser.add_argument(
        "--high-bit-depth",
        choices=HIGH_BIT_DEPTH_CHOICES,
        default="scale",
        help="images of more than 8 bits a sample (16-bit PNGs): scale them to 8 bits "
        "(default), or refuse them as unreadable",
    )


def image_reading(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """The pixel limit of --max-image-pixels, in force while the command reads images."""
    from mmcl.data.images import pixel_limit

    limit = args.max_image_pixels
    if limit is None:
        return contextlib.nullcontext()
    if limit < 0:
        raise ValueError(f"--max-image-pixels must be 0 (no limit) or positive, got {limit}")
    return pixel_limit(limit or None)


def check_output_file(path: Path | None, flag: str) -> None:
    """Refuse an output path that cannot be written before any work is done."""
    if path is None:
        return
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file path")
    folder = next((p for p in path.parents if p.exists()), Path("."))
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot write in {folder}")


def load_model(args: argparse.Namespace):
    if args.model is None and args.pretrained is None:
        raise ValueError("give --model NAME, --pretrained PATH, or both")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if args.streams < 1:
        raise ValueError(f"--streams must be positive, got {args.streams}")
    model = create_model_for_command(
        args, args.model, args.pretrained, precision=args.precision, device=args.device
    )
    if args.pretrained is None:
        # Here, unlike in create_model (where training from scratch starts), random weights
        # are a mistake: the results would look like results and mean nothing.
        print(
            f"mmcl {args.command}: warning: no --pretrained checkpoint: {args.model} has random "
            f"weights, so these results mean nothing",
            file=sys.stderr,
        )
    if args.precision != "fp32":  # inference only: swap in the fast modules (mmcl.nn.accelerate)
        from mmcl.nn import accelerate

        model = accelerate(model.requires_grad_(False))
    return model


def create_model_for_command(
    args: argparse.Namespace, name: str | None, pretrained: str | Path | None, **options
):
    """`create_model`, with what it says in Python's terms said in the command line's."""
    import warnings

    from mmcl.models.factory import (
        ActivationAssumedWarning,
        ArchitectureNotRecordedError,
        create_model,
    )

    with warnings.catch_warnings(record=True) as caught:
        try:
            model = create_model(name, pretrained=pretrained, **options)
        except ArchitectureNotRecordedError as error:
            raise ValueError(
                f"{error.path}: the file does not record its architecture; name it with "
                f"--model (e.g. --model ViT-B-32; `mmcl models` lists the names)"
            ) from None
    for warning in caught:
        if not isinstance(warning.message, ActivationAssumedWarning):
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
            continue
        gelu = [n for n in warning.message.names if not n.endswith("-quickgelu")]
        choices = [f"--model {n} for GELU" for n in gelu[:1]]
        choices += [f"--model {n} for QuickGELU" for n in warning.message.names if n not in gelu]
        print(
            f"mmcl {args.command}: warning: {warning.message.path} does not record its "
            f"activation; assumed QuickGELU (as in OpenAI's models), but open_clip's own models "
            f"use GELU: pass {' or '.join(choices[:2]) or '--model NAME'}",
            file=sys.stderr,
        )
    return model


def embed_image_files(
    args: argparse.Namespace, model, paths: list[Path], labels: list[int] | None = None
):
    """`embed_images` of the files with the command's batch, workers, device, streams,
    progress and way of reading images."""
    from mmcl.data.images import ImageFiles
    from mmcl.eval.embed import embed_images
    from mmcl.io.transforms import get_preprocess

    dataset = ImageFiles(
        paths,
        get_preprocess(model),
        labels,
        skip_bad=args.skip_bad,
        high_bit_depth=args.high_bit_depth,
    )
    return embed_images(
        model,
        dataset,
        args.batch_size,
        args.workers,
        args.device,
        progress=not args.quiet,
        streams=args.streams,
    )


def write_json(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2))


# --- commands --------------------------------------------------------------------------------


def run_models(args: argparse.Namespace) -> int:
    from mmcl.models.registry import OPENAI_ALIASES, available_models, get_model_config

    if args.pretrained:
        return list_pretrained_tags(args.filter)
    aliases = {}
    for alias, target in OPENAI_ALIASES.items():
        aliases.setdefault(target, []).append(alias)
    rows = []
    for name in available_models():
        if args.filter.lower() not in name.lower():
            continue
        config = get_model_config(name)
        vision = config["vision_cfg"]
        tower = "ViT" if vision.get("patch_size") else "ModifiedResNet"
        rows.append(
            [
                name,
                tower,
                str(vision["image_size"]),
                str(config["embed_dim"]),
                ", ".join(aliases.get(name, [])),
            ]
        )
    print_table(["name", "image tower", "image size", "embed dim", "also known as"], rows)
    return 0


def list_pretrained_tags(name_filter: str) -> int:
    """`mmcl models --pretrained`: the tags, with their repositories and cache state."""
    from mmcl.io.hub import cache_folder, cached_file
    from mmcl.models.pretrained import pretrained_tags

    rows = [
        [
            entry.model,
            entry.tag,
            entry.activation,
            f"{entry.repo} {entry.filename}",
            "yes" if cached_file(entry.repo, entry.filename) else "no",
        ]
        for entry in pretrained_tags()
        if name_filter.lower() in entry.model.lower()
    ]
    print_table(["name", "tag", "activation", "Hugging Face file", "cached"], rows)
    print(
        f"cache: {cache_folder()} (HF_HOME / HF_HUB_CACHE); "
        "names ending in -quickgelu take the QuickGELU tags of their base name"
    )
    return 0


def run_embed(args: argparse.Namespace) -> int:
    from mmcl.data.images import list_images
    from mmcl.eval.embed import embed_texts, save_features
    from mmcl.io.tokenizer import get_tokenizer

    if args.output.suffix not in (".npy", ".safetensors"):
        raise ValueError(f"--output must end in .npy or .safetensors, got {args.output}")
    check_output_file(args.output, "--output")
    reading = image_reading(args)
    if args.part_size < 1:
        raise ValueError(f"--part-size must be positive, got {args.part_size}")
    if args.images is not None:
        with reading:
            paths = list_images(args.images)
            if not paths:
                raise ValueError(f"{args.images}: no image files found")
            return embed_folder(args, load_model(args), paths)
    model = load_model(args)
    texts = read_text(args.texts, "texts file").splitlines()
    features = embed_texts(
        model,
        texts,
        get_tokenizer(model.context_length),
        args.batch_size,
        args.device,
        progress=not args.quiet,
    )
    index = save_features(args.output, features, texts)
    rows, dim = features.shape
    print(f"wrote {rows} x {dim} features to {args.output} (row names in {index})")
    return 0


def embed_folder(args: argparse.Namespace, model, paths: list[Path]) -> int:
    """`mmcl embed --images`: the image files into --output, part by part."""
    from mmcl.eval.embed_folder import embed_image_folder

    result = embed_image_folder(
        model,
        paths,
        args.output,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        part_size=args.part_size,
        skip_bad=args.skip_bad,
        keep_parts=args.keep_parts,
        settings={"precision": args.precision},
        source={"model": args.model, "pretrained": args.pretrained},
        progress=not args.quiet,
        streams=args.streams,
        high_bit_depth=args.high_bit_depth,
    )
    if result.parts_reused:
        print(f"reused {result.parts_reused} finished part(s) of an earlier run")
    if result.skipped:
        shown = ", ".join(str(path) for path in result.skipped[:10])
        more = f" and {len(result.skipped) - 10} more" if len(result.skipped) > 10 else ""
        print(f"skipped {len(result.skipped)} unreadable image(s): {shown}{more}", file=sys.stderr)
    print(
        f"wrote {result.rows} x {result.dim} features to {args.output} "
        f"(row names in {result.index})"
    )
    return 0


def run_index(args: argparse.Namespace) -> int:
    from mmcl.eval.index import IndexSettings, build_index

    settings = IndexSettings(
        kind=args.kind,
        threshold=args.threshold,
        nlist=args.nlist,
        nprobe=args.nprobe,
        ef_search=args.ef_search,
        recall_queries=args.recall_queries,
    )
    report = build_index(args.features, args.output, settings, rebuild=args.rebuild)
    if args.quiet:
        return 0
    recall = "exact" if report.recall_at_10 is None else f"{100 * report.recall_at_10:.1f}%"
    action = "built" if report.rebuilt else f"added {report.added} row(s) to"
    params = " ".join(f"{key}={value}" for key, value in report.params.items())
    print(
        f"{action} {report.kind} index {report.folder}: {report.rows} rows {params}".rstrip()
        + f", recall@10 {recall} (against exact search), {report.seconds:.1f}s"
    )
    return 0


def run_zeroshot(args: argparse.Namespace) -> int:
    import torch

    from mmcl.data.images import class_folders
    from mmcl.data.zeroshot import load_zero_shot_metadata
    from mmcl.eval.zero_shot import accuracy, build_zero_shot_classifier
    from mmcl.io.tokenizer import get_tokenizer

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
        get_tokenizer(model.context_length),
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


def run_retrieval(args: argparse.Namespace) -> int:
    import torch

    from mmcl.data.captions import read_caption_table
    from mmcl.eval.embed import embed_texts
    from mmcl.eval.retrieval import retrieval_recall
    from mmcl.io.tokenizer import get_tokenizer

    caption_paths, captions = read_caption_table(args.captions, image_root=args.images)
    # One row per caption: each distinct image is embedded once, its captions point to it.
    image_index: dict[Path, int] = {}
    caption_image = [image_index.setdefault(path, len(image_index)) for path in caption_paths]
    check_output_file(args.report, "--report")
    reading = image_reading(args)
    model = load_model(args)
    with reading:
        images = embed_image_files(args, model, list(image_index))
    texts = embed_texts(
        model,
        captions,
        get_tokenizer(model.context_length),
        256,
        args.device,
        progress=not args.quiet,
    )
    # Keep only captions whose image was readable, re-indexed to the kept images.
    position = {int(i): row for row, i in enumerate(images.indices)}
    keep = [t for t, image in enumerate(caption_image) if image in position]
    text_to_image = torch.tensor([position[caption_image[t]] for t in keep])
    recalls = retrieval_recall(images.features, texts[keep], text_to_image)
    print_table(["metric", "%"], [[k, f"{100 * v:.2f}"] for k, v in recalls.items()])
    print(f"{len(images.indices)} images, {len(keep)} captions, {images.skipped} skipped")
    if args.report:
        write_json(
            args.report,
            {
                "recall": recalls,
                "images": len(images.indices),
                "captions": len(keep),
                "skipped": images.skipped,
            },
        )
    return 0


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


def run_convert(args: argparse.Namespace) -> int:
    from mmcl.io import checkpoints
    from mmcl.io.checkpoints import check_export_target

    try:  # the output is checked before the (long) conversion
        check_export_target(
            args.output, folder=args.to == "hf", overwrite=args.overwrite, remedy="--overwrite"
        )
        model = create_model_for_command(args, args.model, args.input)
        save = getattr(checkpoints, EXPORT_FORMATS[args.to])
        save(model, args.output, overwrite=args.overwrite)
    except (FileExistsError, IsADirectoryError, NotADirectoryError) as error:
        raise ValueError(str(error)) from None
    print(f"wrote {args.output} ({args.to} format)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
