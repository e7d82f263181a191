"""Streaming images and texts through a model into feature matrices, in batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mmcl.data.images import ImageFiles, collate_skipping_bad


@dataclass
class ImageEmbeddings:
    features: torch.Tensor  # (kept images, embed_dim), float32, L2-normalised
    indices: torch.Tensor  # position of each kept row in the dataset
    skipped: int  # unreadable files dropped (only with skip_bad=True)


@torch.no_grad()
def embed_images(
    model,
    dataset: ImageFiles,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> ImageEmbeddings:
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_skipping_bad,
        persistent_workers=False,
    )
    features, indices, skipped = [], [], 0
    for images, _, batch_indices, dropped in tqdm(
        loader, desc="embedding images", unit="batch", disable=not progress
    ):
        skipped += dropped
        if len(batch_indices):
            features.append(model.encode_image(images.to(device), normalize=True).float().cpu())
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
    """(len(texts), embed_dim) float32 L2-normalised text features."""
    if not texts:
        raise ValueError("no texts to embed")
    chunks = []
    for start in tqdm(
        range(0, len(texts), batch_size),
        desc="embedding texts",
        unit="batch",
        disable=not progress,
    ):
        tokens = tokenizer(list(texts[start : start + batch_size])).to(device)
        chunks.append(model.encode_text(tokens, normalize=True).float().cpu())
    return torch.cat(chunks)
