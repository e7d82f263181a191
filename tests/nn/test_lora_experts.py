"""The LoRA-expert building blocks against hand-worked values and peft: a mixture of LoRA
experts with a router (CoIN), one LoRA per task with O-LoRA's losses, and soft prompts put
before a language model's input embeddings."""

from __future__ import annotations

import doctest

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from test_lora import IDS, LM, images, tiny_llava
from torch import nn

from mmcl.nn import lm_prompts, lora_experts
from mmcl.nn import task_loras as task_loras_module
from mmcl.nn.lm_prompts import TaskPrompts, attach_lm_prompts
from mmcl.nn.lora import LoraSpec, merge_lora
from mmcl.nn.lora_experts import LoraExpertsLinear, add_lora_experts
from mmcl.nn.task_loras import (
    add_task_loras,
    l2_loss,
    orthogonality,
    orthogonality_loss,
    use_task_loras,
)

# --- MoE-LoRA ----------------------------------------------------------------------------------


def test_one_expert_is_plain_lora_as_peft_computes_it():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    reference = nn.Sequential(nn.Linear(6, 5))
    reference[0].load_state_dict(base.state_dict())
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=3.0, target_modules=["0"]), reference)
    layer = LoraExpertsLinear(base, experts=1, r=4, alpha=3.0)
    with torch.no_grad():
        layer.lora_B.normal_()
        reference[0].lora_A["default"].weight.copy_(layer.lora_A[0])
        reference[0].lora_B["default"].weight.copy_(layer.lora_B[0])
    x = torch.randn(3, 7, 6)
    torch.testing.assert_close(layer(x), reference(x))


def test_the_mixture_weighs_each_expert_by_its_softmax_gate():
    # 2 experts of rank 1 on a 2 -> 1 layer; router logits (x0, 0): gates softmax((x0, 0)).
    base = nn.Linear(2, 1, bias=False)
    layer = LoraExpertsLinear(base, experts=2, r=2, alpha=2.0)  # scaling alpha / r = 1
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[1.0, 1.0]]))
        layer.lora_A.copy_(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))
        layer.lora_B.copy_(torch.tensor([[[2.0]], [[-3.0]]]))
        layer.lora_router.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    x = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    # x = (0, 1): gates (1/2, 1/2); delta = 1/2 * 2 * 0 + 1/2 * (-3) * 1 = -1.5; base 1
    # x = (2, 1): gates (e^2, 1) / (e^2 + 1); delta = g0 * 2 * 2 + g1 * (-3) * 1; base 3
    e2 = torch.exp(torch.tensor(2.0))
    g0, g1 = e2 / (e2 + 1), 1 / (e2 + 1)
    expected = torch.stack([torch.tensor(1.0 - 1.5), 3.0 + g0 * 4 - g1 * 3]).unsqueeze(1)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("top_k", [None, 2])
def test_router_weights_sum_to_one_with_at_most_top_k_experts(top_k):
    torch.manual_seed(0)
    layer = LoraExpertsLinear(nn.Linear(8, 8), experts=4, r=8, alpha=8.0, top_k=top_k)
    gates = layer.gates(torch.randn(5, 3, 8))
    torch.testing.assert_close(gates.sum(-1), torch.ones(5, 3))
    assert ((gates > 0).sum(-1) <= (top_k or 4)).all()
    assert (gates >= 0).all()


def test_zero_b_leaves_the_base_model_outputs_exactly():
    model, base = tiny_llava(), tiny_llava()
    spec = LoraSpec(target="language_model", modules=["q_proj", "v_proj"], r=4)
    layers = add_lora_experts(model, spec, experts=2)
    assert len(layers) == 2 * LM["num_hidden_layers"]  # q_proj and v_proj of each layer
    with torch.no_grad():
        assert torch.equal(model(IDS, images()).logits, base(IDS, images()).logits)


def test_under_top_k_gradients_reach_only_the_chosen_experts():
    torch.manual_seed(0)
    layer = LoraExpertsLinear(nn.Linear(4, 4), experts=4, r=4, alpha=4.0, top_k=1)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.lora_router.weight.zero_()
        layer.lora_router.weight[1, 0] = 1.0  # tokens with x0 > 0 choose expert 1
        layer.lora_router.weight[2, 0] = -1.0  # tokens with x0 < 0 choose expert 2
    x = torch.randn(6, 4)
    x[:3, 0], x[3:, 0] = 1.0, -1.0
    layer(x).sum().backward()
    for expert, chosen in enumerate([False, True, True, False]):
        for grad in (layer.lora_A.grad[expert], layer.lora_B.grad[expert]):
            assert bool(grad.abs().sum() > 0) == chosen, (expert, chosen)


def test_only_expert_tensors_train_and_bad_modules_are_named():
    model = tiny_llava()
    model.requires_grad_(False)
    add_lora_experts(model, LoraSpec(modules=["q_proj"], r=4), experts=2)
    trainable = {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A", "lora_B", "weight"}  # "weight": the routers'
    assert sum(p.requires_grad for p in model.parameters()) == 3 * LM["num_hidden_layers"]
    with pytest.raises(ValueError, match="match nothing.*q_proj"):
        add_lora_experts(tiny_llava(), LoraSpec(modules=["nope"], r=4), experts=2)
    with pytest.raises(ValueError, match="multiple of the number of experts"):
        add_lora_experts(tiny_llava(), LoraSpec(modules=["q_proj"], r=3), experts=2)


# --- per-task LoRA and O-LoRA's losses ---------------------------------------------------------


def test_orthogonality_is_the_sum_of_absolute_entries_of_a_old_a_new_transposed():
    new = torch.tensor([[1.0, 2.0], [0.0, 1.0]])  # r = 2, in = 2
    old = [torch.tensor([[3.0, -1.0]]), torch.tensor([[0.0, 2.0], [1.0, 1.0]])]
    # old0 new^T = [3 - 2, -1] -> 1 + 1 = 2; old1 new^T = [[4, 2], [3, 1]] -> 10
    assert orthogonality(new, old).item() == pytest.approx(12.0)
    assert orthogonality(new, []).item() == 0.0


def test_orthogonality_and_l2_losses_sum_over_the_model_layers():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    add_task_loras(model, LoraSpec(target="", modules=["0", "1"], r=1), tasks=2)
    with torch.no_grad():
        for index in (0, 1):
            model[index].lora_A["task_0"].weight.copy_(torch.tensor([[1.0, 1.0]]))
            model[index].lora_A["task_1"].weight.copy_(torch.tensor([[2.0, -3.0]]))
            model[index].lora_B["task_1"].weight.copy_(torch.tensor([[3.0], [4.0]]))
    # per layer |1*2 + 1*(-3)| = 1; two layers
    assert orthogonality_loss(model, "task_1", ["task_0"]).item() == pytest.approx(2.0)
    # per layer ||A|| + ||B|| = sqrt(13) + 5
    assert l2_loss(model, "task_1").item() == pytest.approx(2 * (13**0.5 + 5))


def test_active_task_loras_add_their_deltas_and_merge_to_base_plus_their_sum():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    weight, bias = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    add_task_loras(model, LoraSpec(target="", modules=["0"], r=2, alpha=4.0), tasks=3)
    with torch.no_grad():
        for name in ("task_0", "task_1", "task_2"):
            model[0].lora_B[name].weight.normal_()
    a = {t: model[0].lora_A[f"task_{t}"].weight.detach() for t in range(3)}
    b = {t: model[0].lora_B[f"task_{t}"].weight.detach() for t in range(3)}
    x = torch.randn(5, 4)
    assert torch.equal(model(x), x @ weight.T + bias)  # none active: the base layer
    use_task_loras(model, ["task_0", "task_1"], train="task_1")
    summed = weight + 2.0 * (b[0] @ a[0] + b[1] @ a[1])  # alpha / r = 2; task 2 inactive
    torch.testing.assert_close(model(x), x @ summed.T + bias)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["0.lora_A.task_1.weight", "0.lora_B.task_1.weight"]
    merge_lora(model)
    torch.testing.assert_close(model[0].base_layer.weight, summed)


# --- soft prompts before the LM ----------------------------------------------------------------


def test_prompts_go_before_the_embeddings_and_out_of_the_logits():
    model = tiny_llava()
    prompts = TaskPrompts(tasks=2, length=3, width=LM["hidden_size"])
    attach_lm_prompts(model.language_model, prompts)
    with torch.no_grad():
        plain = model(IDS, images()).logits
        with prompts.choosing(torch.tensor([1, 0])):
            prompted = model(IDS, images()).logits
        embeddings = model.embed(IDS, model.encode_image(images()))
        by_hand = torch.cat([prompts.rows(torch.tensor([1, 0])), embeddings], dim=1)
        expected = model.language_model(inputs_embeds=by_hand).logits[:, 3:]
    assert prompted.shape == plain.shape
    torch.testing.assert_close(prompted, expected)
    assert not torch.allclose(prompted, plain, atol=1e-3)
    with torch.no_grad():  # no choice set: the model as it was
        assert torch.equal(model(IDS, images()).logits, plain)


def test_cached_generation_with_prompts_equals_greedy_over_full_forwards():
    model = tiny_llava()
    prompts = TaskPrompts(tasks=2, length=2, width=LM["hidden_size"])
    attach_lm_prompts(model.language_model, prompts)
    choice = torch.tensor([0, 1])
    with torch.no_grad(), prompts.choosing(choice):
        ids = IDS
        for _ in range(3):  # greedy by hand, each step one full forward (no cache)
            ids = torch.cat([ids, model(ids, images()).logits[:, -1].argmax(-1, True)], dim=1)
        by_hand = ids[:, IDS.shape[1] :]
        end = next(t for t in range(50) if t not in by_hand)
        generated = model.generate(IDS, images(), max_new_tokens=3, end_token=end)
    assert torch.equal(generated, by_hand)


@pytest.mark.parametrize("module", [lora_experts, task_loras_module, lm_prompts])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0
