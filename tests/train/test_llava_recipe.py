"""The llava-scenes recipes on the engine: stage 1 trains only the projector, stage 2 the tower,
the projector and the LM; frozen parts stay out of the optimizer and unchanged."""

from __future__ import annotations

import pytest
import torch

import mmcl
from mmcl.data.chat_template import ChatTemplate
from mmcl.io.checkpoints import save_safetensors
from mmcl.recipe import load_recipe, run_recipe
from mmcl.train.bridges import build_llava, set_trainable
from mmcl.train.optim import build_optimizer

TINY = [
    "model.lm={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 2}",
    "model.vocab_size=200",
    "model.tokenizer_text_size=40",
    "data.size=4",
    "data.max_length=200",
    "data.system=''",  # no system text: shorter samples
    "train.steps=1",
    "train.batch_size=2",
    "train.warmup_steps=0",
    "train.progress=false",
    "train.tensorboard=false",
    "train.checkpoint_every=null",
]


def _state(model, part):
    return {k: v.clone() for k, v in getattr(model, part).state_dict().items()}


def _equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_stage_one_optimizer_holds_the_projector_only():
    model, _ = build_llava(
        {
            "lm": {"hidden_size": 32, "num_hidden_layers": 1},
            "vocab_size": 200,
            "tokenizer_text_size": 40,
        },
        "test",
    )
    set_trainable(model, ["projector"], "test")
    optimizer = build_optimizer(model, lr=1e-3)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.projector.parameters()}


def test_stage_one_then_stage_two_train_what_they_say(tmp_path):
    stage1 = load_recipe("llava-scenes-stage1", [*TINY, f"train.output_dir={tmp_path / 'one'}"])
    torch.manual_seed(stage1.train.seed)  # the run builds its model after this same seed
    spec = {k: v for k, v in stage1.model.items() if k not in ("kind", "trainable")}
    initial, _ = build_llava(spec, "test", ChatTemplate(system=""))
    run_recipe(stage1)
    after_one = mmcl.load(tmp_path / "one" / "hf")[0]
    for part in ("visual", "language_model"):
        assert _equal(_state(initial, part), _state(after_one, part)), part
    assert not _equal(_state(initial, "projector"), _state(after_one, "projector"))

    stage2 = load_recipe(
        "llava-scenes",
        [
            *[o for o in TINY if not o.startswith(("model.", "data.size"))],
            "data.size=4",
            f"model.init={tmp_path / 'one' / 'hf'}",
            "eval.vqa_size=2",
            f"train.output_dir={tmp_path / 'two'}",
        ],
    )
    result = run_recipe(stage2)
    assert set(result.metrics) >= {"vqa/overall", "vqa/colour"}
    after_two = mmcl.load(tmp_path / "two" / "hf")[0]
    for part in ("visual", "projector", "language_model"):  # stage 2 trains the tower too
        assert not _equal(_state(after_one, part), _state(after_two, part)), part


def test_the_shipped_tower_sees_a_grid_of_4x4_patches():
    recipe = load_recipe("llava-scenes-stage1", TINY)
    spec = {k: v for k, v in recipe.model.items() if k not in ("kind", "trainable")}
    model, tokenizer = build_llava(spec, "test", ChatTemplate(system=""))
    # 32x32 images cut into 4x4 patches: an 8 x 8 grid, one image token a patch
    assert model.tokens_per_image == (32 // 4) ** 2
    images = torch.zeros(1, 3, 32, 32)
    ids = torch.tensor([[model.image_token_id] * 64 + [tokenizer.eos_token_id]])
    assert model(ids, images).logits.shape[1] == 65


def test_a_pretrained_tower_replaces_the_recipes_tower_when_it_is_dropped(tmp_path):
    clip = mmcl.create_model("tiny-vit", vision_cfg={"layers": 3, "width": 64})
    path = save_safetensors(clip, tmp_path / "clip.safetensors")
    recipe = load_recipe("llava-scenes-stage1", [*TINY, f"model.tower_pretrained={path}"])
    spec = {k: v for k, v in recipe.model.items() if k not in ("kind", "trainable")}
    with pytest.raises(ValueError, match="drop model.tower"):
        build_llava(dict(spec), "test")
    spec["tower"] = None  # --set model.tower=null
    model, _ = build_llava(spec, "test")
    assert model.tokens_per_image == (32 // 8) ** 2  # tiny-vit's 8x8 patches
    assert torch.equal(model.visual.conv1.weight, clip.visual.conv1.weight)


def test_a_pretrained_tower_brings_its_own_shape_and_weights(tmp_path):
    # scenes-vit's CLIP has 4 layers, the default tower 2: the weights decide the tower
    clip = mmcl.create_model("tiny-vit", vision_cfg={"layers": 3, "width": 64})
    path = save_safetensors(clip, tmp_path / "clip.safetensors")
    spec = {"tower_pretrained": str(path), "vocab_size": 200, "tokenizer_text_size": 40}
    model, _ = build_llava({**spec, "lm": {"hidden_size": 32, "num_hidden_layers": 1}}, "test")
    assert len(model.visual.transformer.resblocks) == 3
    assert torch.equal(model.visual.conv1.weight, clip.visual.conv1.weight)
    with pytest.raises(ValueError, match=r"not model.tower tiny-vit's .*drop model.tower"):
        build_llava({**spec, "tower": "tiny-vit"}, "test")
