"""Writing webdataset tar shards, the files that `mmcl.data.shards.ShardStream` reads.

A sample is written as tar members sharing a key (``000017.jpg`` + ``000017.txt``), one per
file extension; `image_caption_samples` makes such samples from image files and captions.
"""

from __future__ import annotations

import io
import itertools
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmcl.data.shards_decode import SHARD_IMAGE_EXTENSIONS
from mmcl.io.atomic import atomic_path

__all__ = ["image_caption_samples", "write_shards"]


def write_shards(
    samples: Iterable[Mapping[str, Any]],
    folder: str | Path,
    samples_per_shard: int,
    prefix: str = "shard",
) -> list[Path]:
    """Write samples into ``folder/{prefix}-000000.tar``, ... and return the shard paths.

    A sample maps file extensions to contents: bytes as they are, a str as UTF-8, an int as
    decimal text (for ``cls``), a `Path` as that file's bytes; ``"__key__"`` names the sample
    (default: its running number). Each shard is written to a temporary file and renamed, so
    an interrupted conversion never leaves a truncated shard behind.

    >>> import tempfile
    >>> paths = write_shards([{"txt": "a cat", "cls": 3}], tempfile.mkdtemp(), 100)
    >>> [path.name for path in paths]
    ['shard-000000.tar']
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    folder = Path(folder)
    numbered = enumerate(samples)
    paths = []
    for shard_index in itertools.count():
        chunk = list(itertools.islice(numbered, samples_per_shard))
        if not chunk:
            return paths
        path = folder / f"{prefix}-{shard_index:06d}.tar"
        with atomic_path(path) as tmp, tarfile.open(tmp, mode="w") as tar:
            for number, sample in chunk:
                _add_sample(tar, sample, number)
        paths.append(path)
    return paths


def _add_sample(tar: tarfile.TarFile, sample: Mapping[str, Any], number: int) -> None:
    key = str(sample.get("__key__", f"{number:09d}"))
    if "." in key.rsplit("/", 1)[-1]:
        # webdataset splits a file name at the first dot of its base name: key.extension.
        raise ValueError(f"sample key {key!r} must not contain a dot")
    for extension, value in sample.items():
        if extension.startswith("__"):
            continue
        data = _encode(value)
        info = tarfile.TarInfo(f"{key}.{extension}")
        info.size = len(data)
        info.mode = 0o444  # fixed metadata (mtime 0, no owner): the same samples, the same bytes
        tar.addfile(info, io.BytesIO(data))


def _encode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode("ascii")
    if isinstance(value, Path):
        return value.read_bytes()
    raise TypeError(
        f"cannot store a {type(value).__name__} in a shard: use bytes, str, int or Path"
    )


def image_caption_samples(
    paths: Sequence[str | Path], captions: Sequence[str]
) -> Iterator[dict[str, Any]]:
    """Samples for `write_shards` from image files and their captions, e.g. of a caption table.

    >>> from mmcl.data.captions import CaptionedImages
    >>> data = CaptionedImages("train.csv", transform=None)  # doctest: +SKIP
    >>> write_shards(image_caption_samples(data.paths, data.captions), "shards", 10_000)
    ... # doctest: +SKIP
    """
    if len(paths) != len(captions):
        raise ValueError(f"{len(paths)} image paths but {len(captions)} captions")
    for path, caption in zip(paths, captions, strict=True):
        path = Path(path)
        extension = path.suffix.lower().lstrip(".")
        if extension not in SHARD_IMAGE_EXTENSIONS:
            raise ValueError(f"{path}: shards hold {', '.join(SHARD_IMAGE_EXTENSIONS)} images only")
        yield {extension: path, "txt": caption}
