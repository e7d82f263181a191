"""What several commands share: the model and image-reading options, loading the model the
command names, embedding its image files, and checking and writing output files."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from PIL import Image

from mmcl.choices import HIGH_BIT_DEPTH_CHOICES, PRECISION_NAMES
from mmcl.io.atomic import atomic_path


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


def add_tokenizer_argument(parser: argparse.ArgumentParser) -> None:
    """Where a BLIP's or ALBEF's WordPiece vocabulary is (embed, zeroshot, retrieval)."""
    parser.add_argument(
        "--tokenizer",
        type=Path,
        metavar="FOLDER",
        help="BLIP or ALBEF: folder of the model's WordPiece vocabulary (tokenizer.json or "
        "vocab.txt); default: the --pretrained folder, or the folder of the --pretrained file. "
        "CLIP and CoCa use CLIP's tokenizer",
    )


def command_text(args: argparse.Namespace, model):
    """The model's own tokenizer (`mmcl.eval.model_text`), found from --tokenizer or
    --pretrained."""
    from mmcl.eval.model_text import model_text, tokenizer_folder

    text = model_text(model, args.tokenizer or tokenizer_folder(args.pretrained))
    if args.tokenizer is not None and text.fingerprint == "clip-bpe":
        raise ValueError(
            f"--tokenizer is for models that read WordPiece ids (BLIP, ALBEF); "
            f"{args.model or args.pretrained} ({type(model).__name__}) reads CLIP's built-in "
            f"tokenizer: drop --tokenizer"
        )
    return text


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
