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

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmcl.data.images import ImageFiles
from mmcl.eval.caption_folder import part_batches
from mmcl.eval.captioner import Captioner
from mmcl.eval.embed import image_loader
from mmcl.eval.embed_folder import open_parts_folder, weights_fingerprint
from mmcl.eval.model_text import ModelText
from mmcl.io.atomic import atomic_path
from mmcl.io.progress import progress as progress_bar
from mmcl.io.transforms import get_preprocess

__all__ = ["CapFiltCounts", "CapFiltResult", "capfilt", "decide"]

PARTS_FORMAT = 1


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
    one. `synthetic`: every image's synthetic caption (None for unreadable images).
    `parts_reused`: finished parts found in the `parts` folder (an earlier, stopped run)."""

    rows: list[tuple[int, str, str, float]]
    counts: CapFiltCounts
    synthetic: list[str | None] = field(default_factory=list)
    parts_reused: int = 0


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
    parts: str | os.PathLike | None = None,
    part_size: int = 1024,
    settings: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
) -> CapFiltResult:
    """CapFilt over a caption table: web caption ``captions[t]`` describes image
    ``paths[t]`` (an image may have several). Each distinct image is read once, captioned by
    `captioner` and, with its captions, scored by the ITM head of `filter_model` (a `Blip` or
    an `Albef`); a caption is kept when its match probability (the softmax of the ITM logits)
    is at least `threshold`. Returns the kept rows, the counts and the synthetic captions.

    With `parts` (a folder), the distinct images are taken `part_size` at a time and each
    finished part (its synthetic captions and every match probability) is written there
    atomically, as `mmcl caption` does: a rerun with the same inputs computes only the
    missing parts, and one that differs in what fixes them (files, captions, part size,
    either model, tokenizer, preprocessing, decoding, `settings`) is refused. `threshold`
    is applied when the parts are joined, so it may change between runs. Sampled captions
    draw from a seed per part, so a resumed run writes what an uninterrupted one would."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if len(paths) != len(captions):
        raise ValueError(f"{len(paths)} image paths but {len(captions)} captions")
    if part_size < 1 or batch_size < 1:
        raise ValueError(
            f"part_size and batch_size must be positive, got {part_size}, {batch_size}"
        )
    images: dict[Path, int] = {}
    owner = [images.setdefault(Path(path), len(images)) for path in paths]
    captions_of: list[list[int]] = [[] for _ in images]
    for caption, image in enumerate(owner):
        captions_of[image].append(caption)
    transforms = (get_preprocess(captioner.model), get_preprocess(filter_model))
    dataset = ImageFiles(
        list(images), _BothTransforms(*transforms), skip_bad=skip_bad, high_bit_depth=high_bit_depth
    )
    spans = [(s, min(s + part_size, len(images))) for s in range(0, len(images), part_size)]
    verdicts: dict[int, dict] = {}  # image -> its synthetic caption and match probabilities
    folder = None if parts is None else Path(parts)
    if folder is not None:
        table = (list(images), owner, captions)
        models = (captioner, filter_model, filter_text)
        manifest = _manifest(models, table, part_size, transforms, dataset, settings)
        open_parts_folder(folder, manifest, dict(source or {}), "capfilt", "part-*.jsonl")
        for part, span in enumerate(spans):
            if _part_path(folder, part).exists():
                verdicts.update(_read_part(folder, part, span, captions_of))
    missing = [
        part
        for part in range(len(spans))
        if folder is None or not _part_path(folder, part).exists()
    ]
    batches, plan = part_batches(spans, missing, batch_size)
    loader = image_loader(dataset, device, workers if batches else 0, batch_sampler=batches)
    done = len(images) - sum(len(batch) for batch in batches)
    part_verdicts: dict[int, dict] = {}
    generator = None
    with progress_bar(
        total=len(images), initial=done, desc="CapFilt", unit="image", disable=not progress
    ) as bar:
        for (part, first, last), batch, (pixels, _, rows, _) in zip(
            plan, batches, loader, strict=True
        ):
            if first:
                generator = captioner.generator(spans[part][0], device)
            bar.update(len(batch))
            if len(rows):
                caption_pixels, filter_pixels = (p.to(device, non_blocking=True) for p in pixels)
                rows = rows.tolist()
                written = captioner.caption(caption_pixels, generator)
                image_tokens = filter_model.encode_image_tokens(filter_pixels)
                pairs = [(k, captions[t]) for k, i in enumerate(rows) for t in captions_of[i]]
                pairs += list(enumerate(written))
                probability = _match_probability(
                    filter_model, filter_text, image_tokens, pairs, device
                )
                web_count = len(pairs) - len(written)
                web = iter(probability[:web_count])
                for i, text, p in zip(rows, written, probability[web_count:], strict=True):
                    web_match = [next(web) for _ in captions_of[i]]
                    part_verdicts[i] = {"synthetic": text, "match": p, "web_match": web_match}
            if last:
                if folder is not None:
                    _write_part(folder, part, spans[part], part_verdicts)
                verdicts.update(part_verdicts)
                part_verdicts = {}
    result = _join(verdicts, owner, captions, len(images), threshold)
    result.parts_reused = len(spans) - len(missing)
    return result


def _join(verdicts: dict[int, dict], owner, captions, image_count: int, threshold: float):
    """`decide` on every image's verdicts (`capfilt`'s result)."""
    web_probability, synthetic_probability = [0.0] * len(captions), [0.0] * image_count
    synthetic: list[str | None] = [None] * image_count
    captions_of: list[list[int]] = [[] for _ in range(image_count)]
    for caption, image in enumerate(owner):
        captions_of[image].append(caption)
    for image, verdict in verdicts.items():
        synthetic[image], synthetic_probability[image] = verdict["synthetic"], verdict["match"]
        for t, p in zip(captions_of[image], verdict["web_match"], strict=True):
            web_probability[t] = p
    kept_owner = [t for t in range(len(captions)) if owner[t] in verdicts]
    chosen, counts = decide(
        [owner[t] for t in kept_owner],
        [web_probability[t] >= threshold for t in kept_owner],
        [i in verdicts and synthetic_probability[i] >= threshold for i in range(image_count)],
    )
    counts.skipped_images = image_count - len(verdicts)
    rows_out = []
    for source, index in chosen:
        if source == "web":
            caption = kept_owner[index]
            rows_out.append((owner[caption], captions[caption], "web", web_probability[caption]))
        else:
            rows_out.append((index, synthetic[index], "synthetic", synthetic_probability[index]))
    return CapFiltResult(rows_out, counts, synthetic)


def _manifest(models, table, part_size: int, transforms, dataset, settings) -> dict:
    """What fixes a part's contents; `open_parts_folder` refuses a resume that differs."""
    captioner, filter_model, filter_text = models
    images, owner, captions = table
    listing = "\n".join(os.path.abspath(p) for p in images)
    table = json.dumps([[o, c] for o, c in zip(owner, captions, strict=True)], ensure_ascii=False)

    def model_entry(model, text_fingerprint: str, transform) -> dict:
        config = getattr(model, "config", None)
        return {
            "config": config.to_dict() if hasattr(config, "to_dict") else None,
            "weights_sha256": weights_fingerprint(model),
            "tokenizer_sha256": text_fingerprint,
            "preprocess": repr(transform),
        }

    return {
        "format": PARTS_FORMAT,
        "files": {"count": len(images), "sha256": hashlib.sha256(listing.encode()).hexdigest()},
        "web_captions_sha256": hashlib.sha256(table.encode()).hexdigest(),
        "part_size": part_size,
        "captioner": model_entry(captioner.model, captioner.text.fingerprint, transforms[0]),
        "decoding": captioner.settings.to_dict(),
        "filter": model_entry(filter_model, filter_text.fingerprint, transforms[1]),
        "image_reading": {
            "high_bit_depth": dataset.high_bit_depth,
            "max_image_pixels": dataset.max_image_pixels,
        },
        "settings": dict(settings or {}),
    }


def _part_path(folder: Path, part: int) -> Path:
    return folder / f"part-{part:06d}.jsonl"


def _write_part(folder: Path, part: int, span: tuple[int, int], verdicts: dict[int, dict]) -> None:
    """One JSON line per image of the part: its verdicts, or that it was unreadable."""
    lines = [
        {"image": i, **verdicts[i]} if i in verdicts else {"image": i, "skipped": True}
        for i in range(*span)
    ]
    with atomic_path(_part_path(folder, part)) as tmp:
        tmp.write_text(
            "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines),
            encoding="utf-8",
        )


def _read_part(folder: Path, part: int, span: tuple[int, int], captions_of) -> dict[int, dict]:
    path = _part_path(folder, part)
    try:
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        found = [line["image"] for line in lines]
        verdicts = {
            line["image"]: {k: line[k] for k in ("synthetic", "match", "web_match")}
            for line in lines
            if not line.get("skipped")
        }
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: unreadable part ({error}); delete it to recompute") from None
    wrong = any(len(v["web_match"]) != len(captions_of[i]) for i, v in verdicts.items())
    if found != list(range(*span)) or wrong:
        raise ValueError(
            f"{path} does not hold images {span[0]}-{span[1] - 1}; delete it to recompute"
        )
    return verdicts


def _match_probability(model, text: ModelText, image_tokens, pairs, device) -> list[float]:
    """ITM match probability of each (image position in the batch, caption) pair."""
    if not pairs:
        return []
    positions = torch.tensor([position for position, _ in pairs], device=image_tokens.device)
    tokens = text.tokens([caption for _, caption in pairs]).to(device)
    logits = model.itm_logits(image_tokens[positions], tokens)
    return logits.float().softmax(dim=-1)[:, 1].tolist()
