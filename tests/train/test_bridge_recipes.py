"""The blip2-scenes and minigpt4-scenes recipes from the CLI (`mmcl train --config NAME`) on a
tiny override: each stage trains the parts it names and leaves the rest as they were,
frozen parts stay out of the checkpoints, a resumed run ends where the straight one does,
and `mmcl ask` answers from the trained folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mmcl
from mmcl.cli import main
from mmcl.data.chat_template import ChatTemplate
from mmcl.models.bridges.blip2 import Blip2
from mmcl.models.bridges.minigpt4 import MiniGPT4
from mmcl.recipe import load_recipe
from mmcl.train.bridges import BRIDGES, build_bridge
from tiny_llava import image_file

NEW = [  # a new model's entries: a 1-layer LLaMA of width 32, a 1-layer Q-Former, 4 queries
    "model.lm={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, "
    "num_attention_heads: 2, num_key_value_heads: 2}",
    "model.qformer={width: 32, layers: 1, heads: 2, mlp_width: 64, queries: 4}",
    "model.vocab_size=200",
    "model.tokenizer_text_size=40",
]
RUN = [
    "data.size=4",
    "data.max_length=200",
    "data.system=''",  # no system text: shorter samples
    "train.batch_size=2",
    "train.warmup_steps=0",
    "train.tensorboard=false",
    "train.checkpoint_every=1",
]


def train(config: str, out: Path, steps: int, *overrides: str) -> None:
    sets = [part for entry in [*RUN, *overrides] for part in ("--set", entry)]
    args = ["train", "--config", config, "--steps", str(steps), "--quiet", "--output-dir"]
    assert main([*args, str(out), *sets]) == 0


def initial(config: str, *overrides: str):
    """The model a run of `config` starts from (built after the same seed)."""
    recipe = load_recipe(config, [*RUN, *overrides])
    torch.manual_seed(recipe.train.seed)
    spec = {k: v for k, v in recipe.model.items() if k not in ("kind", "trainable")}
    return build_bridge(BRIDGES[recipe.model["kind"]], spec, "test", ChatTemplate(system=""))[0]


def part(model, name: str) -> dict[str, torch.Tensor]:
    return getattr(model, name).state_dict()


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """BLIP-2 stage 1, then MiniGPT-4 stage 1 on its tower and Q-Former, then stage 2 of each."""
    root = tmp_path_factory.mktemp("bridges")
    train("blip2-scenes-stage1", root / "b1", 1, *NEW)
    train("minigpt4-scenes-stage1", root / "m1", 1, *NEW, f"model.blip2_init={root / 'b1/hf'}")
    two = ["eval.vqa_size=2"]
    train("minigpt4-scenes", root / "m2", 1, *two, f"model.init={root / 'm1/hf'}")
    train("blip2-scenes", root / "b2", 1, *two, f"model.init={root / 'b1/hf'}")
    return root


def test_blip2_stage_one_trains_the_qformer_and_projection_only(runs):
    before = initial("blip2-scenes-stage1", *NEW)
    after = mmcl.load(runs / "b1" / "hf")[0]
    assert type(after) is Blip2
    for name in ("visual", "language_model"):
        assert same(part(before, name), part(after, name)), name
    for name in ("qformer", "language_projection"):
        assert not same(part(before, name), part(after, name)), name


def test_minigpt4_stage_one_takes_blip2s_qformer_and_trains_the_linear_layer_only(runs):
    blip2 = mmcl.load(runs / "b1" / "hf")[0]
    overrides = [*NEW, f"model.blip2_init={runs / 'b1/hf'}"]
    before = initial("minigpt4-scenes-stage1", *overrides)
    after = mmcl.load(runs / "m1" / "hf")[0]
    assert type(after) is MiniGPT4
    for name in ("visual", "qformer"):
        assert same(part(blip2, name), part(after, name)), name
    assert same(part(before, "language_model"), part(after, "language_model"))
    assert not same(part(before, "language_projection"), part(after, "language_projection"))
    # The checkpoint holds the trained layer (and no frozen part) and names the frozen file.
    checkpoint = torch.load(runs / "m1/checkpoints/step_00000001.pt", weights_only=True)
    trained = {k for k in checkpoint["model"] if not k.endswith("inv_freq")}
    assert trained == {"language_projection.weight", "language_projection.bias"}
    assert checkpoint["frozen"]["path"].endswith("frozen.safetensors")


@pytest.mark.parametrize(
    "stage1, stage2, frozen, trained",
    [
        ("m1", "m2", ["visual", "qformer"], ["language_projection", "language_model"]),
        ("b1", "b2", ["visual"], ["qformer", "language_projection", "language_model"]),
    ],
)
def test_stage_two_trains_what_it_names_and_evaluates(runs, stage1, stage2, frozen, trained):
    before, after = (mmcl.load(runs / name / "hf")[0] for name in (stage1, stage2))
    for name in frozen:
        assert same(part(before, name), part(after, name)), name
    for name in trained:
        assert not same(part(before, name), part(after, name)), name
    metrics = [json.loads(line) for line in (runs / stage2 / "metrics.jsonl").open()]
    assert any("vqa/overall" in record for record in metrics)


@pytest.mark.parametrize("run", ["m2", "b2"])
def test_ask_answers_from_the_trained_folder(runs, run, capsys):
    image = image_file(runs / f"{run}.png")
    args = ["ask", "--model", str(runs / run / "hf"), "--image", str(image)]
    assert main([*args, "--system", "", "--max-new-tokens", "3", "how many circles?"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1  # one answer line (random: any words)


def test_a_resumed_minigpt4_run_ends_where_the_straight_run_ends(runs, tmp_path):
    overrides = [*NEW, f"model.blip2_init={runs / 'b1/hf'}"]
    out = tmp_path / "run"
    train("minigpt4-scenes-stage1", out, 2, *overrides)
    straight = mmcl.load(out / "hf")[0].state_dict()
    checkpoint = out / "checkpoints/step_00000001.pt"
    train("minigpt4-scenes-stage1", out, 2, *overrides, f"train.resume={checkpoint}")
    assert same(straight, mmcl.load(out / "hf")[0].state_dict())
    # ... from the checkpoint's weights: shifted there, they come out shifted (give or take
    # the last step's Adam update, at most a few times lr = 0.001)
    state = torch.load(checkpoint, weights_only=True)
    state["model"]["language_projection.bias"] += 1.0
    torch.save(state, checkpoint)
    train("minigpt4-scenes-stage1", out, 2, *overrides, f"train.resume={checkpoint}")
    shifted = mmcl.load(out / "hf")[0].state_dict()["language_projection.bias"]
    torch.testing.assert_close(
        shifted, straight["language_projection.bias"] + 1.0, atol=5e-3, rtol=0
    )
