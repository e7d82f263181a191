"""Named scenarios for the command line and benchmarks, and the one-call way to run a method.

scenes-cil   class-incremental over the built-in scenes' shape view (4 tasks x 2 shapes);
             needs no files
cifar10-cil  class-incremental CIFAR-10 (5 tasks x 2 classes) from the data root
mini-mtil    the built-in multi-dataset sequence (see `mmcl.continual.builtin`)
seq-cifar10  the DER protocol's sequential CIFAR-10 (natural class order, CIFAR normalisation,
             crop + flip; `mmcl.continual.protocols`), for plain classifiers such as
             `--model cifar-resnet18`
vqa-functions, vqa-scenes, instructions, llava-json
             instruction streams for a LLaVA-style bridge (`mmcl.continual.instruction_streams`;
             `--model` a LLaVA folder or recipe)
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from mmcl.continual.builtin import MINI_MTIL_TASKS, mini_mtil, shared_data_root
from mmcl.continual.captioned import describe_stream, is_captioned_stream, scene_styles_stream
from mmcl.continual.instruction_streams import (
    instruction_sequence,
    llava_json_stream,
    vqa_functions,
    vqa_scenes,
)
from mmcl.continual.instructions import describe_instruction_stream, is_instruction_stream
from mmcl.continual.scenarios import class_incremental
from mmcl.continual.tasks import Scenario, describe
from mmcl.data.scenes import SceneClassification, view_classnames, view_templates


def scenes_cil(
    image_size: int = 32, seed: int = 0, train_size: int = 2000, test_size: int = 500
) -> Scenario:
    """Class-incremental built-in scenes: 4 tasks x 2 shapes (no files needed)."""
    train = SceneClassification("shape", "train", train_size, image_size=image_size, seed=seed)
    test = SceneClassification("shape", "test", test_size, image_size=image_size, seed=seed)
    return class_incremental(
        train,
        test,
        view_classnames("shape"),
        n_tasks=4,
        seed=seed,
        templates=view_templates("shape"),
        train_targets=[train.label(i) for i in range(len(train))],
        test_targets=[test.label(i) for i in range(len(test))],
        name="scenes-cil",
    )


def cifar10_cil(
    image_size: int = 32,
    seed: int = 0,
    train_size: int = 2000,
    test_size: int = 500,
    data_root: str | Path | None = None,
    download: bool = False,
) -> Scenario:
    """Class-incremental CIFAR-10: 5 tasks x 2 classes (CIFAR-10 from the data root, as
    image folders or torchvision's files; `download` lets torchvision fetch it)."""
    from mmcl.continual.builtin import _cifar10  # the same class-balanced subsets as mini-MTIL

    train, test, classnames, templates = _cifar10(
        image_size, seed, train_size, test_size, shared_data_root(data_root), download
    )
    return class_incremental(
        train, test, classnames, n_tasks=5, seed=seed, templates=templates, name="cifar10-cil"
    )


def seq_cifar10_scenario(
    image_size: int = 32,
    seed: int = 0,
    train_size: int | None = None,
    test_size: int | None = None,
    data_root: str | Path | None = None,
    download: bool = False,
) -> Scenario:
    """Sequential CIFAR-10 (DER protocol); sizes count all ten classes (None: every image)."""
    from mmcl.continual.protocols import seq_cifar10

    if image_size != 32:
        raise ValueError(f"seq-cifar10 is a 32x32 protocol; the model expects {image_size}px")
    per_class = [None if size is None else max(1, size // 10) for size in (train_size, test_size)]
    return seq_cifar10(*per_class, seed=seed, data_root=data_root, download=download)


def scene_styles(
    image_size: int = 32,
    seed: int = 0,
    train_size: int = 1000,
    test_size: int = 200,
    styles: list[str] | None = None,
    held_out: list[str] | None = None,
    data_root: str | Path | None = None,
    download: bool = False,
):
    """Captioned scenes in styles (upright, turned, recoloured), contrastive, scored by R@1
    (and zero-shot on the `held_out` scene views after every task); the task
    "cifar10-captions" is CIFAR-10 from the data root, captioned from its class names."""
    chosen = ["upright", "rotated-90", "channels-gbr"] if styles is None else list(styles)
    return scene_styles_stream(
        chosen,
        train_size,
        test_size,
        image_size,
        seed,
        held_out=held_out or (),
        download=download,
        data_root=data_root,
    )


SCENARIOS: dict[str, Callable[..., Scenario]] = {
    "scenes-cil": scenes_cil,
    "scene-styles": scene_styles,
    "cifar10-cil": cifar10_cil,
    "mini-mtil": mini_mtil,
    "seq-cifar10": seq_cifar10_scenario,
    "vqa-functions": vqa_functions,
    "vqa-scenes": vqa_scenes,
    "instructions": instruction_sequence,
    "llava-json": llava_json_stream,
}
# Streams that train a LLaVA-style bridge (the model is a LLaVA folder or recipe).
INSTRUCTION_SCENARIOS = ("vqa-functions", "vqa-scenes", "instructions", "llava-json")


def build_scenario(name: str, **options) -> Scenario:
    if name not in SCENARIOS:
        close = difflib.get_close_matches(name, SCENARIOS, n=2, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown scenario {name!r}.{hint} Valid scenarios: {', '.join(sorted(SCENARIOS))}"
        )
    return SCENARIOS[name](**options)


__all__ = ["MINI_MTIL_TASKS", "SCENARIOS", "build_scenario", "cifar10_cil", "scenes_cil"]


# --- one call from names to a finished run --------------------------------------------------

SCENES_PRETRAINED = "scenes-pretrained"

# Per-task training defaults for the built-in sequences: short, since every task is small.
DEFAULT_TRAINING = {
    "steps": 100,
    "batch_size": 64,
    "lr": 1e-4,
    "weight_decay": 0.1,
    "grad_clip_norm": 1.0,
    "tensorboard": False,
    "log_every": 10,
    # One in-task checkpoint is enough (each is written atomically before the last is
    # removed), and each holds the model, the optimiser and the method's state.
    "keep_checkpoints": 1,
}


def parse_method_args(text: str | None) -> dict[str, Any]:
    """`"ewc.lambda_=100,online=true"` -> `{"ewc.lambda_": 100, "online": True}` (values read
    as YAML; `build_method` checks them against the method's arguments). A key may name the
    method it is for (`METHOD.KEY`); the old `METHOD:KEY` form is refused with the new one.

    >>> parse_method_args("alpha=0.5, online=true, name=x")
    {'alpha': 0.5, 'online': True, 'name': 'x'}
    """
    arguments: dict[str, Any] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if ":" in key:  # the form `compare` once took
            method, _, field = key.strip().partition(":")
            raise ValueError(
                f"method argument {item.strip()!r}: write it as {method}.{field}={value.strip()} "
                f"(METHOD.KEY=VALUE)"
            )
        if not sep or not key.strip():
            raise ValueError(
                f"method argument {item.strip()!r} is not KEY=VALUE or METHOD.KEY=VALUE"
            )
        parsed = yaml.safe_load(value.strip())
        if isinstance(parsed, str):  # YAML 1.1 reads "1e-3" as text
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        arguments[key.strip()] = parsed
    return arguments


# Plain image classifiers (`mmcl.models.cifar_resnet`) for the classic protocols, by name.
CLASSIFIERS = {"cifar-resnet18": 64, "cifar-resnet18-reduced": 20}  # name -> ResNet-18 width


def starting_model(
    spec: str = SCENES_PRETRAINED, progress: bool = True, seed: int = 0
) -> torch.nn.Module:
    """The model a run starts from: `scenes-pretrained` (the cached tiny CLIP pre-trained on
    the built-in scenes, trained on first use), a checkpoint path, a model name (random
    weights drawn with `seed`: no zero-shot ability, useful for tests only), or a plain
    10-class classifier (`cifar-resnet18`, `cifar-resnet18-reduced`, weights drawn with
    `seed`)."""
    from mmcl.models import create_model

    if spec in CLASSIFIERS:
        from mmcl.models.cifar_resnet import cifar_resnet18

        torch.manual_seed(seed)
        return cifar_resnet18(num_classes=10, width=CLASSIFIERS[spec])

    if spec == SCENES_PRETRAINED:
        from mmcl.continual.pretrained import pretrained_scene_model

        return create_model(None, pretrained=pretrained_scene_model(progress=progress))
    if Path(spec).exists():
        return create_model(None, pretrained=Path(spec))
    torch.manual_seed(seed)
    return create_model(spec)


def plan_run(
    scenario: str,
    method: str,
    output_dir: str | Path,
    method_args: dict[str, Any] | None = None,
    model: str = SCENES_PRETRAINED,
    training: dict[str, Any] | None = None,
    scenario_args: dict[str, Any] | None = None,
    progress: bool = True,
):
    """The method, training settings and recorded extras of a run, built and checked without
    loading a model or data: `(method, config, extra)`. `run_settings(method, config, extra)`
    (`mmcl.continual.settings`) is what the run will record."""
    from mmcl.continual.methods import build_method
    from mmcl.train import TrainConfig

    built_method = build_method(method, **(method_args or {}))
    settings = {**DEFAULT_TRAINING, **(training or {}), "output_dir": str(output_dir)}
    if settings.get("steps"):
        settings.setdefault("warmup_steps", settings["steps"] // 10)
    settings.setdefault("progress", progress)
    config = TrainConfig.from_dict(settings, "continual training settings")
    extra = {
        "scenario": scenario,
        "scenario_args": scenario_arguments(scenario, scenario_args or {}),
        "model": model,
    }
    return built_method, config, extra


# Scenario arguments that say where the data are and whether they may be fetched, not what
# they are: not recorded, so a run resumes (and compares) with its data moved.
DATA_LOCATION = ("data_root", "download", "images")


def scenario_arguments(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Every argument the scenario will be built with, defaults included, except `image_size`
    (the model's, so it follows from the recorded model) and the data's location."""
    if name not in SCENARIOS:
        build_scenario(name)  # the error that lists the valid names
    signature = inspect.signature(SCENARIOS[name])
    try:
        bound = signature.bind(**given)
    except TypeError as error:
        valid = ", ".join(p for p in signature.parameters if p != "image_size")
        raise ValueError(f"scenario {name!r}: {error}; its arguments: {valid}") from None
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k not in ("image_size", *DATA_LOCATION)}


def run_experiment(
    scenario: str,
    method: str,
    output_dir: str | Path,
    method_args: dict[str, Any] | None = None,
    model: str = SCENES_PRETRAINED,
    training: dict[str, Any] | None = None,
    scenario_args: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
):
    """Build the scenario, method and model by name and run them; returns a `ContinualResult`
    (its report is also in `output_dir`). Bad names and arguments fail before any training."""
    from mmcl.continual.runner import run_continual

    built_method, config, extra = plan_run(
        scenario, method, output_dir, method_args, model, training, scenario_args, progress
    )
    tokenizer = None
    if scenario in INSTRUCTION_SCENARIOS:
        from mmcl.continual.generative import starting_bridge

        network, tokenizer = starting_bridge(model)
    else:
        network = starting_model(model, progress=progress, seed=config.seed)
    location = {k: v for k, v in (scenario_args or {}).items() if k in DATA_LOCATION}
    stream = build_scenario(
        scenario, **extra["scenario_args"], **location, image_size=network.image_size
    )
    if progress:
        if is_instruction_stream(stream):
            print(describe_instruction_stream(stream))
        else:
            print(describe_stream(stream) if is_captioned_stream(stream) else describe(stream))
    return run_continual(
        network,
        stream,
        built_method,
        config,
        output_dir,
        resume=resume,
        progress=progress,
        extra=extra,
        tokenizer=tokenizer,
    )
