"""LoRA through peft on a bridge's parts: the delta it adds, merge and unmerge, what trains,
adapter-only files, bf16."""

from __future__ import annotations

import torch
from safetensors import safe_open
from torch import nn

from mmcl.models.bridges.llava import Llava, LlavaConfig
from mmcl.nn.lora import (
    LoraSpec,
    add_lora,
    load_lora_adapter,
    lora_layers,
    merge_lora,
    save_lora_adapter,
    unload_lora,
    unmerge_lora,
)
from mmcl.train.optim import build_optimizer

LM = {
    "model_type": "llama",
    "vocab_size": 50,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}
VISION = {"image_size": 32, "patch_size": 16, "width": 32, "layers": 2, "head_width": 16}
IDS = torch.tensor([[1, 49, 49, 49, 49, 7, 8, 9], [2, 49, 49, 49, 49, 3, 4, 5]])
SPEC = LoraSpec.from_dict({"target": "lm", "modules": ["q_proj", "v_proj"], "r": 4, "alpha": 8})


def tiny_llava(seed: int = 0) -> Llava:
    torch.manual_seed(seed)
    config = LlavaConfig.from_dict(
        {"llava_vision": VISION, "language_model": LM, "image_token_id": 49}
    )
    return Llava(config).eval()


def with_lora(spec: LoraSpec = SPEC, seed: int = 0) -> Llava:
    model = tiny_llava(seed)
    add_lora(model, spec)
    # peft starts B at zero (a no-op adapter): give it values, or every check passes trivially.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    return model


def images(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_lora_adds_b_a_times_alpha_over_r_to_a_linear_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    base_weight, base_bias = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    add_lora(model, LoraSpec(target="", modules=["0"], r=2, alpha=3.0))
    a, b = model[0].lora_A["default"].weight, model[0].lora_B["default"].weight
    with torch.no_grad():
        b.normal_()
    x = torch.randn(4, 6)
    expected = x @ base_weight.T + base_bias + (x @ a.T @ b.T) * (3.0 / 2)
    torch.testing.assert_close(model(x), expected)


def test_merged_output_equals_unmerged_output():
    model = with_lora()
    base = tiny_llava()
    unmerged = model(IDS, images()).logits
    assert not torch.allclose(unmerged, base(IDS, images()).logits, atol=1e-3)  # LoRA acts
    merge_lora(model)
    torch.testing.assert_close(model(IDS, images()).logits, unmerged, atol=1e-5, rtol=1e-5)


def test_unmerge_restores_the_base_weights_exactly():
    model = with_lora()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    saved = merge_lora(model)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == 2 * LM["num_hidden_layers"]  # q_proj and v_proj of each layer
    unmerge_lora(model, saved)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_only_lora_parameters_train_and_reach_the_optimizer():
    model = tiny_llava()
    model.requires_grad_(False)  # as set_trainable leaves a model with no part trained
    add_lora(model, SPEC)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    # A and B for q_proj and v_proj in each of the 2 layers.
    assert len(trainable) == 2 * 2 * LM["num_hidden_layers"]
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    optimizer = build_optimizer(model, lr=1e-3)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}


def test_adapter_file_holds_only_adapter_tensors_and_loads_back(tmp_path):
    model = with_lora()
    path = save_lora_adapter(model, SPEC, tmp_path / "adapter.safetensors")
    with safe_open(str(path), "pt") as handle:
        keys = list(handle.keys())
    assert len(keys) == 2 * 2 * LM["num_hidden_layers"]
    assert all("lora_A" in k or "lora_B" in k for k in keys)
    fresh = tiny_llava()  # the same base weights, no LoRA yet
    spec = load_lora_adapter(fresh, path)
    assert spec == SPEC
    torch.testing.assert_close(fresh(IDS, images()).logits, model(IDS, images()).logits)


def test_unload_gives_the_plain_model_names_and_the_merged_output():
    model = with_lora()
    expected = model(IDS, images()).logits
    unload_lora(model)
    assert not lora_layers(model)
    assert set(model.state_dict()) == set(tiny_llava().state_dict())
    torch.testing.assert_close(model(IDS, images()).logits, expected, atol=1e-5, rtol=1e-5)


def test_lora_on_projector_and_tower_keeps_generate_working():
    model = tiny_llava()
    add_lora(model, LoraSpec.from_dict({"target": "projector", "modules": ["linear_1"]}))
    add_lora(model, LoraSpec.from_dict({"target": "tower", "modules": ["c_fc"]}))
    add_lora(model, SPEC)
    names = [n for n, _ in lora_layers(model)]
    assert "projector.linear_1" in names
    assert "visual.transformer.resblocks.1.mlp.c_fc" in names
    answer = model.generate(IDS, images(), max_new_tokens=3, end_token=0)
    assert answer.shape[0] == 2 and 1 <= answer.shape[1] <= 3


def test_bf16_forward_and_backward_reach_the_adapters_only():
    model = with_lora().to(torch.bfloat16).train()
    model.requires_grad_(False)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    logits = model(IDS, images().to(torch.bfloat16)).logits
    assert logits.dtype == torch.bfloat16
    logits.float().logsumexp(-1).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_" in n}
    assert all(g is not None and g.dtype == torch.bfloat16 for g in grads.values())
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
