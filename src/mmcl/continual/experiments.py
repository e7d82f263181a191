"""Named scenarios for the command line and benchmarks, and the one-call way to run a method.

    scenes-cil   class-incremental over the built-in scenes' shape view (4 tasks x 2 shapes);
                 needs no files
    cifar10-cil  class-incremental CIFAR-10 (5 tasks x 2 classes) from the shared data folder
    mini-mtil    the built-in multi-dataset sequence (see `mmcl.continual.builtin`)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from mmcl.continual.builtin import MINI_MTIL_TASKS, mini_mtil, shared_data_root
from mmcl.continual.scenarios import class_incremental
from mmcl.continual.tasks import Scenario
from mmcl.data.scenes import SceneClassification, view_classnames, view_templates


def scenes_cil(image_size: int = 32, seed: int = 0, train_size: int = 2000,
               test_size: int = 500) -> Scenario:
    train = SceneClassification("shape", "train", train_size, image_size=image_size, seed=seed)
    test = SceneClassification("shape", "test", test_size, image_size=image_size, seed=seed)
    return class_incremental(
        train, test, view_classnames("shape"), n_tasks=4, seed=seed,
        templates=view_templates("shape"), train_targets=[train.label(i) for i in range(len(train))],
        test_targets=[test.label(i) for i in range(len(test))], name="scenes-cil",
    )


def cifar10_cil(image_size: int = 32, seed: int = 0, train_size: int = 2000,
                test_size: int = 500) -> Scenario:
    from mmcl.continual.builtin import _cifar10  # the same class-balanced subsets as mini-MTIL

    train, test, classnames, templates = _cifar10(
        image_size, seed, train_size, test_size, shared_data_root()
    )
    return class_incremental(
        train, test, classnames, n_tasks=5, seed=seed, templates=templates, name="cifar10-cil"
    )


SCENARIOS: dict[str, Callable[..., Scenario]] = {
    "scenes-cil": scenes_cil,
    "cifar10-cil": cifar10_cil,
    "mini-mtil": mini_mtil,
}


def build_scenario(name: str, **options) -> Scenario:
    if name not in SCENARIOS:
        close = difflib.get_close_matches(name, SCENARIOS, n=2, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown scenario {name!r}.{hint} Valid scenarios: {', '.join(sorted(SCENARIOS))}"
        )
    return SCENARIOS[name](**options)


__all__ = ["MINI_MTIL_TASKS", "SCENARIOS", "build_scenario", "cifar10_cil", "scenes_cil"]
