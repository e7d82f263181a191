"""What the search service does, without HTTP: an opened index, the model that made it, and
the indexed image files.

- Queries (a text, or an uploaded image's bytes) are embedded by the index's own model and read
  the way the indexed images were read (the index's recorded `image_reading`); a model whose
  weights differ from the index's is refused when the `Searcher` is made.
- Files are reachable only by their row number in the index, never by a path from a request,
  and only when the file (symbolic links followed) lies inside `image_root`: the folder the
  indexed files share, unless given.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmcl.eval.index import SearchIndex, open_index

THUMBNAIL_SIZE = 256  # pixels, the longer side


class QueryError(ValueError):
    """A query the service cannot answer (empty text, unreadable image): the client's fault."""


@dataclass
class Hit:
    row: int  # the file's row in the index: the only handle a client gets to it
    path: str  # as the index lists it
    score: float  # cosine similarity to the query


def index_model_source(folder: str | os.PathLike) -> tuple[str | None, str | None]:
    """The model name and checkpoint that `mmcl embed` recorded for the index in `folder`."""
    model = open_index(folder).meta["model"]
    return model.get("model"), model.get("pretrained")


class Searcher:
    """The index in `index_folder`, searched with `model` (checked against the index).

    Relative row paths (as `mmcl embed` listed them) are resolved against `root` (default: the
    current folder), and files are served only from `image_root` (default: the folder they
    share).
    """

    def __init__(
        self,
        index_folder: str | os.PathLike,
        model,
        device: str = "cpu",
        root: str | os.PathLike | None = None,
        image_root: str | os.PathLike | None = None,
    ):
        from mmcl.eval.model_text import model_text, tokenizer_folder
        from mmcl.io.transforms import get_preprocess

        self.index: SearchIndex = open_index(index_folder)
        self.index.check_model(model)
        self.model = model.eval()
        self.device = device
        # CLIP's tokenizer for CLIP models; a BLIP's or ALBEF's WordPiece vocabulary from the
        # folder of the checkpoint the index records.
        pretrained = self.index.meta["model"].get("pretrained")
        self.tokens = model_text(model, tokenizer_folder(pretrained)).tokens
        self.preprocess = get_preprocess(model)
        self.high_bit_depth = self.index.meta["embedding"]["image_reading"]["high_bit_depth"]
        root = Path(root or ".").absolute()
        self.files = [root / name for name in self.index.names]
        self._row = {name: row for row, name in enumerate(self.index.names)}
        self.image_root = Path(image_root or _shared_folder(self.files)).resolve()
        _check_files_reachable(self.index, self.files, root)
        self._lock = threading.Lock()  # one query at a time: the model's threads use the cores

    @property
    def rows(self) -> int:
        return self.index.rows

    def search_text(self, text: str, k: int) -> list[Hit]:
        import torch

        if not text.strip():
            raise QueryError("the query is empty: type some words to search for")
        with self._lock, torch.inference_mode():
            tokens = self.tokens([text]).to(self.device)
            features = self.model.encode_text(tokens, normalize=True)
        return self._search(features, k)

    def search_image(self, data: bytes, name: str, k: int) -> list[Hit]:
        import torch

        image = _read_image(data, name, self.high_bit_depth)
        with self._lock, torch.inference_mode():
            pixels = self.preprocess(image).unsqueeze(0).to(self.device)
            features = self.model.encode_image(pixels, normalize=True)
        return self._search(features, k)

    def file(self, row: int) -> Path | None:
        """The file of `row`, if it is a row of the index, an image file, and in `image_root`."""
        from mmcl.data.images import IMAGE_EXTENSIONS

        if not 0 <= row < len(self.files):
            return None
        path = self.files[row].resolve()
        inside = path.is_relative_to(self.image_root)
        if not (inside and path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS):
            return None
        return path

    def thumbnail(self, row: int, size: int = THUMBNAIL_SIZE) -> bytes | None:
        """The image of `row` (see `file`) as a JPEG at most `size` pixels a side, or None."""
        path = self.file(row)
        if path is None:
            return None
        return _thumbnail(path, path.stat().st_mtime_ns, size)  # a changed file: a new entry

    def _search(self, features, k: int) -> list[Hit]:
        scores, paths = self.index.search(features, k)
        # Approximate indexes may find fewer than k rows: their scores are NaN, their paths left out.
        found = scores[0][~np.isnan(scores[0])]
        return [
            Hit(self._row[path], path, float(score))
            for path, score in zip(paths[0], found, strict=True)
        ]


@functools.lru_cache(maxsize=2048)  # about 2048 x 10 KB: the thumbnails of recent results
def _thumbnail(path: Path, modified: int, size: int) -> bytes | None:
    from mmcl.data.images import ImageReadError, load_image

    try:
        image = load_image(path)
    except ImageReadError:
        return None
    image.thumbnail((size, size))  # keeps the aspect ratio; never enlarges
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _shared_folder(files: list[Path]) -> Path:
    """The deepest folder that holds every file."""
    return Path(os.path.commonpath([str(path.parent) for path in files]))


def _check_files_reachable(index: SearchIndex, files: list[Path], root: Path) -> None:
    """Refuse to start when none of a sample of the indexed files is found from `root`: the
    index lists paths relative to the folder `mmcl embed` ran in."""
    sample = files[:: max(1, len(files) // 20)][:20]
    if not any(path.is_file() for path in sample):
        raise FileNotFoundError(
            f"{index.folder}: its images are not found from {root} (e.g. {sample[0]}): "
            f"start the service in the folder `mmcl embed` ran in, or give --root that folder"
        )


def _read_image(data: bytes, name: str, high_bit_depth: str):
    """The uploaded bytes as an image, read by `load_image` (so with its checks: whole decode,
    pixel limit) from a temporary file."""
    from mmcl.data.images import ImageReadError, load_image

    if not data:
        raise QueryError("the uploaded file is empty: choose an image to search with")
    with tempfile.TemporaryDirectory(prefix="mmcl-serve-") as folder:
        path = Path(folder) / "upload"
        path.write_bytes(data)
        try:
            return load_image(path, high_bit_depth)
        except ImageReadError as error:
            reason = str(error).removeprefix(f"{path}: cannot read image ")
            raise QueryError(
                f"the uploaded file {name!r} is not a readable image {reason}"
            ) from None
