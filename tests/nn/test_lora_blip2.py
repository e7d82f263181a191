"""LoRA through peft on BLIP-2's language model and Q-Former: merge and unmerge give the
unmerged outputs, the adapter-only file loads back into a fresh model, unloading restores
the plain names (what the Hugging Face export needs), and only the adapters train."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from mmcl.io.checkpoints import load_checkpoint, save_huggingface
from mmcl.models.bridges.blip2 import Blip2, Blip2Config
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

CONFIG = {
    "blip_vision": {
        "image_size": 32,
        "patch_size": 16,
        "width": 24,
        "layers": 1,
        "heads": 2,
        "mlp_width": 48,
    },
    "qformer": {
        "width": 32,
        "layers": 2,
        "heads": 2,
        "mlp_width": 48,
        "queries": 3,
        "cross_attention_freq": 2,
        "vocab_size": None,
    },
    "text_config": {
        "model_type": "llama",
        "vocab_size": 60,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    },
    "image_token_id": 59,
}
SPECS = {  # target: (spec, how many linear layers it adapts)
    "lm": (LoraSpec.from_dict({"target": "lm", "modules": ["q_proj", "v_proj"], "r": 2}), 4),
    # The Q-Former's attention projects q, k, v with one fused weight (not an nn.Linear): LoRA
    # goes on its output projections and on the queries' FFN.
    "qformer": (
        LoraSpec.from_dict(
            {"target": "qformer", "modules": ["out_proj", "query_mlp.c_fc"], "r": 2}
        ),
        2 + 1 + 2,  # self-attention out_proj in 2 layers, cross-attention in 1, c_fc in 2
    ),
}
IDS = torch.tensor([[1, 59, 59, 59, 7, 8, 9], [1, 59, 59, 59, 3, 4, 0]])
MASK = torch.tensor([[1] * 7, [1] * 6 + [0]])


def tiny_blip2() -> Blip2:
    torch.manual_seed(0)
    return Blip2(Blip2Config.from_dict(CONFIG)).eval()


def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def with_lora(spec: LoraSpec) -> Blip2:
    model = tiny_blip2()
    add_lora(model, spec)
    with torch.no_grad():  # peft starts B at zero, a no-op adapter: give it values
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    return model


def logits(model: Blip2) -> torch.Tensor:
    with torch.no_grad():
        return model(images(), IDS, MASK)[MASK.bool()]


@pytest.mark.parametrize("target", sorted(SPECS))
def test_merge_and_unmerge_keep_the_outputs_and_restore_the_weights(target):
    spec, adapted = SPECS[target]
    model = with_lora(spec)
    assert len(lora_layers(model)) == adapted
    unmerged = logits(model)
    assert not torch.allclose(unmerged, logits(tiny_blip2()), atol=1e-3)  # LoRA acts
    before = {k: v.clone() for k, v in model.state_dict().items()}
    saved = merge_lora(model)
    torch.testing.assert_close(logits(model), unmerged, atol=1e-5, rtol=1e-5)
    unmerge_lora(model, saved)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(logits(model), unmerged, atol=1e-6, rtol=0)


@pytest.mark.parametrize("target", sorted(SPECS))
def test_adapter_only_file_round_trips_into_a_fresh_model(target, tmp_path):
    spec, adapted = SPECS[target]
    model = with_lora(spec)
    path = save_lora_adapter(model, spec, tmp_path / "adapter.safetensors")
    with safe_open(str(path), "pt") as handle:
        keys = list(handle.keys())
    assert len(keys) == 2 * adapted and all("lora_A" in k or "lora_B" in k for k in keys)
    fresh = tiny_blip2()  # the same base weights, no LoRA yet
    assert load_lora_adapter(fresh, path) == spec
    torch.testing.assert_close(logits(fresh), logits(model), atol=0, rtol=0)


def test_only_adapters_train_and_the_unloaded_model_exports_to_hugging_face(tmp_path):
    model = with_lora(SPECS["lm"][0])
    add_lora(model, SPECS["qformer"][0])
    model.requires_grad_(False)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    loss = model(images(), IDS, MASK).square().mean()
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)
    expected = logits(model)
    unload_lora(model)
    assert set(model.state_dict()) == set(tiny_blip2().state_dict())
    save_huggingface(model, tmp_path / "hf")
    exported = Blip2(Blip2Config.from_dict(load_checkpoint(tmp_path / "hf").config)).eval()
    exported.load_state_dict(load_checkpoint(tmp_path / "hf").state_dict)
    torch.testing.assert_close(logits(exported), expected, atol=1e-5, rtol=1e-5)
