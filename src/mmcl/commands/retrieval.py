"""`mmcl retrieval`: images and a captions table -> image<->text recall@k; with `--rerank K`,
also after BLIP's ITM re-ranking of the top K."""

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
    retrieval.add_argument(
        "--rerank",
        type=int,
        metavar="K",
        help="BLIP or ALBEF: the image-text matching (ITM) head re-ranks the top K of the contrastive "
        "(ITC) ranking, in both directions; both recalls are reported",
    )
    add_tokenizer_argument(retrieval)
    retrieval.set_defaults(handler=run_retrieval)


def run_retrieval(args: argparse.Namespace) -> int:
    import torch

    from mmcl.data.captions import read_caption_table
    from mmcl.eval.embed import embed_texts
    from mmcl.eval.model_text import has_itm_head
    from mmcl.eval.retrieval import retrieval_recall

    caption_paths, captions = read_caption_table(args.captions, image_root=args.images)
    # One row per caption: each distinct image is embedded once, its captions point to it.
    image_index: dict[Path, int] = {}
    caption_image = [image_index.setdefault(path, len(image_index)) for path in caption_paths]
    check_output_file(args.report, "--report")
    if args.rerank is not None and args.rerank < 1:
        raise ValueError(f"--rerank must be a positive number of candidates, got {args.rerank}")
    reading = image_reading(args)
    model = load_model(args)
    if args.rerank is not None and not has_itm_head(model):
        raise ValueError(
            f"--rerank needs an image-text matching (ITM) head; {args.model or args.pretrained} "
            f"({type(model).__name__}) has none: use a BLIP retrieval checkpoint "
            f"(BlipForImageTextRetrieval) or an ALBEF, or drop --rerank"
        )
    text = command_text(args, model)
    with reading:
        if args.rerank is None:
            images = embed_image_files(args, model, list(image_index))
            features, indices, skipped = images.features, images.indices, images.skipped
        else:
            features, image_tokens, indices, skipped = encode_for_rerank(
                args, model, list(image_index)
            )
    texts = embed_texts(model, captions, text.tokens, 256, args.device, progress=not args.quiet)
    # Keep only captions whose image was readable, re-indexed to the kept images.
    position = {int(i): row for row, i in enumerate(indices)}
    keep = [t for t, image in enumerate(caption_image) if image in position]
    text_to_image = torch.tensor([position[caption_image[t]] for t in keep])
    recalls = retrieval_recall(features, texts[keep], text_to_image)
    report = {"recall": recalls}
    if args.rerank is None:
        print_table(["metric", "%"], [[k, f"{100 * v:.2f}"] for k, v in recalls.items()])
    else:
        from mmcl.eval.rerank import itm_rerank_recall

        tokens = text.tokens([captions[t] for t in keep]).to(args.device)
        reranked = itm_rerank_recall(
            model,
            features,
            image_tokens,
            texts[keep],
            tokens,
            text_to_image,
            args.rerank,
            progress=not args.quiet,
        )
        report.update(recall_reranked=reranked, rerank=args.rerank)
        print_table(
            ["metric", "ITC %", f"ITM top {args.rerank} %"],
            [[k, f"{100 * v:.2f}", f"{100 * reranked[k]:.2f}"] for k, v in recalls.items()],
        )
    print(f"{len(indices)} images, {len(keep)} captions, {skipped} skipped")
    if args.report:
        report.update(images=len(indices), captions=len(keep), skipped=skipped)
        write_json(args.report, report)
    return 0


def encode_for_rerank(args: argparse.Namespace, model, paths: list[Path]):
    """ITC features and ITM image tokens of the files, in one pass of the image tower."""
    from mmcl.data.images import ImageFiles
    from mmcl.eval.rerank import encode_images_for_rerank
    from mmcl.io.transforms import get_preprocess

    dataset = ImageFiles(
        paths, get_preprocess(model), skip_bad=args.skip_bad, high_bit_depth=args.high_bit_depth
    )
    return encode_images_for_rerank(
        model, dataset, args.batch_size, args.workers, args.device, not args.quiet
    )
