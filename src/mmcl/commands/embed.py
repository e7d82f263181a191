"""`mmcl embed`: images (a folder, part by part, resumable) or texts (one a line) -> features.

Under torchrun (`torchrun --nproc_per_node N -m mmcl.cli embed --images ...`) the ranks share
the image folder's parts; see `mmcl.eval.embed_folder.embed_image_folder`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mmcl.commands.options import (
    add_input_arguments,
    add_model_arguments,
    add_tokenizer_argument,
    check_output_file,
    command_text,
    image_reading,
    load_model,
)
from mmcl.io.text_files import read_text


def add_parser(commands) -> None:
    embed = commands.add_parser("embed", help="images or texts -> .npy / .safetensors")
    add_model_arguments(embed)
    add_input_arguments(embed)
    add_tokenizer_argument(embed)
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
    embed.add_argument(
        "--rank-timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="images under torchrun: the ranks meet after each round of parts; all stop, "
        "naming the rank, when one fails or does not arrive within this time (default 1800)",
    )
    embed.set_defaults(handler=run_embed)


def run_embed(args: argparse.Namespace) -> int:
    from mmcl.eval.embed import embed_texts, save_features

    if args.output.suffix not in (".npy", ".safetensors"):
        raise ValueError(f"--output must end in .npy or .safetensors, got {args.output}")
    check_output_file(args.output, "--output")
    reading = image_reading(args)
    if args.part_size < 1:
        raise ValueError(f"--part-size must be positive, got {args.part_size}")
    if args.rank_timeout <= 0:
        raise ValueError(f"--rank-timeout must be positive, got {args.rank_timeout}")
    if args.images is not None:
        with reading:
            return embed_folder_in_ranks(args)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--texts runs in one process: run it without torchrun")
    model = load_model(args)
    text = command_text(args, model)
    texts = read_text(args.texts, "texts file").splitlines()
    features = embed_texts(
        model,
        texts,
        text.tokens,
        args.batch_size,
        args.device,
        progress=not args.quiet,
    )
    index = save_features(args.output, features, texts)
    rows, dim = features.shape
    print(f"wrote {rows} x {dim} features to {args.output} (row names in {index})")
    return 0


def embed_folder_in_ranks(args: argparse.Namespace) -> int:
    """`mmcl embed --images`, in one process or as a rank of a torchrun job."""
    from mmcl.eval.embed_ranks import RankFailedError, Ranks
    from mmcl.train import distributed

    joined = not distributed.is_distributed()  # leave only a group this command joined
    # gloo whatever the device: the ranks exchange only small CPU objects.
    info = distributed.init_from_env(backend="gloo", timeout=args.rank_timeout)
    try:
        if info.world_size > 1 and args.device == "cuda":
            args.device = str(info.device)  # one GPU a rank: cuda:LOCAL_RANK
        with Ranks(args.rank_timeout) as ranks:
            step = "loading the model and listing the images"
            model, paths = ranks.each(step, lambda: prepare(args))
        return embed_folder(args, model, paths, main=info.is_main)
    except RankFailedError as error:
        print(f"mmcl {args.command}: error: {error}", file=sys.stderr)
        return 1
    finally:
        if joined:
            distributed.cleanup()


def prepare(args: argparse.Namespace):
    from mmcl.data.images import list_images

    paths = list_images(args.images)
    if not paths:
        raise ValueError(f"{args.images}: no image files found")
    return load_model(args), paths


def embed_folder(args: argparse.Namespace, model, paths: list[Path], main: bool = True) -> int:
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
        rank_timeout=args.rank_timeout,
    )
    if not main:  # rank 0 reports for the job
        return 0
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
