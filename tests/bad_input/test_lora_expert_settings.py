"""Bad settings of the LoRA-expert and prompt methods for bridge models (`moe_lora`,
`o_lora`, `task_lora`, `modal_prompt`): what mmcl promises.

- MoE-LoRA splits the rank among the experts: a rank that is not a multiple of the number of
  experts, or a top_k above it, is one error saying which.
- LoRA modules that match no layer of the language model are one error listing its linear
  layers' names.
- The task selector reads the image tokens, so a per-task LoRA anywhere but the language
  model is refused, naming the target.
- The task selector's base_quantile is a quantile in [0, 1) or None (no fallback to the
  base model); other values are one error naming it. Its routes match the instruction text,
  so routing without the prompts' ids is an error saying so, never an image-only guess.
- Prompts before a language model need a bridge: a model without one is one error.
- O-LoRA's weights must be numbers >= 0.
- Two methods that both choose where a row runs (a task selector) cannot be combined.
- A method that adds its own LoRA refuses a model already carrying one (a recipe's
  model.lora), saying to drop it or choose a method that trains the model as it is.
- A mixture of LoRA experts cannot be merged, unloaded or saved as a peft adapter (its router
  weighs the experts per token): each is refused naming a mixture layer, and the model is left
  as it was, never silently stripped of its experts.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mmcl.continual.methods import build_method
from mmcl.models.bridges.llava import Llava, LlavaConfig

LM = {"model_type": "llama", "vocab_size": 50, "hidden_size": 32, "intermediate_size": 64}
LM |= {"num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}
VISION = {"image_size": 32, "patch_size": 16, "width": 32, "layers": 2, "head_width": 16}
RUN = SimpleNamespace(scenario=[0, 1])


def tiny_llava() -> Llava:
    torch.manual_seed(0)
    return Llava(
        LlavaConfig.from_dict({"llava_vision": VISION, "language_model": LM, "image_token_id": 49})
    )


def test_moe_lora_rank_must_split_evenly_among_the_experts():
    with pytest.raises(ValueError, match="r=6 is split among the experts.*experts=4"):
        build_method("moe_lora", experts=4, r=6)
    with pytest.raises(ValueError, match=r"top_k \(3\) exceeds experts \(2\)"):
        build_method("moe_lora", experts=2, r=4, top_k=3)


@pytest.mark.parametrize("name", ["moe_lora", "o_lora", "task_lora"])
def test_lora_modules_that_match_nothing_list_the_linear_layers(name):
    method = build_method(name, r=4, modules=["query"])
    with pytest.raises(ValueError, match=r"\['query'\] match nothing.*'q_proj'"):
        method.setup(tiny_llava(), RUN)


@pytest.mark.parametrize("bad", [1.0, -0.1, 2])
def test_task_lora_base_quantile_must_be_a_quantile_or_none(bad):
    with pytest.raises(ValueError, match=r"base_quantile must be a number in \[0, 1\) or None"):
        build_method("task_lora", base_quantile=bad)
    with pytest.raises(ValueError, match="base_quantile"):
        build_method("task_lora", base_quantile="0.1")


@pytest.mark.parametrize(
    ("name", "options"), [("task_lora", {"r": 4, "base_quantile": None}), ("modal_prompt", {})]
)
def test_key_matching_methods_route_only_with_the_prompts(name, options):
    model, method = tiny_llava().eval(), build_method(name, **options)
    method.setup(model, RUN)
    method.keys.add(0, torch.ones(1, 64))  # a trained task's key (image and text halves)
    with pytest.raises(ValueError, match=f"{name}: routes needs the prompts' ids and mask"):
        method.routes(model, torch.zeros(2, 3, 32, 32))


def test_task_lora_refuses_a_target_other_than_the_language_model():
    with pytest.raises(ValueError, match="target must be language_model.*'projector'"):
        build_method("task_lora", target="projector", modules=["linear_1"])


def test_modal_prompt_refuses_a_model_without_a_language_model():
    with pytest.raises(ValueError, match="modal_prompt: .* a Sequential has none"):
        build_method("modal_prompt").setup(nn.Sequential(nn.Linear(2, 2)), RUN)


def test_o_lora_weights_must_be_non_negative_numbers():
    with pytest.raises(ValueError, match="o_lora: lambda_orth must be >= 0, got -1"):
        build_method("o_lora", lambda_orth=-1.0)


def test_two_task_selectors_cannot_be_combined():
    with pytest.raises(
        ValueError, match=r"\['task_lora', 'modal_prompt'\] both compute the routes"
    ):
        build_method("task_lora+modal_prompt")


@pytest.mark.parametrize("name", ["moe_lora", "o_lora", "task_lora"])
def test_methods_adding_their_own_lora_refuse_a_model_carrying_a_recipes_lora(name):
    from mmcl.nn.lora import LoraSpec, add_lora

    model = tiny_llava()
    add_lora(model, LoraSpec(target="language_model", r=2), "recipe: model.lora")
    with pytest.raises(ValueError, match=rf"{name}: .*already carries LoRA.*drop model.lora"):
        build_method(name).setup(model, RUN)


@pytest.mark.parametrize("action", ["merge", "unload", "save"])
def test_a_mixture_of_lora_experts_is_never_merged_or_exported_as_plain_lora(action, tmp_path):
    from mmcl.nn.lora import LoraSpec, merge_lora, save_lora_adapter, unload_lora
    from mmcl.nn.lora_experts import LoraExpertsLinear, add_lora_experts

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    spec = LoraSpec(target="", modules=["0"], r=4)
    add_lora_experts(model, spec, experts=2)
    with torch.no_grad():
        model[0].lora_B.normal_()  # experts that change the output
    x = torch.randn(3, 8)
    before = model(x)
    calls = {
        "merge": lambda: merge_lora(model),
        "unload": lambda: unload_lora(model),
        "save": lambda: save_lora_adapter(model, spec, tmp_path / "adapter.safetensors"),
    }
    with pytest.raises(ValueError, match="mixture of LoRA experts.*'0'"):
        calls[action]()
    assert isinstance(model[0], LoraExpertsLinear)
    assert torch.equal(model(x), before)
    assert not (tmp_path / "adapter.safetensors").exists()
