"""The starting model for the built-in continual-learning sequences, pre-trained once and cached.

Continual learning of a vision-language model starts from a model that already has zero-shot
ability. Here that is the `scenes-vit` recipe's tiny CLIP (a 4-layer ViT image tower), trained
on the built-in captioned scenes; it is trained on first use (about 5 minutes on 2 CPU cores)
and cached, keyed by the recipe and the step count, under `$MMCL_CACHE` (default
`~/.cache/mmcl`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from mmcl.recipe import load_recipe, recipe_text, run_recipe

RECIPE = "scenes-vit"


def cache_dir() -> Path:
    return Path(os.environ.get("MMCL_CACHE", Path.home() / ".cache" / "mmcl"))


def pretrained_scene_model(steps: int | None = None, progress: bool = True) -> Path:
    """Path of the cached scene-pretrained tiny CLIP (mmcl safetensors), training it if absent."""
    text, _ = recipe_text(RECIPE)
    key = hashlib.sha256(f"{text}|steps={steps}".encode()).hexdigest()[:12]
    target = cache_dir() / "pretrained" / f"scenes-clip-{key}.safetensors"
    if target.is_file():
        return target
    overrides = [
        "train.eval_every=null",
        "train.checkpoint_every=null",
        "train.tensorboard=false",
        f"train.progress={str(progress).lower()}",
    ]
    if steps is not None:
        overrides.append(f"train.steps={steps}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as folder:
        recipe = load_recipe(RECIPE, [*overrides, f"train.output_dir={folder}"])
        recipe.eval = {}
        if progress:
            print(
                f"pre-training the starting model once ({recipe.train.steps} steps); "
                f"it will be cached at {target}"
            )
        run_recipe(recipe)
        shutil.move(str(Path(folder) / "model.safetensors"), target)  # same folder: a rename
    return target
