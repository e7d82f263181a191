"""Training recipes: one YAML file says which model, which data, which evaluation, which settings.

    model:  {name: tiny-vit, pretrained: null, <config overrides such as init_logit_bias>}
    data:   {kind: scenes | csv | folder | dataset | shards, tokenizer: clip | scenes-wordpiece,
             ...}
    eval:   {scene_views: [...], folder: ..., dataset: ..., split: ..., ...}
    train:  TrainConfig fields

`mmcl train --config demo` runs a recipe shipped with mmcl (see `mmcl train --list`); a path
runs your own. `--set train.lr=0.001` overrides any entry. `kind: dataset` (with `name:
cifar10`, `split: train`) and an eval `dataset` with a `split` and no `folder` read a data set
by name from the data root (`--data-root`, $MMCL_DATA_ROOT; `mmcl.data.datasets`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mmcl.io.tokenizer import tokenize
from mmcl.io.transforms import image_transform
from mmcl.models import create_model
from mmcl.train import FitResult, TrainConfig, Trainer
from mmcl.train.run_folder import resume_checkpoint

SECTIONS = ("model", "data", "eval", "train")
TOKENIZERS = ("clip", "scenes-wordpiece")  # data.tokenizer; BERT-style models read WordPiece


@dataclass
class Recipe:
    model: dict[str, Any]
    data: dict[str, Any]
    eval: dict[str, Any]
    train: TrainConfig
    source: str


def shipped_recipes() -> list[str]:
    folder = resources.files("mmcl") / "recipes"
    return sorted(entry.name[:-5] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def recipe_text(name_or_path: str | Path) -> tuple[str, str]:
    path = Path(name_or_path)
    if path.is_file():
        return path.read_text(encoding="utf-8"), str(path)
    if str(name_or_path) in shipped_recipes():
        entry = resources.files("mmcl") / "recipes" / f"{name_or_path}.yaml"
        return entry.read_text(encoding="utf-8"), f"recipe {name_or_path!r}"
    raise FileNotFoundError(
        f"{name_or_path}: no such file, and not a shipped recipe ({', '.join(shipped_recipes())})"
    )


def load_recipe(name_or_path: str | Path, overrides: list[str] = ()) -> Recipe:
    text, source = recipe_text(name_or_path)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{source}: invalid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected sections {SECTIONS}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{source}: unknown section(s) {unknown}; expected {list(SECTIONS)}")
    raw = copy.deepcopy(raw)
    for override in overrides:
        apply_override(raw, override)
    for section in ("model", "data"):
        if not raw.get(section):
            raise ValueError(f"{source}: the {section!r} section is missing or empty")
    return Recipe(
        raw["model"],
        raw["data"],
        raw.get("eval") or {},
        TrainConfig.from_dict(raw.get("train") or {}, source=f"{source}: train"),
        source,
    )


def apply_override(raw: dict[str, Any], override: str) -> None:
    """`section.key=value`, the value parsed as YAML (numbers, booleans, lists)."""
    key, sep, value = override.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or parts[0] not in SECTIONS:
        raise ValueError(
            f"--set {override!r}: expected section.key=value with section in {SECTIONS}"
        )
    raw.setdefault(parts[0], {})
    if raw[parts[0]] is None:
        raw[parts[0]] = {}
    raw[parts[0]][parts[1]] = yaml.safe_load(value)


def build_model(recipe: Recipe):
    options = dict(recipe.model)
    name, pretrained = options.pop("name", None), options.pop("pretrained", None)
    return create_model(name, pretrained=pretrained, **options)


def recipe_tokenizer(recipe: Recipe):
    """The tokenizer `data.tokenizer` names: "clip" (CLIP's BPE; the default) or
    "scenes-wordpiece" (`mmcl.data.scene_wordpiece`, for ALBEF on the built-in scenes)."""
    name = recipe.data.get("tokenizer", "clip")
    if name == "clip":
        return tokenize
    if name == "scenes-wordpiece":
        from mmcl.data.scene_wordpiece import scene_wordpiece_ids

        return scene_wordpiece_ids
    raise ValueError(f"{recipe.source}: data.tokenizer must be one of {TOKENIZERS}, got {name!r}")


def build_train_data(
    recipe: Recipe,
    image_size: int,
    data_root: str | Path | None = None,
    download: bool = False,
    model=None,
):
    """The training data set and its collate function (None: the default); texts are
    tokenized with the model's own tokenizer when it has one (BLIP's WordPiece), else with
    `data.tokenizer`'s."""
    data = dict(recipe.data)
    kind = data.pop("kind", None)
    data.pop("tokenizer", None)
    tokenizer = recipe_tokenizer(recipe)
    if getattr(model, "tokenizer", None) is not None:  # the model's own (BLIP's WordPiece)
        tokenizer = text_tokenizer(model)
    transform = image_transform(image_size, is_train=True)
    if kind == "scenes":
        from mmcl.data.scenes import SceneCaptions

        size = data.pop("size", 100_000)
        return SceneCaptions(
            "train", size, image_size=image_size, tokenizer=tokenizer, **data
        ), None
    if kind == "csv":
        from mmcl.data.captions import CaptionedImages, collate_pairs

        return CaptionedImages(
            transform=transform, tokenizer=tokenizer, **_renamed(data)
        ), collate_pairs
    if kind == "folder":
        from mmcl.data.captions import ClassCaptions, collate_pairs

        return ClassCaptions(transform=transform, tokenizer=tokenizer, **data), collate_pairs
    if kind == "dataset":
        from mmcl.data.captions import DatasetCaptions, collate_pairs
        from mmcl.data.datasets import find_dataset

        if "name" not in data:
            raise ValueError(f"{recipe.source}: data.kind dataset needs data.name (e.g. cifar10)")
        images = find_dataset(data.pop("name"), data.pop("split", "train"), data_root, download)
        return DatasetCaptions(images, transform, tokenizer, **data), collate_pairs
    if kind == "shards":
        from mmcl.data.shards import ShardStream
        from mmcl.train.distributed import init_from_env

        info = init_from_env()
        return ShardStream(
            data.pop("urls"),
            transform,
            tokenizer,
            rank=info.rank,
            world_size=info.world_size,
            seed=recipe.train.seed,
            batch_size=recipe.train.batch_size,
            num_workers=recipe.train.workers,
            **data,
        ), None
    raise ValueError(
        f"{recipe.source}: data.kind must be one of scenes, csv, folder, dataset, shards; got "
        f"{kind!r}"
    )


def text_tokenizer(model=None):
    """Texts -> ``(N, context)`` token ids, the model's way: its WordPiece tokenizer padded to
    its context length (batches stack), else CLIP's `tokenize`."""
    wordpiece = getattr(model, "tokenizer", None)
    return tokenize if wordpiece is None else _WordPieceIds(wordpiece)


class _WordPieceIds:  # a class, not a lambda: data loader workers may need to pickle it
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, texts):
        return self.tokenizer(texts, pad_to_context_length=True).input_ids


def _renamed(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    if "path" in data:
        data["table"] = data.pop("path")
    return data


def build_evaluation(
    recipe: Recipe, image_size: int, data_root: str | Path | None = None, download: bool = False
):
    from mmcl.eval import suites
    from mmcl.io.transforms import get_preprocess

    spec = dict(recipe.eval)
    tokenizer = recipe_tokenizer(recipe)
    parts = []
    split, size = spec.pop("scene_split", "test"), spec.pop("size", 500)
    if "scene_views" in spec:
        views = spec.pop("scene_views")
        parts.append(suites.scene_views_suite(views, split, size, image_size, tokenizer=tokenizer))
    if "retrieval_size" in spec:
        texts = spec.pop("retrieval_size")
        parts.append(suites.scene_retrieval_suite(split, texts, image_size, tokenizer=tokenizer))
    if "caption_size" in spec:  # a captioner (BLIP) on held-out scenes, beside copying
        from mmcl.eval.scene_captioning import SceneCaptioningSuite

        train_size = spec.pop("caption_train_size", 2000)
        parts.append(SceneCaptioningSuite(spec.pop("caption_size"), train_size, image_size))
    if "folder" in spec:
        parts.append(
            suites.folder_suite(
                spec.pop("folder"),
                get_preprocess(image_size),
                spec.pop("dataset", None),
                spec.pop("max_images", None),
            )
        )
    elif "dataset" in spec:  # a data set by name from the data root
        parts.append(
            suites.dataset_suite(
                spec.pop("dataset"),
                spec.pop("split", "test"),
                get_preprocess(image_size),
                spec.pop("max_images", None),
                data_root,
                download,
            )
        )
    if spec:
        raise ValueError(f"{recipe.source}: unknown eval entries {sorted(spec)}")
    return suites.CombinedSuite(parts) if parts else None


def run_recipe(
    recipe: Recipe, data_root: str | Path | None = None, download: bool = False
) -> FitResult:
    """Train as `recipe` says; data sets by name come from `data_root` (default
    $MMCL_DATA_ROOT), fetched by torchvision if `download` and not there."""
    import torch

    if recipe.model.get("kind") == "cogvlm":  # CogVLM's visual expert: its own recipe
        from mmcl.recipe_cogvlm import run_cogvlm_recipe

        return run_cogvlm_recipe(recipe)
    if recipe.model.get("kind") == "blip_vqa":  # BLIP's VQA fine-tuning: its own recipe
        from mmcl.recipe_blip_vqa import run_blip_vqa_recipe

        return run_blip_vqa_recipe(recipe)
    if "kind" in recipe.model:  # a bridge into an LM (mmcl.train.bridges.BRIDGES)
        from mmcl.recipe_bridges import run_bridge_recipe

        return run_bridge_recipe(recipe)
    # A run into another run's folder, or `latest` with nothing to resume: say so before work.
    resume_checkpoint(recipe.train.resume, recipe.train.output_dir)
    torch.manual_seed(recipe.train.seed)  # the same initial weights on every rank and rerun
    model = build_model(recipe)
    wordpiece = recipe.data.get("tokenizer", "clip") == "scenes-wordpiece"
    if getattr(model.config, "albef_text", None) is not None and not wordpiece:
        raise ValueError(
            f"{recipe.source}: {recipe.model.get('name')} reads BERT WordPiece ids, not CLIP's: "
            f"set data.tokenizer: scenes-wordpiece"
        )
    train_data, collate = build_train_data(recipe, model.image_size, data_root, download, model)
    evaluate = build_evaluation(recipe, model.image_size, data_root, download)
    trainer = Trainer(model, train_data, recipe.train, collate_fn=collate, evaluate=evaluate)
    result = trainer.fit()
    if wordpiece and trainer.info.is_main:  # beside model.safetensors: one self-contained folder
        from mmcl.data.scene_wordpiece import scene_wordpiece

        scene_wordpiece().save(recipe.train.output_dir)
    return result
