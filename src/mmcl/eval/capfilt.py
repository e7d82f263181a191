"""CapFilt (BLIP, Li et al. 2022, section 3.3): clean a captioned data set of web text with a
captioner and a filter. The captioner writes one synthetic caption per image (nucleus
sampling, for diverse captions); the filter, an image-text matching (ITM) head, drops every
caption, web or synthetic, whose match probability with its image is below a threshold.

What remains is each image's matching web captions and, when it matches, its synthetic one.
Each web caption is counted as *kept* (it matches), *replaced* (it does not, but its image's
synthetic caption does, so the image keeps a caption) or *dropped* (neither matches).

>>> decide([0, 0, 1], web_match=[True, False, False], synthetic_match=[True, False])
([('web', 0), ('synthetic', 0)], CapFiltCounts(kept=1, replaced=1, dropped=1, synthetic_kept=1, synthetic_dropped=1, skipped_images=0))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmcl.data.images import ImageFiles
from mmcl.eval.captioner import Captioner
from mmcl.eval.embed import image_loader
from mmcl.eval.model_text import ModelText
from mmcl.io.progress import progress as progress_bar
from mmcl.io.transforms import get_preprocess

__all__ = ["CapFiltCounts", "CapFiltResult", "capfilt", "decide"]


@dataclass
class CapFiltCounts:
    kept: int = 0  # web captions that match their image
    replaced: int = 0  # web captions that do not, of images whose synthetic caption does
    dropped: int = 0  # web captions that do not, of images whose synthetic one does not either
    synthetic_kept: int = 0  # images whose synthetic caption matches
    synthetic_dropped: int = 0
    skipped_images: int = 0  # unreadable images (with skip_bad), their web captions left out


@dataclass
class CapFiltResult:
    """`rows`: (image index, caption, "web" or "synthetic", match probability), image by image
    in order of first appearance, each image's web captions in table order, then its synthetic
    one. `synthetic`: every image's synthetic caption (None for unreadable images)."""

    rows: list[tuple[int, str, str, float]]
    counts: CapFiltCounts
    synthetic: list[str | None] = field(default_factory=list)


def decide(
    owner: Sequence[int], web_match: Sequence[bool], synthetic_match: Sequence[bool]
) -> tuple[list[tuple[str, int]], CapFiltCounts]:
    """CapFilt's choice, from the filter's verdicts: web caption `t` describes image
    ``owner[t]``; returns the kept captions as ("web", caption index) and ("synthetic", image
    index), image by image, with the counts (see the module docstring)."""
    counts = CapFiltCounts()
    by_image: dict[int, list[int]] = {}
    for caption, image in enumerate(owner):
        by_image.setdefault(image, []).append(caption)
    kept = []
    for image, captions in by_image.items():
        for caption in captions:
            if web_match[caption]:
                counts.kept += 1
                kept.append(("web", caption))
            elif synthetic_match[image]:
                counts.replaced += 1
            else:
                counts.dropped += 1
        if synthetic_match[image]:
            kept.append(("synthetic", image))
    counts.synthetic_kept = sum(bool(synthetic_match[image]) for image in by_image)
    counts.synthetic_dropped = len(by_image) - counts.synthetic_kept
    return kept, counts


class _BothTransforms:
    """The captioner's and the filter's preprocessing of one image (each model its own size
    and normalisation); a class, not a lambda, so DataLoader workers can pickle it."""

    def __init__(self, first: Callable, second: Callable):
        self.first, self.second = first, second

    def __call__(self, image):
        return self.first(image), self.second(image)


@torch.no_grad()
def capfilt(
    captioner: Captioner,
    filter_model,
    filter_text: ModelText,
    paths: Sequence[str | os.PathLike],
    captions: Sequence[str],
    threshold: float = 0.5,
    batch_size: int = 16,
    workers: int = 0,
    device: str | torch.device = "cpu",
    skip_bad: bool = False,
    progress: bool = True,
    high_bit_depth: str = "scale",
) -> CapFiltResult:
    """CapFilt over a caption table: web caption ``captions[t]`` describes image
    ``paths[t]`` (an image may have several). Each distinct image is read once, captioned by
    `captioner` and, with its captions, scored by the ITM head of `filter_model` (a `Blip` or an `Albef`);
    a caption is kept when its match probability (the softmax of the ITM logits) is at least
    `threshold`. Returns the kept rows, the counts and the synthetic captions."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if len(paths) != len(captions):
        raise ValueError(f"{len(paths)} image paths but {len(captions)} captions")
    images: dict[Path, int] = {}
    owner = [images.setdefault(Path(path), len(images)) for path in paths]
    captions_of: list[list[int]] = [[] for _ in images]
    for caption, image in enumerate(owner):
        captions_of[image].append(caption)
    transform = _BothTransforms(get_preprocess(captioner.model), get_preprocess(filter_model))
    dataset = ImageFiles(list(images), transform, skip_bad=skip_bad, high_bit_depth=high_bit_depth)
    loader = image_loader(dataset, device, workers, batch_size=batch_size)
    generator = captioner.generator(0, device)
    synthetic: list[str | None] = [None] * len(images)
    web_probability = [0.0] * len(captions)
    synthetic_probability = [0.0] * len(images)
    readable = [False] * len(images)
    with progress_bar(total=len(images), desc="CapFilt", unit="image", disable=not progress) as bar:
        for pixels, _, rows, dropped in loader:
            bar.update(len(rows) + dropped)
            if not len(rows):
                continue
            caption_pixels, filter_pixels = (p.to(device, non_blocking=True) for p in pixels)
            rows = rows.tolist()
            written = captioner.caption(caption_pixels, generator)
            image_tokens = filter_model.encode_image_tokens(filter_pixels)
            pairs = [
                (position, captions[t]) for position, i in enumerate(rows) for t in captions_of[i]
            ]
            pairs += list(enumerate(written))
            probability = _match_probability(filter_model, filter_text, image_tokens, pairs, device)
            web = [t for i in rows for t in captions_of[i]]
            for t, p in zip(web, probability[: len(web)], strict=True):
                web_probability[t] = p
            for i, text, p in zip(rows, written, probability[len(web) :], strict=True):
                synthetic[i], synthetic_probability[i], readable[i] = text, p, True
    kept_owner = [t for t in range(len(captions)) if readable[owner[t]]]
    chosen, counts = decide(
        [owner[t] for t in kept_owner],
        [web_probability[t] >= threshold for t in kept_owner],
        [readable[i] and synthetic_probability[i] >= threshold for i in range(len(images))],
    )
    counts.skipped_images = readable.count(False)
    rows_out = []
    for source, index in chosen:
        if source == "web":
            caption = kept_owner[index]
            rows_out.append((owner[caption], captions[caption], "web", web_probability[caption]))
        else:
            rows_out.append((index, synthetic[index], "synthetic", synthetic_probability[index]))
    return CapFiltResult(rows_out, counts, synthetic)


def _match_probability(model, text: ModelText, image_tokens, pairs, device) -> list[float]:
    """ITM match probability of each (image position in the batch, caption) pair."""
    if not pairs:
        return []
    positions = torch.tensor([position for position, _ in pairs], device=image_tokens.device)
    tokens = text.tokens([caption for _, caption in pairs]).to(device)
    logits = model.itm_logits(image_tokens[positions], tokens)
    return logits.float().softmax(dim=-1)[:, 1].tolist()
