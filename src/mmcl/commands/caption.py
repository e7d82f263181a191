"""`mmcl caption`: a folder of images -> a caption table (CSV or JSONL), part by part,
resumable; BLIP captioners and CoCa models. `add_decoding_arguments` and `captioner_for` are
shared with `mmcl capfilt`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmcl.commands.options import (
    add_input_arguments,
    add_model_arguments,
    check_output_file,
    image_reading,
    load_model,
)


def add_parser(commands) -> None:
    caption = commands.add_parser("caption", help="images -> captions .csv / .jsonl (BLIP, CoCa)")
    add_model_arguments(caption)
    add_input_arguments(caption)
    caption.add_argument(
        "--images", type=Path, required=True, help="folder of images (searched recursively)"
    )
    caption.add_argument(
        "--output",
        type=Path,
        required=True,
        help="captions.csv (columns image,caption; images relative to --images) or captions.jsonl",
    )
    add_decoding_arguments(caption)
    caption.add_argument(
        "--part-size",
        type=int,
        default=1024,
        help="write finished parts of this many images to <output>.parts/ as they come; a "
        "rerun after an interruption captions only the missing parts",
    )
    caption.add_argument(
        "--keep-parts", action="store_true", help="keep <output>.parts/ after joining them"
    )
    caption.set_defaults(handler=run_caption)


def add_decoding_arguments(
    parser: argparse.ArgumentParser,
    title: str = "decoding (greedy unless --beams or --top-p)",
    top_p_note: str = "",
    vocabulary: str = "the --pretrained folder, or the folder of the --pretrained file",
) -> None:
    decoding = parser.add_argument_group(title)
    decoding.add_argument(
        "--max-length", type=int, default=30, help="most tokens a caption gets (default 30)"
    )
    decoding.add_argument("--beams", type=int, default=1, help="beam search with N beams")
    decoding.add_argument(
        "--length-penalty",
        type=float,
        default=1.0,
        help="beam search: scores are divided by length ** this (default 1.0)",
    )
    decoding.add_argument(
        "--top-p",
        type=float,
        help="nucleus sampling from the most probable tokens of this total probability"
        + top_p_note,
    )
    decoding.add_argument(
        "--seed", type=int, default=0, help="seed of --top-p sampling (same seed, same captions)"
    )
    decoding.add_argument(
        "--prompt",
        default="",
        help='BLIP: text every caption starts with, e.g. "a picture of" (not repeated in the '
        "caption)",
    )
    decoding.add_argument(
        "--tokenizer",
        type=Path,
        help="BLIP: folder of its WordPiece vocabulary (tokenizer.json or vocab.txt); default: "
        + vocabulary,
    )


def captioner_for(args: argparse.Namespace, model, name: str, pretrained, tokenizer: Path | None):
    """The `Captioner` of `model` with the command's decoding options."""
    from mmcl.eval.captioner import Captioner, CaptionSettings, require_caption_decoder
    from mmcl.eval.model_text import model_text, tokenizer_folder

    require_caption_decoder(model, name)
    text = model_text(model, tokenizer or tokenizer_folder(pretrained))
    settings = CaptionSettings(
        max_length=args.max_length,
        beams=args.beams,
        length_penalty=args.length_penalty,
        top_p=args.top_p,
        seed=args.seed,
        prompt=args.prompt,
    )
    return Captioner(model.eval(), text, settings, name)


def run_caption(args: argparse.Namespace) -> int:
    from mmcl.data.images import list_images
    from mmcl.eval.caption_folder import CAPTION_SUFFIXES, caption_image_folder

    if args.output.suffix not in CAPTION_SUFFIXES:
        raise ValueError(f"--output must end in .csv or .jsonl, got {args.output}")
    check_output_file(args.output, "--output")
    if args.part_size < 1:
        raise ValueError(f"--part-size must be positive, got {args.part_size}")
    if args.streams != 1:
        raise ValueError("--streams is for embedding; caption runs one stream (drop --streams)")
    reading = image_reading(args)
    with reading:
        paths = list_images(args.images)
        if not paths:
            raise ValueError(f"{args.images}: no image files found")
        model = load_model(args)
        name = args.model or str(args.pretrained)
        captioner = captioner_for(args, model, name, args.pretrained, args.tokenizer)
        # Sampled captions depend on which rows share a batch; greedy and beams do not.
        sampling = {"batch_size": args.batch_size} if args.top_p is not None else {}
        result = caption_image_folder(
            captioner,
            paths,
            args.output,
            root=args.images,
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            part_size=args.part_size,
            skip_bad=args.skip_bad,
            keep_parts=args.keep_parts,
            settings={"precision": args.precision, **sampling},
            source={"model": args.model, "pretrained": args.pretrained},
            progress=not args.quiet,
            high_bit_depth=args.high_bit_depth,
        )
    if result.parts_reused:
        print(f"reused {result.parts_reused} finished part(s) of an earlier run")
    if result.skipped:
        shown = ", ".join(str(path) for path in result.skipped[:10])
        more = f" and {len(result.skipped) - 10} more" if len(result.skipped) > 10 else ""
        print(f"skipped {len(result.skipped)} unreadable image(s): {shown}{more}", file=sys.stderr)
    print(f"wrote {result.rows} captions to {args.output}")
    return 0
