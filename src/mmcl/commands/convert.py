"""`mmcl convert`: a checkpoint from one format to another (mmcl, open_clip, Hugging Face)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmcl.commands.options import create_model_for_command

EXPORT_FORMATS = {  # --to -> the mmcl.io.checkpoints function that writes it
    "mmcl": "save_safetensors",
    "open_clip": "save_open_clip",
    "hf": "save_huggingface",
}


def add_parser(commands) -> None:
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
