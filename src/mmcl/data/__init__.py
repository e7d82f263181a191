"""Data: images on disk, captioned tables, webdataset shards, built-in procedural scenes (with
captions, and questions and answers), and class names and prompt templates for zero-shot
evaluation."""

from mmcl.data.captions import CaptionedImages, ClassCaptions, collate_pairs
from mmcl.data.images import ImageFiles, class_folders, list_images, load_image
from mmcl.data.scene_qa import QUESTION_KINDS, SceneQuestions, scene_texts
from mmcl.data.scenes import (
    Scene,
    SceneCaptions,
    SceneClassification,
    render,
    save_preview,
    view_classnames,
    view_templates,
)
from mmcl.data.shards import ShardStream, write_shards
from mmcl.data.zeroshot import (
    ZeroShotMetadata,
    available_zero_shot_datasets,
    format_prompts,
    load_zero_shot_metadata,
    normalize_template,
)

__all__ = [
    "CaptionedImages",
    "ClassCaptions",
    "ImageFiles",
    "QUESTION_KINDS",
    "Scene",
    "SceneCaptions",
    "SceneClassification",
    "SceneQuestions",
    "ShardStream",
    "ZeroShotMetadata",
    "available_zero_shot_datasets",
    "class_folders",
    "collate_pairs",
    "format_prompts",
    "list_images",
    "load_image",
    "load_zero_shot_metadata",
    "normalize_template",
    "render",
    "save_preview",
    "scene_texts",
    "view_classnames",
    "view_templates",
    "write_shards",
]
