"""mini-MTIL's task order: fixed by default, drawn from the seed with `shuffle_order`."""

from __future__ import annotations

import argparse
import itertools

import pytest
import torch

from mmcl.commands.continual import _options, add_run_arguments
from mmcl.continual.builtin import mini_mtil, mini_mtil_order
from mmcl.continual.comparison import _seeded_options
from mmcl.continual.settings import differences

# The documented order (module docstring of mmcl.continual.builtin), written out by hand.
DOCUMENTED = [
    "scene-shape",
    "scene-colour",
    "scene-count",
    "scene-position",
    "cifar10",
    "mnist",
    "digits",
]
SCENES = ["scene-shape", "scene-colour", "scene-count", "scene-position"]
SMALL = dict(image_size=16, train_size=4, test_size=2)


def test_the_default_order_is_the_documented_one_for_every_seed():
    for seed in range(5):
        assert mini_mtil_order(DOCUMENTED[::-1], seed, shuffle=False) == DOCUMENTED
        assert mini_mtil_order(["digits", "scene-count"], seed, False) == ["scene-count", "digits"]


def test_a_shuffled_order_is_a_permutation_fixed_by_the_seed_alone():
    orders = [mini_mtil_order(DOCUMENTED, seed, shuffle=True) for seed in range(8)]
    for seed, order in enumerate(orders):
        assert sorted(order) == sorted(DOCUMENTED)  # every task once
        assert mini_mtil_order(DOCUMENTED, seed, shuffle=True) == order  # same seed, same order
        # The order asked for does not matter, only which tasks.
        assert mini_mtil_order(DOCUMENTED[::-1], seed, shuffle=True) == order
    # Seeds draw different orders: 8 seeds over 7! = 5040 orders all equal (or all the
    # documented one) would mean the seed is ignored.
    assert len({tuple(o) for o in orders}) > 1
    assert any(order != DOCUMENTED for order in orders)


def test_a_shuffled_stream_holds_the_same_tasks_and_items_in_another_order():
    seed = next(s for s in itertools.count() if mini_mtil_order(SCENES, s, True) != SCENES)
    fixed = mini_mtil(seed=seed, tasks=SCENES, **SMALL)
    shuffled = mini_mtil(seed=seed, tasks=SCENES, shuffle_order=True, **SMALL)
    assert fixed.task_names == SCENES and shuffled.task_names != SCENES
    assert sorted(shuffled.task_names) == sorted(SCENES)
    assert [task.index for task in shuffled] == list(range(len(SCENES)))
    for task in shuffled:  # a task's items do not depend on its position
        same = fixed[SCENES.index(task.name)]
        assert task.classnames == same.classnames
        for data, other in ((task.train, same.train), (task.test, same.test)):
            for i in range(len(data)):
                image, label = data[i]
                assert label == other[i][1] and torch.equal(image, other[i][0])


def test_shuffle_order_must_be_a_bool():
    with pytest.raises(ValueError, match="shuffle_order must be True or False, got 'yes'"):
        mini_mtil(tasks=["scene-count"], shuffle_order="yes", **SMALL)


def parsed(*arguments: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return parser.parse_args(list(arguments))


def test_the_command_line_flag_reaches_the_stream_with_the_seed():
    assert "shuffle_order" not in _options(parsed())["scenario_args"]  # default unchanged
    assert _options(parsed("--shuffle-order"))["scenario_args"] == {"shuffle_order": True}
    # A single run's --seed is the stream's seed too, so it draws that seed's order...
    args = _options(parsed("--shuffle-order", "--seed", "3"))
    assert args["scenario_args"] == {"shuffle_order": True, "seed": 3}
    assert args["training"]["seed"] == 3
    # ...and `compare --seeds` gives each seed's run its own stream seed.
    options = _options(parsed("--shuffle-order"))
    for seed in (0, 1, 2):
        assert _seeded_options(options, seed)["scenario_args"] == {
            "shuffle_order": True,
            "seed": seed,
        }


def test_a_run_recorded_before_the_flag_existed_matches_the_default_order():
    old = {"scenario": "mini-mtil", "scenario_args": {"seed": 0, "tasks": None}}
    default = {"scenario": "mini-mtil", "scenario_args": {"seed": 0, "tasks": None}}
    default["scenario_args"]["shuffle_order"] = False
    assert differences(old, default) == []
    shuffled = {**default, "scenario_args": {**default["scenario_args"], "shuffle_order": True}}
    assert differences(old, shuffled) == ["scenario_args.shuffle_order false -> true"]
    assert differences(default, shuffled) == ["scenario_args.shuffle_order false -> true"]
