"""`mmcl embed --images` outputs written without a model, for the index tests: a features file,
its `.index.txt` row names and the `.embedding.json` record, written by embed's own functions
(`save_features`, `write_embedding_record`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmcl.eval.embed import save_features
from mmcl.eval.embed_folder import write_embedding_record

WEIGHTS = "a" * 64  # the weights fingerprint the records below carry


def unit_rows(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def clustered_unit_rows(rows: int, dim: int, clusters: int, spread: float, seed: int = 0):
    """Unit vectors around `clusters` random centres (noise `spread` a coordinate); the
    centres are the same whatever the `seed` of the points."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(clusters, dim, seed=100)
    vectors = centres[rng.integers(clusters, size=rows)]
    vectors = vectors + spread * rng.standard_normal((rows, dim)).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def write_embed_output(path: Path, features: np.ndarray, names, weights: str = WEIGHTS) -> Path:
    save_features(path, torch.from_numpy(features.astype(np.float32)), names)
    identity = {
        "model": "tiny-vit",
        "pretrained": "weights.safetensors",
        "weights_sha256": weights,
        "model_config": {"embed_dim": int(features.shape[1])},
        "preprocess": "Compose(...)",
        "image_reading": {"high_bit_depth": "scale", "max_image_pixels": 89478485},
        "settings": {"precision": "fp32"},
    }
    write_embedding_record(path, identity)
    return path


def names(count: int, prefix: str = "photos/img") -> list[str]:
    return [f"{prefix}{i:05d}.jpg" for i in range(count)]
