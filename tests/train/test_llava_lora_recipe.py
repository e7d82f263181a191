"""`mmcl train --config llava-scenes-stage1 --set model.lora=...`: LoRA on the LM trains on
the engine; checkpoints hold the trainable tensors only; the run writes the adapter alone and
a Hugging Face folder with the adapter merged."""

from __future__ import annotations

import torch
from safetensors import safe_open
from test_llava_recipe import TINY

import mmcl
from mmcl.data.chat_template import ChatTemplate
from mmcl.recipe import load_recipe, run_recipe
from mmcl.train.bridges import build_llava

LORA = "model.lora={target: lm, r: 4, alpha: 8, modules: [q_proj, v_proj]}"


def test_lora_run_trains_adapters_and_projector_and_merges_them_into_the_export(tmp_path):
    out = tmp_path / "run"
    recipe = load_recipe("llava-scenes-stage1", [*TINY, LORA, f"train.output_dir={out}"])
    torch.manual_seed(recipe.train.seed)  # the run builds its model after this same seed
    spec = {k: v for k, v in recipe.model.items() if k not in ("kind", "trainable", "lora")}
    initial = build_llava(spec, "test", ChatTemplate(system=""))[0].state_dict()
    run_recipe(recipe)

    with safe_open(str(out / "lora.safetensors"), "pt") as handle:
        adapter = list(handle.keys())
    assert len(adapter) == 4  # A and B of q_proj and v_proj in the 1-layer LM
    assert all(".lora_A." in k or ".lora_B." in k for k in adapter)

    checkpoint = torch.load(out / "checkpoints" / "step_00000001.pt", weights_only=True)
    saved = set(checkpoint["model"])
    parameters = {k for k in saved if not k.endswith("inv_freq")}
    assert {k for k in parameters if "lora_" not in k} == {k for k in initial if "projector" in k}
    assert checkpoint["frozen"]["path"].endswith("frozen.safetensors")

    exported = mmcl.load(out / "hf")[0].state_dict()
    assert set(exported) == set(initial)
    changed = {k for k in initial if not torch.equal(initial[k], exported[k])}
    merged = {k for k in initial if k.endswith(("q_proj.weight", "v_proj.weight"))}
    assert changed == merged | {k for k in initial if "projector" in k}
