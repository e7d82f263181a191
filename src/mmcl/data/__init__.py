"""Data: image datasets on disk, and class names and prompt templates for zero-shot evaluation."""

from mmcl.data.zeroshot import (
    ZeroShotMetadata,
    available_zero_shot_datasets,
    format_prompts,
    load_zero_shot_metadata,
    normalize_template,
)

__all__ = [
    "ZeroShotMetadata",
    "available_zero_shot_datasets",
    "format_prompts",
    "load_zero_shot_metadata",
    "normalize_template",
]
