"""Reading what `mmcl embed --images` wrote, for `mmcl index`: the features file, its row
names (`<features>.index.txt`) and the record of the model that produced them
(`<features>.embedding.json`). Every inconsistency is an error naming the file and the way out.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from mmcl.eval.embed import FEATURE_SUFFIXES
from mmcl.eval.embed_folder import embedding_record_path
from mmcl.io.text_files import read_text


@dataclass
class EmbedOutput:
    features_path: Path
    features: np.ndarray  # (rows, dim) float32; a memory map for .npy files
    names: list[str]  # one per row: the image paths as embed listed them
    record: dict  # embedding_record's fields: model identity and embedding settings


def row_index_path(features: Path) -> Path:
    return features.with_name(features.name + ".index.txt")


def read_embed_output(path: str | os.PathLike) -> EmbedOutput:
    """The features, row names and embedding record of one `mmcl embed --images` output."""
    path = Path(path)
    if path.suffix not in FEATURE_SUFFIXES:
        raise ValueError(f"{path}: expected a features file ending in .npy or .safetensors")
    if not path.is_file():
        raise FileNotFoundError(
            f"features file not found: {path} (write it with `mmcl embed --images`)"
        )
    features = _read_features(path)
    names_path = row_index_path(path)
    names_text = read_text(names_path, "row-name index of " + path.name)
    names = names_text.split("\n")[:-1] if names_text.endswith("\n") else names_text.split("\n")
    if names == [""]:
        names = []
    if len(names) != len(features):
        raise ValueError(
            f"{names_path}: {len(names)} row names for the {len(features)} rows of {path}; "
            f"the two were not written together: rerun `mmcl embed`"
        )
    if len(features) == 0:
        raise ValueError(f"{path}: no rows (an empty collection); nothing to index")
    record = _read_record(path, names_text, features.shape)
    return EmbedOutput(path, features, names, record)


def _read_features(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            features = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            with safe_open(str(path), framework="numpy") as handle:
                if "features" not in handle.keys():
                    raise ValueError(f"{path}: no tensor named 'features' (keys {handle.keys()})")
                features = handle.get_tensor("features")
    except (OSError, SafetensorError, EOFError) as error:
        raise ValueError(
            f"{path}: unreadable features file ({error}); rerun `mmcl embed`"
        ) from None
    if features.ndim != 2 or features.dtype != np.float32:
        raise ValueError(
            f"{path}: expected a (rows, dim) float32 matrix, found {features.dtype} of shape "
            f"{features.shape}"
        )
    return features


def _read_record(path: Path, names_text: str, shape: tuple[int, int]) -> dict:
    record_path = embedding_record_path(path)
    if not record_path.is_file():
        raise FileNotFoundError(
            f"{record_path} not found: the index needs the model that made {path.name}, which "
            f"`mmcl embed --images` records there (rerun it; older versions did not write it)"
        )
    try:
        record = json.loads(read_text(record_path, "embedding record"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{record_path}: not valid JSON ({error}); rerun `mmcl embed`") from None
    names_hash = hashlib.sha256(names_text.encode()).hexdigest()
    if record.get("row_names_sha256") != names_hash or [record.get("rows"), record.get("dim")] != [
        *shape
    ]:
        raise ValueError(
            f"{record_path} describes another output than {path} (rows, dimension or file list "
            f"differ): the features were rewritten without it; rerun `mmcl embed --images`"
        )
    return record
