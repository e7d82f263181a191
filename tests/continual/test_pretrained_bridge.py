"""`mmcl.continual.pretrained`: the cached starting bridge is trained as its recipes train it."""

from __future__ import annotations

from mmcl.continual.pretrained import _warmup


def test_the_bridge_warms_up_as_its_recipes_do_scaled_to_the_steps_asked():
    # llava-scenes-stage1: 200 steps, 20 warm-up; llava-scenes: 1000 steps, 50 warm-up (the
    # YAML files). A fixed tenth gave stage 2 twice the recipe's warm-up (100).
    assert _warmup("llava-scenes-stage1", 200) == 20
    assert _warmup("llava-scenes", 1000) == 50
    assert _warmup("llava-scenes", 100) == 5
    assert _warmup("llava-scenes", 1) == 0
