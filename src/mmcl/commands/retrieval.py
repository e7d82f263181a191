"""`mmcl retrieval`: images and a captions table -> image<->text recall@k."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmcl.commands.options import (
    add_input_arguments,
    add_model_arguments,
    check_output_file,
    embed_image_files,
    image_reading,
    load_model,
    write_json,
)
from mmcl.io.tables import print_table


def add_parser(commands) -> None:
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
