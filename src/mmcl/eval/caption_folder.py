"""`caption_image_folder`: a long list of image files into a caption table (CSV or JSONL),
written part by part, so that an interrupted job resumes where it stopped (`mmcl caption`).

It follows `embed_image_folder`: finished parts live in `<output>.parts/` beside a manifest of
what produced them (the file list, the model's weights fingerprint, the tokenizer, the
preprocessing and the decoding settings); a rerun reuses a part only when the manifest
matches, and joins the parts into `output` at the end. Sampled captions (`top_p`) draw from a
seed per part, so a resumed job writes the captions an uninterrupted one would.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmcl.data.images import ImageFiles
from mmcl.eval.captioner import Captioner
from mmcl.eval.embed import image_loader
from mmcl.eval.embed_folder import open_parts_folder, parts_folder, weights_fingerprint
from mmcl.io.atomic import atomic_path
from mmcl.io.progress import progress as progress_bar
from mmcl.io.transforms import get_preprocess, streamlined

__all__ = [
    "CAPTION_SUFFIXES",
    "FolderCaptions",
    "caption_image_folder",
    "image_name",
    "part_batches",
    "write_caption_rows",
]

CAPTION_SUFFIXES = (".csv", ".jsonl")
PARTS_FORMAT = 1


@dataclass
class FolderCaptions:
    output: Path  # the caption table: image,caption (CSV) or {"image", "caption"} lines
    rows: int  # captions written
    skipped: list[Path]  # unreadable files left out (only with skip_bad=True)
    parts_computed: int  # parts captioned by this call
    parts_reused: int  # parts found finished on disk (an earlier, interrupted run)


@torch.inference_mode()
def caption_image_folder(
    captioner: Captioner,
    paths: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    root: str | os.PathLike | None = None,
    transform: Callable | None = None,
    batch_size: int = 16,
    workers: int = 0,
    device: str | torch.device = "cpu",
    part_size: int = 1024,
    skip_bad: bool = False,
    keep_parts: bool = False,
    settings: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    progress: bool = True,
    high_bit_depth: str = "scale",
) -> FolderCaptions:
    """Caption image files into `output` (.csv with columns image,caption, or .jsonl), each
    image named by its path relative to `root` (as `mmcl retrieval --images root` reads it).

    The files are split, in order, into parts of `part_size` images, each written to
    `<output>.parts/` (atomically) as soon as it is captioned; calling again with the same
    arguments captions only the missing parts, and a call that differs in what fixes the
    captions (files, part size, model, weights, tokenizer, preprocessing, decoding, and
    `settings`) is refused rather than mixed. `source` is recorded for people only. Unreadable
    files stop the job, or with `skip_bad=True` are left out and listed.

    >>> import mmcl, tempfile, pathlib
    >>> from PIL import Image
    >>> from mmcl.eval.captioner import CaptionSettings
    >>> from mmcl.eval.model_text import model_text
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for i in range(3):
    ...     Image.new("RGB", (40, 40), (80 * i, 0, 0)).save(folder / f"{i}.png")
    >>> model = mmcl.create_model("tiny-coca").eval()
    >>> captioner = Captioner(model, model_text(model), CaptionSettings(max_length=4))
    >>> paths = sorted(folder.glob("*.png"))
    >>> result = caption_image_folder(
    ...     captioner, paths, folder / "captions.csv", root=folder, part_size=2, progress=False)
    >>> result.rows, result.parts_computed, (folder / "captions.csv").read_text().split()[0]
    (3, 2, 'image,caption')
    """
    if part_size < 1 or batch_size < 1:
        raise ValueError(
            f"part_size and batch_size must be positive, got {part_size}, {batch_size}"
        )
    output = Path(output)
    if output.suffix not in CAPTION_SUFFIXES:
        raise ValueError(f"--output must end in .csv or .jsonl, got {output}")
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no images to caption")
    model = captioner.model
    transform = transform if transform is not None else get_preprocess(model)
    dataset = ImageFiles(
        paths, streamlined(transform), skip_bad=skip_bad, high_bit_depth=high_bit_depth
    )
    folder = parts_folder(output)
    manifest = _manifest(captioner, paths, part_size, transform, settings, dataset)
    open_parts_folder(folder, manifest, dict(source or {}), "caption", "part-*.jsonl")

    spans = [
        (start, min(start + part_size, len(paths))) for start in range(0, len(paths), part_size)
    ]
    missing = [part for part in range(len(spans)) if not _part_path(folder, part).exists()]
    batches, plan = part_batches(spans, missing, batch_size)
    loader = image_loader(dataset, device, workers if batches else 0, batch_sampler=batches)
    done = len(paths) - sum(len(batch) for batch in batches)
    rows: dict[int, str] = {}
    generator = None
    with progress_bar(
        total=len(paths), initial=done, desc="captioning images", unit="image", disable=not progress
    ) as bar:
        for (part, first, last), batch, (images, _, indices, _) in zip(
            plan, batches, loader, strict=True
        ):
            if first:
                generator = captioner.generator(spans[part][0], device)
            if len(indices):
                captions = captioner.caption(images.to(device, non_blocking=True), generator)
                rows.update(zip(indices.tolist(), captions, strict=True))
            bar.update(len(batch))
            if last:
                _write_part(folder, part, spans[part], rows)
                rows = {}
    names = [image_name(path, root) for path in paths]
    captions, skipped = {}, []
    for part, span in enumerate(spans):
        part_rows, part_skipped = _read_part(folder, part, span)
        captions.update(part_rows)
        skipped += [paths[i] for i in part_skipped]
    if not captions:
        raise ValueError("no readable images to caption")
    write_caption_rows(output, [(names[i], captions[i]) for i in sorted(captions)])
    if not keep_parts:
        shutil.rmtree(folder)
    return FolderCaptions(output, len(captions), skipped, len(missing), len(spans) - len(missing))


def part_batches(
    spans: Sequence[tuple[int, int]], parts: Sequence[int], batch_size: int
) -> tuple[list[range], list[tuple[int, bool, bool]]]:
    """The batches of row indices that cover `parts` (each ``spans[part]``, a range of rows),
    never crossing a part's end, and per batch (its part, whether it is the part's first
    batch, whether its last): where a seeded part starts and where it is written."""
    batches, plan = [], []
    for part in parts:
        start, stop = spans[part]
        for first in range(start, stop, batch_size):
            batches.append(range(first, min(first + batch_size, stop)))
            plan.append((part, first == start, first + batch_size >= stop))
    return batches, plan


def write_caption_rows(
    output: str | os.PathLike,
    rows: Sequence[Sequence[Any]],
    columns: Sequence[str] = ("image", "caption"),
) -> None:
    """Write `rows` to `output` atomically: a CSV with a header of `columns` (UTF-8, quoted
    where needed, so `mmcl.data.captions.read_caption_table` reads it back), or JSON lines."""
    output = Path(output)
    if output.suffix == ".jsonl":
        lines = [
            json.dumps(dict(zip(columns, row, strict=True)), ensure_ascii=False) for row in rows
        ]
        text = "".join(line + "\n" for line in lines)
    else:
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        text = buffer.getvalue()
    with atomic_path(output) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")


def image_name(path: Path, root: str | os.PathLike | None) -> str:
    """How a caption table names `path`: relative to `root` when it lies inside it."""
    if root is not None and path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    return str(path)


def _manifest(captioner: Captioner, paths, part_size, transform, settings, dataset) -> dict:
    listing = "\n".join(os.path.abspath(p) for p in paths)
    config = getattr(captioner.model, "config", None)
    return {
        "format": PARTS_FORMAT,
        "files": {"count": len(paths), "sha256": hashlib.sha256(listing.encode()).hexdigest()},
        "part_size": part_size,
        "model_config": config.to_dict() if hasattr(config, "to_dict") else None,
        "weights_sha256": weights_fingerprint(captioner.model),
        "tokenizer_sha256": captioner.text.fingerprint,
        "preprocess": repr(transform),
        "image_reading": {
            "high_bit_depth": dataset.high_bit_depth,
            "max_image_pixels": dataset.max_image_pixels,
        },
        "decoding": captioner.settings.to_dict(),
        "settings": dict(settings or {}),
    }


def _part_path(folder: Path, part: int) -> Path:
    return folder / f"part-{part:06d}.jsonl"


def _write_part(folder: Path, part: int, span: tuple[int, int], rows: dict[int, str]) -> None:
    lines = [
        {"row": i, "caption": rows[i]} if i in rows else {"row": i, "skipped": True}
        for i in range(*span)
    ]
    with atomic_path(_part_path(folder, part)) as tmp:
        tmp.write_text(
            "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8"
        )


def _read_part(folder: Path, part: int, span: tuple[int, int]) -> tuple[dict[int, str], list[int]]:
    path = _part_path(folder, part)
    try:
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        captions = {line["row"]: line["caption"] for line in lines if "caption" in line}
        skipped = [line["row"] for line in lines if line.get("skipped")]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: unreadable part ({error}); delete it to recompute") from None
    if sorted([*captions, *skipped]) != list(range(*span)):
        raise ValueError(
            f"{path} does not hold images {span[0]}-{span[1] - 1}; delete it to recompute"
        )
    return captions, skipped
