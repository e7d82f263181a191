"""Streaming images and texts through a model into feature matrices, in batches.

- `embed_texts`: texts sorted by token length so each batch pads little, then put back in order.
- `embed_images`: an `ImageFiles` dataset into one in-memory matrix (zero-shot, retrieval).
- `save_features`: a feature matrix and its row names to disk, atomically.

`mmcl.eval.embed_folder` embeds a long list of image files into a features file on disk, part
by part (the `mmcl embed` command).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from mmcl.data.images import ImageFiles, collate_skipping_bad
from mmcl.io.atomic import atomic_path
from mmcl.io.progress import progress as progress_bar
from mmcl.nn.streams import in_streams

FEATURE_SUFFIXES = (".npy", ".safetensors")


@dataclass
class ImageEmbeddings:
    features: torch.Tensor  # (kept images, embed_dim), float32, L2-normalised
    indices: torch.Tensor  # position of each kept row in the dataset
    skipped: int  # unreadable files dropped (only with skip_bad=True)


def image_loader(dataset, device, workers: int, **batching) -> DataLoader:
    # Pinned host memory lets the copy to the GPU run while the next batch is collated.
    return DataLoader(
        dataset,
        num_workers=workers,
        collate_fn=collate_skipping_bad,
        pin_memory=torch.device(device).type == "cuda",
        **batching,
    )


@torch.no_grad()  # not inference_mode: callers may use the features in training
def embed_images(
    model,
    dataset: ImageFiles,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    streams: int = 1,
) -> ImageEmbeddings:
    """L2-normalised float32 features of `dataset`'s readable images, in batches.

    `streams` > 1 encodes each batch on the CPU as that many parts side by side (see
    `mmcl.nn.streams`): more images a second at large batches, the same function.
    """
    encode = functools.partial(model.encode_image, normalize=True)
    loader = image_loader(dataset, device, workers, batch_size=batch_size)
    features, indices, skipped = [], [], 0
    for images, _, batch_indices, dropped in progress_bar(
        loader, desc="embedding images", unit="batch", disable=not progress
    ):
        skipped += dropped
        if len(batch_indices):
            images = images.to(device, non_blocking=True)
            features.append(in_streams(encode, images, streams).float().cpu())
            indices.append(batch_indices)
    if not features:
        raise ValueError("no readable images to embed")
    return ImageEmbeddings(torch.cat(features), torch.cat(indices), skipped)


@torch.no_grad()
def embed_texts(
    model,
    texts: Sequence[str],
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> torch.Tensor:
    """(len(texts), embed_dim) float32 L2-normalised text features, in the order of `texts`.

    Texts are encoded longest first, in batches of similar token length: the text tower only
    computes up to the longest text of a batch, so sorting spares most of the padding's work.
    The rows are put back in the order of `texts`.

    >>> import mmcl
    >>> model = mmcl.create_model("tiny-vit")
    >>> embed_texts(model, ["a cat", "a photo of a dog"], mmcl.tokenize, progress=False).shape
    torch.Size([2, 64])
    """
    if not texts:
        raise ValueError("no texts to embed")
    tokens = tokenizer(list(texts))  # (len(texts), context_length)
    # A text's length: its last non-padding (non-zero) id. Only the batching depends on it,
    # never the result, so a tokenizer with another padding id is slower, not wrong.
    positions = torch.arange(1, tokens.shape[1] + 1)
    lengths = ((tokens != 0) * positions).amax(dim=1)
    order = torch.sort(lengths, descending=True, stable=True).indices  # longest first: OOM early
    features = None
    for start in progress_bar(
        range(0, len(order), batch_size),
        desc="embedding texts",
        unit="batch",
        disable=not progress,
    ):
        rows = order[start : start + batch_size]
        batch = model.encode_text(tokens[rows].to(device), normalize=True).float().cpu()
        if features is None:
            features = torch.empty(len(order), batch.shape[1])
        features[rows] = batch
    return features


def save_features(path: str | os.PathLike, features: torch.Tensor, names: Sequence[str]) -> Path:
    """Write `features` to `path` (.npy, or .safetensors under the key "features") and one row
    name a line to `<path>.index.txt`, both atomically; returns the index path."""
    path = Path(path)
    check_feature_suffix(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".npy":
            with open(tmp, "wb") as handle:
                np.save(handle, features.numpy())
        else:
            save_file({"features": features.contiguous()}, str(tmp))
    return write_row_index(path, names)


def check_feature_suffix(path: Path) -> None:
    if path.suffix not in FEATURE_SUFFIXES:
        raise ValueError(f"the output must end in .npy or .safetensors, got {path}")


def write_row_index(path: Path, names: Sequence[str]) -> Path:
    index = path.with_name(path.name + ".index.txt")
    with atomic_path(index) as tmp:
        tmp.write_text("".join(name.replace("\n", " ") + "\n" for name in names))
    return index
