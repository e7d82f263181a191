"""`embed_image_folder`: a long list of image files into a features file on disk, written part
by part, so that an interrupted job resumes where it stopped (the `mmcl embed` command).

Finished parts live in `<output>.parts/` beside a manifest of what produced them (the file
list, the model's weights fingerprint, the preprocessing); a resumed run reuses a part only
when the manifest matches, and joins the parts into `output` at the end. What produced the
result stays beside it in `<output>.embedding.json` (`write_embedding_record`), for `mmcl index`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mmcl.data.images import ImageFiles
from mmcl.eval.embed import check_feature_suffix, image_loader, write_row_index
from mmcl.eval.embed_ranks import Ranks, check_same_job, check_visible
from mmcl.io.atomic import atomic_path
from mmcl.io.progress import progress as progress_bar
from mmcl.io.transforms import get_preprocess, streamlined
from mmcl.nn.streams import in_streams

PARTS_FORMAT = 1


@dataclass
class FolderEmbedding:
    output: Path  # the features file: (rows, dim) float32, L2-normalised
    index: Path  # its row names (image paths), one a line
    rows: int
    dim: int
    skipped: list[Path]  # unreadable files dropped (only with skip_bad=True)
    parts_computed: int  # parts encoded by this call
    parts_reused: int  # parts found finished on disk (an earlier, interrupted run)


def parts_folder(output: str | os.PathLike) -> Path:
    """Where `embed_image_folder` keeps the finished parts of `output`: `<output>.parts/`."""
    output = Path(output)
    return output.with_name(output.name + ".parts")


@torch.inference_mode()
def embed_image_folder(
    model,
    paths: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    transform: Callable | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    part_size: int = 4096,
    skip_bad: bool = False,
    keep_parts: bool = False,
    settings: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    progress: bool = True,
    streams: int = 1,
    high_bit_depth: str = "scale",
    rank_timeout: float = 1800.0,
) -> FolderEmbedding:
    """Embed image files into `output` (.npy or .safetensors) with a row-name index beside it.

    The files are split, in order, into parts of `part_size` images; each part is written to
    `<output>.parts/` (atomically) as soon as it is encoded, so a crash loses at most the
    part in progress, and calling again with the same arguments encodes only the missing
    parts. A manifest there records what fixes the numbers (the file list, the part size,
    the model's config, weights and dtype, the preprocessing, and `settings`); a call that
    differs is refused rather than mixing embeddings. `source` (e.g. the checkpoint's path) is
    recorded for people and not compared. Finally the parts are joined into `output` and the
    folder is removed (kept with `keep_parts=True`).

    Batches never straddle two parts; DataLoader `workers` decode and preprocess ahead of
    the model. Unreadable files stop the job, or with `skip_bad=True` are dropped and listed;
    `high_bit_depth="refuse"` makes 16-bit images unreadable (see `mmcl.data.images`), and
    so does Pillow's pixel limit in force (`mmcl.data.images.pixel_limit`); both are recorded
    in the manifest.
    `streams` > 1 encodes each batch as that many parts side by side on the CPU (see
    `mmcl.nn.streams`; like the batch size, it changes low-precision results only by rounding).

    Under torchrun (a process group is initialised) the ranks share the missing parts, the
    k-th to rank k % world size, and rank 0 joins them: the output is the one process's, bit
    for bit. Every rank must see the same files and `output` (across nodes, a shared
    filesystem). The ranks meet after each round of parts (see `mmcl.eval.embed_ranks`), and
    all stop, naming the rank, when one fails or does not answer within `rank_timeout` s.

    >>> import mmcl, tempfile, pathlib
    >>> from PIL import Image
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for i in range(3):
    ...     Image.new("RGB", (40, 40), (80 * i, 0, 0)).save(folder / f"{i}.png")
    >>> model = mmcl.create_model("tiny-vit")
    >>> paths = sorted(folder.glob("*.png"))
    >>> result = embed_image_folder(model, paths, folder / "out.npy", part_size=2, progress=False)
    >>> result.rows, result.dim, result.parts_computed
    (3, 64, 2)
    """
    if part_size < 1 or batch_size < 1:
        raise ValueError(
            f"part_size and batch_size must be positive, got {part_size}, {batch_size}"
        )
    output = Path(output)
    check_feature_suffix(output)
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no images to embed")
    transform = transform if transform is not None else get_preprocess(model)
    # The workers run the transform's streamlined form (same tensors); the manifest records it.
    dataset = ImageFiles(
        paths, streamlined(transform), skip_bad=skip_bad, high_bit_depth=high_bit_depth
    )
    reading = {"high_bit_depth": high_bit_depth, "max_image_pixels": dataset.max_image_pixels}
    folder = parts_folder(output)
    manifest = _manifest(model, paths, part_size, transform, settings, reading)
    spans = [
        (start, min(start + part_size, len(paths))) for start in range(0, len(paths), part_size)
    ]
    # Under torchrun the ranks share the missing parts; every step below is taken together.
    with Ranks(
        rank_timeout,
        hint=f" Finished parts stay in {folder}: rerun the same command to compute the rest",
    ) as ranks:
        check_same_job(ranks, manifest)
        missing = ranks.first(
            "opening the parts folder",
            lambda: _open_missing_parts(folder, manifest, dict(source or {}), len(spans)),
        )
        if ranks.size > 1:
            ranks.each("finding the parts folder", lambda: check_visible(folder))
        # Deterministic shares: the k-th missing part goes to rank k % size, so that the ranks
        # finish each round of `size` parts together (a resumed job is balanced again).
        mine = missing[ranks.rank :: ranks.size]
        rounds = -(-len(missing) // ranks.size)
        share = sum(spans[part][1] - spans[part][0] for part in mine)
        done = len(paths) - share if ranks.size == 1 else 0
        with progress_bar(
            total=share + done,
            initial=done,
            desc="embedding images" + (f" (rank 0 of {ranks.size})" if ranks.size > 1 else ""),
            unit="image",
            disable=not progress or ranks.rank != 0,
        ) as bar:
            encoded = _encode_parts(
                model, dataset, mine, spans, folder, batch_size, workers, device, streams, bar
            )
            for round_ in range(rounds):
                ranks.each(f"round {round_ + 1} of {rounds} of parts", lambda: next(encoded, None))

        def join() -> FolderEmbedding:
            result = _join_parts(folder, output, paths, spans, len(missing), keep_parts)
            _write_record(output, manifest, dict(source or {}))
            return result

        return ranks.first("joining the parts", join)


def _encode_parts(
    model, dataset, parts, spans, folder, batch_size, workers, device, streams, bar
) -> Iterator[int]:
    """Encode and write `parts`, one after another; yields each part once it is on disk."""
    batches, plan = [], []  # plan: (part, is it the part's last batch) for each batch
    # ranges, not lists: a few bytes per batch however many millions of images
    for part in parts:
        start, stop = spans[part]
        for first in range(start, stop, batch_size):
            batches.append(range(first, min(first + batch_size, stop)))
            plan.append((part, first + batch_size >= stop))
    loader = image_loader(dataset, device, workers if batches else 0, batch_sampler=batches)
    features, rows = [], []
    encode = functools.partial(model.encode_image, normalize=True)
    for (part, last), batch, (images, _, indices, _) in zip(plan, batches, loader, strict=True):
        if len(indices):
            # Kept on the device until the part is written: one synchronisation per part.
            images = images.to(device, non_blocking=True)
            features.append(in_streams(encode, images, streams).float())
            rows.append(indices)
        bar.update(len(batch))
        if last:
            _write_part(folder, part, spans[part], features, rows)
            features, rows = [], []
            yield part


def _open_missing_parts(folder: Path, manifest: dict, source: dict, count: int) -> list[int]:
    open_parts_folder(folder, manifest, source)
    return [part for part in range(count) if not _part_path(folder, part).exists()]


RECORD_FORMAT = 1


def embedding_record_path(output: str | os.PathLike) -> Path:
    """Where `embed_image_folder` records what produced `output`: `<output>.embedding.json`."""
    output = Path(output)
    return output.with_name(output.name + ".embedding.json")


def _write_record(output: Path, manifest: dict, source: dict) -> None:
    identity = {key: manifest[key] for key in RECORD_IDENTITY[2:]}
    identity.update(model=source.get("model"), pretrained=source.get("pretrained"))
    write_embedding_record(output, identity)


# What `mmcl index` records of the model and the embedding: the first two are for people.
RECORD_IDENTITY = (
    "model",
    "pretrained",
    "weights_sha256",
    "model_config",
    "preprocess",
    "image_reading",
    "settings",
)


def write_embedding_record(output: str | os.PathLike, identity: Mapping[str, Any]) -> Path:
    """Record beside the features file `output` (and its written `.index.txt`) what produced
    them, so that `mmcl index` can index them: `identity` gives `RECORD_IDENTITY`'s fields
    (e.g. `weights_sha256` from `weights_fingerprint(model)`). Returns the record's path.

    `embed_image_folder` calls it; call it yourself to index features made another way.
    """
    output = Path(output)
    missing = [key for key in RECORD_IDENTITY if key not in identity]
    if missing:
        raise ValueError(f"the embedding record of {output} needs {missing}")
    names = output.with_name(output.name + ".index.txt").read_bytes()
    if output.suffix == ".npy":
        shape = np.load(output, mmap_mode="r").shape
    else:
        with safe_open(str(output), framework="pt") as handle:
            shape = handle.get_slice("features").get_shape()
    # The row names' hash ties the record to this output: a later run that rewrites the
    # features but not the record (an older mmcl, `embed --texts`) is caught by `mmcl index`.
    record = {
        "format": RECORD_FORMAT,
        **{key: identity[key] for key in RECORD_IDENTITY},
        "rows": int(shape[0]),
        "dim": int(shape[1]),
        "row_names_sha256": hashlib.sha256(names).hexdigest(),
    }
    path = embedding_record_path(output)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=str))
    return path


def weights_fingerprint(model: torch.nn.Module, samples: int = 4096) -> str:
    """A SHA-256 of every tensor's name, shape, dtype and up to `samples` evenly spaced values.

    Cheap even for billions of weights (on any device), and the same wherever the model runs;
    two checkpoints that differ in only a few values of a large tensor may collide.
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // samples)][:samples]
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}\n".encode())
        digest.update(sample.float().cpu().numpy().tobytes())  # float(): numpy has no bf16
    return digest.hexdigest()


def _manifest(model, paths: list[Path], part_size: int, transform, settings, reading: dict) -> dict:
    listing = "\n".join(os.path.abspath(p) for p in paths)
    config = getattr(model, "config", None)
    return {
        "format": PARTS_FORMAT,
        "files": {"count": len(paths), "sha256": hashlib.sha256(listing.encode()).hexdigest()},
        "part_size": part_size,
        "model_config": config.to_dict() if hasattr(config, "to_dict") else None,
        "weights_sha256": weights_fingerprint(model),
        "preprocess": repr(transform),
        "image_reading": reading,  # which images count as unreadable
        "settings": dict(settings or {}),
    }


def open_parts_folder(
    folder: Path,
    manifest: dict,
    source: dict,
    job: str = "embedding",
    part_pattern: str = "part-*.safetensors",
) -> None:
    """Create the parts folder with its manifest, or check an existing one matches (also for
    `mmcl caption`'s parts: `job` names the work in errors)."""
    manifest_path = folder / "manifest.json"
    if manifest_path.exists():
        found = json.loads(manifest_path.read_text())
        recorded_source = found.pop("source", {})
        # JSON round trip, so that tuples and lists compare equal.
        expected = json.loads(json.dumps(manifest))
        differences = [key for key in expected if found.get(key) != expected[key]]
        differences += [key for key in found if key not in expected]
        if differences:
            details = ", ".join(
                _difference(key, found.get(key), expected.get(key)) for key in differences
            )
            written_by = ", ".join(f"{k}={v}" for k, v in recorded_source.items()) or "unrecorded"
            raise ValueError(
                f"{folder} holds parts of another {job} job ({details}; written by "
                f"{written_by}). Rerun with the same settings to resume it, or delete the "
                f"folder to start again."
            )
        return
    if any(folder.glob(part_pattern)):
        raise ValueError(f"{folder} holds parts but no manifest.json; delete the folder")
    with atomic_path(manifest_path) as tmp:
        tmp.write_text(json.dumps({**manifest, "source": source}, indent=2, default=str))


def _difference(key: str, found: Any, expected: Any, width: int = 40) -> str:
    found_text, expected_text = json.dumps(found, default=str), json.dumps(expected, default=str)
    if max(len(found_text), len(expected_text)) > width:
        return f"{key} differs"
    return f"{key}: parts have {found_text}, this run {expected_text}"


def _part_path(folder: Path, part: int) -> Path:
    return folder / f"part-{part:06d}.safetensors"


def _write_part(folder: Path, part: int, span: tuple[int, int], features: list, rows: list):
    start, stop = span
    kept = torch.cat(rows) if rows else torch.empty(0, dtype=torch.long)
    tensors = {
        "features": torch.cat(features).cpu() if features else torch.empty(0, 0),
        "rows": kept,  # positions in the file list of the kept images
    }
    skipped = sorted(set(range(start, stop)) - set(kept.tolist()))
    tensors["skipped"] = torch.tensor(skipped, dtype=torch.long)
    with atomic_path(_part_path(folder, part)) as tmp:
        save_file(tensors, str(tmp))


@dataclass
class _Part:
    path: Path
    rows: torch.Tensor  # positions in the file list of the kept images
    skipped: torch.Tensor  # positions of the unreadable ones
    dim: int | None  # feature size; None for a part of unreadable files only

    def features(self) -> torch.Tensor:
        with safe_open(str(self.path), framework="pt") as handle:
            return handle.get_tensor("features")


def _read_part(folder: Path, part: int, span: tuple[int, int]) -> _Part:
    """A finished part's row positions (its features stay on disk until needed)."""
    path = _part_path(folder, part)
    try:
        with safe_open(str(path), framework="pt") as handle:
            rows, skipped = handle.get_tensor("rows"), handle.get_tensor("skipped")
            shape = handle.get_slice("features").get_shape()
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{path}: unreadable part ({error}); delete it to recompute") from error
    if sorted(rows.tolist() + skipped.tolist()) != list(range(*span)) or shape[0] != len(rows):
        raise ValueError(
            f"{path} does not hold images {span[0]}-{span[1] - 1}; delete it to recompute"
        )
    return _Part(path, rows, skipped, shape[1] if len(rows) else None)


def _join_parts(
    folder: Path,
    output: Path,
    paths: list[Path],
    spans: list[tuple[int, int]],
    parts_computed: int,
    keep_parts: bool,
) -> FolderEmbedding:
    parts = [_read_part(folder, part, span) for part, span in enumerate(spans)]
    filled = [p for p in parts if p.dim is not None]
    dims = {p.dim for p in filled}
    if not dims:
        raise ValueError("no readable images to embed")
    if len(dims) > 1:
        raise ValueError(f"{folder}: the parts disagree on the feature size ({sorted(dims)})")
    (dim,) = dims
    rows = torch.cat([p.rows for p in parts])
    with atomic_path(output) as tmp:
        if output.suffix == ".npy":
            # Filled a part at a time through a memory map: the matrix need not fit in memory.
            matrix = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.float32, shape=(len(rows), dim)
            )
            position = 0
            for p in filled:
                matrix[position : position + len(p.rows)] = p.features().numpy()
                position += len(p.rows)
            matrix.flush()
            del matrix
        else:
            features = torch.cat([p.features() for p in filled])
            save_file({"features": features.contiguous()}, str(tmp))
    index = write_row_index(output, [str(paths[i]) for i in rows.tolist()])
    skipped = [paths[i] for p in parts for i in p.skipped.tolist()]
    if not keep_parts:
        shutil.rmtree(folder)
    return FolderEmbedding(
        output, index, len(rows), dim, skipped, parts_computed, len(spans) - parts_computed
    )
