"""Training settings are checked against their type annotations when they are made."""

from pathlib import Path

import pytest

from mmcl.train import TrainConfig


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"lr": 1}, {"lr": 1.0}),  # an integer is a number
        ({"lr": "1e-3"}, {"lr": 0.001}),  # YAML reads 1e-3 (no dot) as a string
        ({"steps": None, "epochs": 3}, {"steps": None, "epochs": 3}),
        ({"grad_clip_norm": 2}, {"grad_clip_norm": 2.0}),
        ({"schedule": "step", "lr_decay_at": [0.5, 0.75]}, {"lr_decay_at": (0.5, 0.75)}),
        ({"output_dir": Path("runs/x")}, {"output_dir": "runs/x"}),
        ({"precision": "bf16", "progress": False}, {"precision": "bf16", "progress": False}),
    ],
)
def test_values_of_the_right_type_are_kept_or_converted_losslessly(values, expected):
    config = TrainConfig.from_dict(values)
    for key, value in expected.items():
        assert getattr(config, key) == value and type(getattr(config, key)) is type(value)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"lr": "abc"}, "lr='abc' is not a number"),
        ({"lr": True}, "lr=True is not a number"),
        ({"epochs": 2.0}, "epochs=2.0 is not an integer"),
        ({"steps": "10"}, "steps='10' is not an integer or null"),
        ({"progress": "yes"}, "progress='yes' is not true or false"),
        ({"progress": 1}, "progress=1 is not true or false"),
        (
            {"loss": "triplet"},
            "loss='triplet' is not one of 'clip', 'siglip', 'coca', 'albef', 'blip'",
        ),
        ({"output_dir": 2024}, "output_dir=2024 is not a string"),
        ({"lr_decay_at": [0.5, "x"]}, r"lr_decay_at=\[0.5, 'x'\] is not a list of numbers"),
    ],
)
def test_a_wrong_type_names_key_value_and_type(values, message):
    with pytest.raises(ValueError, match=rf"^my recipe: invalid training settings: {message}$"):
        TrainConfig.from_dict(values, "my recipe")
    with pytest.raises(ValueError, match=message):
        TrainConfig(**values)  # the same check in Python


def test_every_wrong_type_is_named_at_once():
    with pytest.raises(ValueError, match="lr='a' is not a number; seed='b' is not an integer"):
        TrainConfig(lr="a", seed="b")


def test_settings_that_are_not_a_mapping_are_refused():
    with pytest.raises(ValueError, match="recipe: expected key: value settings, got 5"):
        TrainConfig.from_dict(5, "recipe")


def test_unknown_settings_name_close_matches_or_all_valid_ones():
    with pytest.raises(ValueError, match=r"\['warmup'\]; did you mean \['warmup_steps'\]\?$"):
        TrainConfig.from_dict({"warmup": 5}, "r")
    with pytest.raises(ValueError, match=r"\['xyz'\]; valid settings: \['epochs', 'steps'"):
        TrainConfig.from_dict({"xyz": 5}, "r")
