"""Image-text retrieval recall at k (Flickr30k / MSCOCO style), computed in bounded memory.

Each image may have several captions; ``text_to_image[t]`` is the index of the image caption
``t`` describes. Text-to-image: caption ``t`` is a hit at k when its image is among the k images
scoring highest for it. Image-to-text: image ``i`` is a hit at k when any of its captions is
among the k captions scoring highest for it.

Scores are dot products of the features as given, so pass L2-normalised features to rank by
cosine similarity. Ties are broken towards the lower index, as a stable descending sort
would: a candidate with the same score as the right answer outranks it only when its index is
lower. Similarities are computed ``chunk_size`` rows at a time, so at most
``chunk_size x max(num_images, num_texts)`` scores exist at once.

>>> import torch
>>> images = torch.eye(3)
>>> texts = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 0]])
>>> retrieval_recall(images, texts, torch.tensor([0, 1, 1, 2]), ks=(1,))
{'image_to_text_R@1': 0.6666666666666666, 'text_to_image_R@1': 0.5}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["recall_from_scores", "retrieval_recall"]


def retrieval_recall(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall at each k in both directions, as fractions in [0, 1].

    Args:
        image_features: ``(num_images, dim)``.
        text_features: ``(num_texts, dim)``; moved to the image features' device.
        text_to_image: ``(num_texts,)`` image index of each caption; every image needs at
            least one caption.
        ks: the cut-offs; a k above the number of candidates counts every candidate.
        chunk_size: rows of the similarity matrix computed at once.

    Returns:
        ``{"image_to_text_R@1": ..., ..., "text_to_image_R@1": ..., ...}``.
    """
    ks = _validated_ks(ks)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    images, texts, owner = _validated_inputs(image_features, text_features, text_to_image)

    image_hits = _image_to_text_hits(
        lambda start, stop: images[start:stop] @ texts.T, len(images), owner, ks, chunk_size
    )
    text_hits = _text_to_image_hits(
        lambda start, stop: texts[start:stop] @ images.T, len(images), owner, ks, chunk_size
    )
    return _recalls(image_hits, text_hits, len(images), len(texts), ks)


def recall_from_scores(
    image_to_text: torch.Tensor,
    text_to_image_scores: torch.Tensor,
    text_to_image: torch.Tensor | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """`retrieval_recall` from given scores rather than features: `image_to_text`
    ``(num_images, num_texts)`` ranks each image's captions, `text_to_image_scores`
    ``(num_texts, num_images)`` each caption's images (e.g. ITM re-ranked, where the two
    directions are scored apart). Same keys, same tie-breaking.

    >>> scores = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    >>> recall_from_scores(scores, scores.T.flip(1), [0, 1], ks=(1,))
    {'image_to_text_R@1': 1.0, 'text_to_image_R@1': 0.0}
    """
    ks = _validated_ks(ks)
    image_to_text = image_to_text.float()
    num_images, num_texts = image_to_text.shape
    if text_to_image_scores.shape != (num_texts, num_images):
        raise ValueError(
            f"text_to_image_scores must have shape ({num_texts}, {num_images}), the transpose "
            f"of image_to_text's, got {tuple(text_to_image_scores.shape)}"
        )
    # The owner checks of the feature path, on stand-in features of the right counts.
    _, _, owner = _validated_inputs(
        torch.zeros(num_images, 1, device=image_to_text.device),
        torch.zeros(num_texts, 1),
        text_to_image,
    )
    text_scores = text_to_image_scores.to(device=image_to_text.device, dtype=torch.float32)
    chunk = max(num_images, num_texts)
    image_hits = _image_to_text_hits(
        lambda start, stop: image_to_text[start:stop], num_images, owner, ks, chunk
    )
    text_hits = _text_to_image_hits(
        lambda start, stop: text_scores[start:stop], num_images, owner, ks, chunk
    )
    return _recalls(image_hits, text_hits, num_images, num_texts, ks)


def _recalls(image_hits, text_hits, num_images, num_texts, ks) -> dict[str, float]:
    return {
        **{f"image_to_text_R@{k}": image_hits[k] / num_images for k in ks},
        **{f"text_to_image_R@{k}": text_hits[k] / num_texts for k in ks},
    }


def _text_to_image_hits(
    scores_of: Callable[[int, int], torch.Tensor],
    num_images: int,
    owner: torch.Tensor,
    ks: tuple[int, ...],
    chunk: int,
) -> dict[int, int]:
    hits = dict.fromkeys(ks, 0)
    image_index = torch.arange(num_images, device=owner.device)
    for start in range(0, len(owner), chunk):
        scores = scores_of(start, start + chunk)  # (chunk, num_images)
        target = owner[start : start + chunk, None]
        target_score = scores.gather(1, target)
        rank = (scores > target_score).sum(1) + (
            (scores == target_score) & (image_index[None, :] < target)
        ).sum(1)
        for k in ks:
            hits[k] += int((rank < k).sum())
    return hits


def _image_to_text_hits(
    scores_of: Callable[[int, int], torch.Tensor],
    num_images: int,
    owner: torch.Tensor,
    ks: tuple[int, ...],
    chunk: int,
) -> dict[int, int]:
    hits = dict.fromkeys(ks, 0)
    text_index = torch.arange(len(owner), device=owner.device)
    for start in range(0, num_images, chunk):
        scores = scores_of(start, start + chunk)  # (chunk, num_texts)
        image_index = torch.arange(start, start + len(scores), device=owner.device)
        own = owner[None, :] == image_index[:, None]
        # The image's best-ranked caption is its highest-scoring one, the lowest index among
        # equals; the image is a hit at k exactly when that caption is.
        best_score = scores.masked_fill(~own, float("-inf")).amax(1, keepdim=True)
        best = (own & (scores == best_score)).int().argmax(1, keepdim=True)  # first True
        rank = (scores > best_score).sum(1) + (
            (scores == best_score) & (text_index[None, :] < best)
        ).sum(1)
        for k in ks:
            hits[k] += int((rank < k).sum())
    return hits


def _validated_ks(ks: Sequence[int]) -> tuple[int, ...]:
    values = tuple(ks)
    if not values or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in values):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    return values


def _validated_inputs(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor | Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    for name, features in (("image_features", image_features), ("text_features", text_features)):
        if not isinstance(features, torch.Tensor) or features.ndim != 2 or len(features) == 0:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features)
            raise ValueError(f"{name} must be a non-empty (N, dim) tensor, got {shape}")
        if not features.dtype.is_floating_point:
            raise TypeError(f"{name} must be floating point, got {features.dtype}")
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"image features have {image_features.shape[1]} dims, text features "
            f"{text_features.shape[1]}"
        )
    device = image_features.device
    # float32 so that half-precision features compare ties the same way on every device.
    images = image_features.float()
    texts = text_features.to(device=device, dtype=torch.float32)
    if not (torch.isfinite(images).all() and torch.isfinite(texts).all()):
        raise ValueError("features contain NaN or infinity")

    owner = torch.as_tensor(text_to_image, device=device)
    if owner.dtype.is_floating_point or owner.dtype == torch.bool:
        raise TypeError(f"text_to_image must hold integer image indices, got {owner.dtype}")
    if owner.shape != (len(texts),):
        raise ValueError(
            f"text_to_image must have shape ({len(texts)},), one image index per caption, "
            f"got {tuple(owner.shape)}"
        )
    owner = owner.long()
    if int(owner.min()) < 0 or int(owner.max()) >= len(images):
        raise ValueError(
            f"text_to_image must lie in [0, {len(images)}), got values in "
            f"[{int(owner.min())}, {int(owner.max())}]"
        )
    captions_per_image = torch.bincount(owner, minlength=len(images))
    if not bool((captions_per_image > 0).all()):
        orphans = torch.nonzero(captions_per_image == 0).flatten()
        raise ValueError(
            f"{len(orphans)} image(s) have no caption, so image-to-text recall is undefined "
            f"for them (first: {orphans[:5].tolist()})"
        )
    return images, texts, owner
