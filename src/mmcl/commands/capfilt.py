"""`mmcl capfilt`: a caption table (image,caption) -> the table BLIP's CapFilt keeps: a
captioner's synthetic captions added, and captions an ITM filter finds unmatched dropped."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from mmcl.choices import PRECISION_NAMES
from mmcl.commands.caption import add_decoding_arguments, captioner_for
from mmcl.commands.options import add_input_arguments, check_output_file, image_reading, write_json

CAPFILT_TOP_P = 0.9  # BLIP's nucleus for synthetic captions


def add_parser(commands) -> None:
    capfilt = commands.add_parser(
        "capfilt", help="captions CSV -> cleaned captions (BLIP's captioner + ITM filter)"
    )
    capfilt.add_argument(
        "--captions",
        type=Path,
        required=True,
        help="CSV (or .tsv) with columns image,caption, UTF-8, as `mmcl retrieval` reads it",
    )
    capfilt.add_argument(
        "--images", type=Path, help="folder the image paths are relative to (default: the table's)"
    )
    capfilt.add_argument(
        "--output",
        type=Path,
        required=True,
        help="cleaned table .csv or .jsonl: image,caption,source (web or synthetic),match",
    )
    capfilt.add_argument("--report", type=Path, help="also write the counts as JSON here")
    capfilt.add_argument(
        "--part-size",
        type=int,
        default=1024,
        help="write finished parts of this many images to <output>.parts/ as they come; a "
        "rerun with the same settings after an interruption does only the missing parts",
    )
    capfilt.add_argument(
        "--keep-parts",
        action="store_true",
        help="keep <output>.parts/ (a rerun may then change only --threshold, at no cost)",
    )
    models = capfilt.add_argument_group("models")
    models.add_argument("--captioner", help="captioner checkpoint (a BLIP captioner or CoCa)")
    models.add_argument("--captioner-model", help="its model name, if the file does not say")
    models.add_argument(
        "--filter", help="filter checkpoint with an ITM head (BLIP retrieval, or ALBEF)"
    )
    models.add_argument("--filter-model", help="its model name, if the file does not say")
    models.add_argument(
        "--filter-tokenizer",
        type=Path,
        help="folder of the filter's WordPiece vocabulary (default: the --filter folder, or "
        "the folder of the --filter file)",
    )
    models.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="keep a caption when its ITM match probability is at least this (default 0.5)",
    )
    models.add_argument("--precision", default="fp32", choices=PRECISION_NAMES)
    models.add_argument("--device", default="cpu")
    models.add_argument("--batch-size", type=int, default=16)
    models.add_argument("--workers", type=int, default=0, help="image decoding processes")
    models.add_argument("--skip-bad", action="store_true", help="skip unreadable images")
    models.add_argument("--quiet", action="store_true", help="no progress bars")
    add_input_arguments(capfilt)
    add_decoding_arguments(
        capfilt,
        title=f"the captioner's decoding (nucleus, --top-p {CAPFILT_TOP_P}, unless --beams)",
        top_p_note=f" (default {CAPFILT_TOP_P} unless --beams)",
        vocabulary="the --captioner folder, or the folder of the --captioner file",
    )
    capfilt.set_defaults(handler=run_capfilt)


def load_named(args: argparse.Namespace, name, pretrained, flag: str):
    """`load_model` for one of the command's two models (its warnings and precision)."""
    from mmcl.commands.options import load_model

    if name is None and pretrained is None:
        raise ValueError(f"give --{flag} PATH (or --{flag}-model NAME)")
    return load_model(
        argparse.Namespace(**{**vars(args), "model": name, "pretrained": pretrained, "streams": 1})
    )


def run_capfilt(args: argparse.Namespace) -> int:
    from mmcl.data.captions import read_caption_table
    from mmcl.eval.capfilt import capfilt
    from mmcl.eval.caption_folder import CAPTION_SUFFIXES, image_name, write_caption_rows
    from mmcl.eval.embed_folder import parts_folder
    from mmcl.eval.model_text import has_itm_head, model_text, tokenizer_folder

    if args.output.suffix not in CAPTION_SUFFIXES:
        raise ValueError(f"--output must end in .csv or .jsonl, got {args.output}")
    check_output_file(args.output, "--output")
    check_output_file(args.report, "--report")
    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold is a probability in [0, 1], got {args.threshold}")
    if args.part_size < 1:
        raise ValueError(f"--part-size must be positive, got {args.part_size}")
    if args.top_p is None and args.beams == 1:
        args.top_p = CAPFILT_TOP_P
    paths, captions = read_caption_table(args.captions, image_root=args.images)
    reading = image_reading(args)
    filter_model = load_named(args, args.filter_model, args.filter, "filter").eval()
    filter_name = args.filter_model or args.filter
    if not has_itm_head(filter_model):
        raise ValueError(
            f"--filter {filter_name} ({type(filter_model).__name__}) has no image-text matching "
            f"(ITM) head; give a BLIP retrieval checkpoint (BlipForImageTextRetrieval) or an "
            f"ALBEF"
        )
    filter_text = model_text(filter_model, args.filter_tokenizer or tokenizer_folder(args.filter))
    model = load_named(args, args.captioner_model, args.captioner, "captioner")
    captioner = captioner_for(
        args, model, args.captioner_model or args.captioner, args.captioner, args.tokenizer
    )
    # Sampled captions depend on which rows share a batch; greedy and beams do not.
    sampling = {"batch_size": args.batch_size} if args.top_p is not None else {}
    parts = parts_folder(args.output)
    with reading:
        result = capfilt(
            captioner,
            filter_model,
            filter_text,
            paths,
            captions,
            args.threshold,
            args.batch_size,
            args.workers,
            args.device,
            args.skip_bad,
            not args.quiet,
            args.high_bit_depth,
            parts=parts,
            part_size=args.part_size,
            settings={"precision": args.precision, **sampling},
            source={
                "captioner": args.captioner_model or args.captioner,
                "filter": filter_name,
            },
        )
    root = args.images if args.images is not None else args.captions.parent
    images = list(dict.fromkeys(paths))
    rows = [
        (image_name(images[image], root), text, source, round(match, 4))
        for image, text, source, match in result.rows
    ]
    write_caption_rows(args.output, rows, ("image", "caption", "source", "match"))
    if not args.keep_parts:
        shutil.rmtree(parts)
    if result.parts_reused:
        print(f"reused {result.parts_reused} finished part(s) of an earlier run")
    counts = result.counts
    print(
        f"web captions: {counts.kept} kept, {counts.replaced} replaced by their image's "
        f"synthetic caption, {counts.dropped} dropped; synthetic captions: "
        f"{counts.synthetic_kept} kept, {counts.synthetic_dropped} dropped"
    )
    if counts.skipped_images:
        print(f"skipped {counts.skipped_images} unreadable image(s) and their captions")
    print(f"wrote {len(rows)} captions to {args.output}")
    if args.report:
        write_json(args.report, {**vars(counts), "written": len(rows), "threshold": args.threshold})
    return 0
