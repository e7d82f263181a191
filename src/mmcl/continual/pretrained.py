"""The starting models for the built-in continual-learning sequences, pre-trained once and cached.

Continual learning of a vision-language model starts from a model that already has zero-shot
ability. Here that is the `scenes-vit` recipe's tiny CLIP (a 4-layer ViT image tower), trained
on the built-in captioned scenes; it is trained on first use (about 5 minutes on 2 CPU cores)
and cached, keyed by the recipe and the step count, under `$MMCL_CACHE` (default
`~/.cache/mmcl`). For the instruction streams it is the tiny LLaVA-style bridge of the
`llava-scenes-stage1` and `llava-scenes` recipes (`pretrained_scene_bridge`): captions, then
scene conversations, so that its general ability starts above zero; cached the same way.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from mmcl.recipe import load_recipe, recipe_text, run_recipe

RECIPE = "scenes-vit"
BRIDGE_RECIPES = ("llava-scenes-stage1", "llava-scenes")


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
        recipe.eval = {}  # the cached model is what matters; its scores are the recipe's
        if progress:
            print(
                f"pre-training the starting model once ({recipe.train.steps} steps); "
                f"it will be cached at {target}"
            )
        run_recipe(recipe)
        shutil.move(str(Path(folder) / "model.safetensors"), target)  # same folder: a rename
    return target


def pretrained_scene_bridge(
    steps: tuple[int, int] = (200, 1000),
    tower_steps: int | None = None,
    overrides: tuple[tuple[str, ...], tuple[str, ...]] = ((), ()),
    progress: bool = True,
) -> Path:
    """Folder (Hugging Face LLaVA, with its tokenizer) of the cached scene-pretrained tiny
    bridge, training it if absent: `llava-scenes-stage1` for ``steps[0]`` steps (projector
    only, on captions), then `llava-scenes` for ``steps[1]`` (projector and LM, on
    conversations). `tower_steps`: the image tower is the scene-pretrained CLIP of that many
    steps (`pretrained_scene_model`; 0: the recipe's own length), None: a random tower.
    `overrides`: each stage's recipe overrides (``"model.lm={hidden_size: 32, ...}"``; tests
    use smaller models). Everything given is part of the cache key."""
    texts = [recipe_text(name)[0] for name in BRIDGE_RECIPES]
    stage1, stage2 = list(overrides[0]), list(overrides[1])
    if tower_steps is not None:
        tower = pretrained_scene_model(tower_steps or None, progress)
        # the weights bring their tower's shape: the recipe's own model.tower gives way
        stage1 += [f"model.tower_pretrained={tower}", "model.tower=null"]
    # "warmup=recipe": bridges cached before the warmup followed the recipes' differ.
    key = f"{texts}|{steps}|{stage1}|{stage2}|warmup=recipe"
    key = hashlib.sha256(key.encode()).hexdigest()[:12]
    target = cache_dir() / "pretrained" / f"scenes-llava-{key}"
    if (target / "config.json").is_file():
        return target
    common = [
        "train.eval_every=null",
        "train.checkpoint_every=null",
        "train.tensorboard=false",
        f"train.progress={str(progress).lower()}",
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as folder:
        first, second = Path(folder) / "stage1", Path(folder) / "stage2"
        for name, count, output, extra in (
            (BRIDGE_RECIPES[0], steps[0], first, stage1),
            (BRIDGE_RECIPES[1], steps[1], second, [*stage2, f"model.init={first / 'hf'}"]),
        ):
            lengths = [f"train.steps={count}", f"train.warmup_steps={_warmup(name, count)}"]
            recipe = load_recipe(name, [*common, *extra, *lengths, f"train.output_dir={output}"])
            recipe.eval = {}  # the continual runs measure the start themselves
            if progress:
                print(f"pre-training the starting bridge once: {name}, {count} steps")
            run_recipe(recipe)
        shutil.move(str(second / "hf"), target)  # same file system: a rename
    return target


def _warmup(recipe: str, steps: int) -> int:
    """The recipe's warm-up, scaled to `steps`: at the recipe's own length the bridge is
    trained exactly as the recipe trains it."""
    train = load_recipe(recipe).train
    return round(train.warmup_steps * steps / train.steps)
