"""The LoRA-expert and prompt methods for bridge models, hook by hook on a tiny LLaVA: a few
language-modelling steps per task (a plain loop, and once mmcl's Trainer), what trains and
what stays, the task selector's routes, and exact resume from the states."""

from __future__ import annotations

import contextlib
import copy
import doctest
from types import SimpleNamespace

import pytest
import torch

from mmcl.continual.methods import build_method, task_keys
from mmcl.continual.methods.task_keys import (
    TaskKeys,
    input_keys,
    instruction_tokens,
    run_routes,
)
from mmcl.data.chat_template import IGNORE_INDEX
from mmcl.models.bridges.llava import Llava, LlavaConfig
from mmcl.nn.lora import lora_layers, merge_lora
from mmcl.nn.task_loras import task_loras
from mmcl.train import TrainConfig, Trainer
from mmcl.train.lm_objective import CausalLMObjective, answer_loss

LM = {
    "model_type": "llama",
    "vocab_size": 50,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}
VISION = {"image_size": 32, "patch_size": 16, "width": 32, "layers": 2, "head_width": 16}
RUN = SimpleNamespace(scenario=[0, 1])  # what setup reads of a run: the number of tasks
SHIFT = {0: 3.0, 1: -3.0}  # task 0's images are bright, task 1's dark: a selector can tell


def tiny_llava(seed: int = 0) -> Llava:
    torch.manual_seed(seed)
    config = LlavaConfig.from_dict(
        {"llava_vision": VISION, "language_model": LM, "image_token_id": 49}
    )
    return Llava(config)


def task(index: int):
    return SimpleNamespace(index=index, name=f"task{index}")


def batch(task_index: int, seed: int, rows: int = 4):
    """(images, ids, labels): 4 image placeholders, then 4 text tokens, answers labelled."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(rows, 3, 32, 32, generator=generator) + SHIFT[task_index]
    text = torch.randint(1, 40, (rows, 4), generator=generator) + 5 * task_index
    ids = torch.cat([torch.ones(rows, 1, dtype=torch.long), torch.full((rows, 4), 49), text], 1)
    labels = ids.clone()
    labels[:, :6] = IGNORE_INDEX
    return images, ids, labels


def train_task(model, method, index: int, steps: int = 2):
    """before_task, a few LM steps with the method's extra losses, after_task."""
    method.before_task(task(index), model, RUN)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(steps):
        images, ids, labels = batch(index, seed=10 * index + step)
        logits = model(ids, images, torch.ones_like(ids)).logits
        targets = torch.stack([ids, labels, torch.ones_like(ids)], dim=1)
        extra = method.extra_losses(model, (images, targets), {"logits": logits})
        loss = answer_loss(logits, labels) + sum(extra.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    method.after_task(task(index), model, RUN)


def mixed_batch():
    images0, ids0, _ = batch(0, seed=100, rows=2)
    images1, ids1, _ = batch(1, seed=101, rows=2)
    order = torch.tensor([0, 2, 1, 3])  # rows of task 0, 1, 0, 1
    return torch.cat([images0, images1])[order], torch.cat([ids0, ids1])[order]


def prompts(ids):
    """A batch's prompts, as inference gives them to `routes`: the ids up to the answer
    (`batch` labels the last 3 tokens), and their mask."""
    return ids[:, :6], torch.ones_like(ids[:, :6])


@torch.no_grad()
def answer_logits(model, method, images, ids):
    """The logits the method's inference gives (its routes, when it has them)."""
    return run_routes(
        method.routes(model, images, *prompts(ids)),
        len(ids),
        lambda rows: model(ids[rows], images[rows]).logits,
    )


def resumed(name: str, model, method, **arguments):
    """A fresh model and method, set up and given the saved states, as a resumed run is."""
    state = {"model": copy.deepcopy(model.state_dict()), "method": method.state_dict()}
    state = copy.deepcopy(state)
    fresh_model, fresh = tiny_llava(seed=7).eval(), build_method(name, **arguments)
    fresh.setup(fresh_model, RUN)
    fresh_model.load_state_dict(state["model"])
    fresh.load_state_dict(state["method"])
    return fresh_model, fresh


def tensors(model, key: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if key in n}


def test_moe_lora_trains_experts_and_routers_only_and_resumes_exactly():
    model, method = tiny_llava().eval(), build_method("moe_lora", experts=2, r=4, top_k=1)
    assert method.takes_instructions
    method.setup(model, RUN)
    trainable = {n.split(".")[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A", "lora_B", "weight"}  # experts, and the routers' weights
    frozen = tensors(model, "base_layer") | tensors(model, "embed_tokens")
    before = tensors(model, "lora_")
    train_task(model, method, 0)
    train_task(model, method, 1)
    after = tensors(model, "lora_")
    assert all(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)
    assert all(torch.equal(frozen[n], p) for n, p in tensors(model, "").items() if n in frozen)
    images, ids = mixed_batch()
    fresh_model, fresh = resumed("moe_lora", model, method, experts=2, r=4, top_k=1)
    assert torch.equal(answer_logits(fresh_model, fresh, images, ids), model(ids, images).logits)


def test_o_lora_keeps_earlier_adapters_and_merges_to_base_plus_the_task_deltas(tmp_path):
    model, method = tiny_llava().eval(), build_method("o_lora", r=4, lambda_l2=0.01)
    method.setup(model, RUN)
    base_weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_l" in n}
    train_task(model, method, 0)
    first = tensors(model, ".task_0.")
    method.before_task(task(1), model, RUN)
    terms = method.extra_losses(model, None, {})
    assert set(terms) == {"o_lora_orth", "o_lora_l2"} and terms["o_lora_orth"] > 0
    # Task 1 through mmcl's engine, with the method as its plugin.
    images, ids, labels = batch(1, seed=11)
    items = [
        (images[i], torch.stack([ids[i], labels[i], torch.ones_like(ids[i])])) for i in range(4)
    ]
    config = TrainConfig(
        steps=2, batch_size=2, lr=1e-2, progress=False, tensorboard=False, output_dir=str(tmp_path)
    )
    Trainer(model, items, config, objective=CausalLMObjective(), plugins=[method]).fit()
    method.after_task(task(1), model, RUN)
    model.eval()
    assert all(torch.equal(first[n], p) for n, p in tensors(model, ".task_0.").items())
    assert all(p.abs().sum() > 0 for n, p in tensors(model, "lora_B.task_1").items())

    test_images, test_ids = mixed_batch()
    with torch.no_grad():
        unmerged = model(test_ids, test_images).logits
    fresh_model, fresh = resumed("o_lora", model, method, r=4, lambda_l2=0.01)
    assert torch.equal(answer_logits(fresh_model, fresh, test_images, test_ids), unmerged)
    merge_lora(model)  # W0 + sum over both tasks of alpha / r * B_t A_t, layer by layer
    for name, layer in lora_layers(model):
        a, b = layer.lora_A, layer.lora_B
        delta = sum(b[t].weight @ a[t].weight for t in ("task_0", "task_1")) * (16.0 / 4)
        expected = base_weights[f"{name}.base_layer.weight"] + delta
        torch.testing.assert_close(layer.base_layer.weight, expected)
    with torch.no_grad():
        torch.testing.assert_close(model(test_ids, test_images).logits, unmerged)


def test_task_lora_selects_each_images_task_and_gives_exactly_its_lora():
    model, method = tiny_llava().eval(), build_method("task_lora", r=4, base_quantile=None)
    method.setup(model, RUN)
    train_task(model, method, 0)
    first = tensors(model, ".task_0.")
    train_task(model, method, 1)
    assert all(torch.equal(first[n], p) for n, p in tensors(model, ".task_0.").items())
    images, ids = mixed_batch()
    ids_, mask = prompts(ids)
    features = input_keys(model, images, ids_, instruction_tokens(model, ids_, mask))
    assert method.keys.choose(features).tolist() == [0, 1, 0, 1]
    routes = method.routes(model, images, ids_, mask)
    assert sorted(rows.tolist() for rows, _ in routes) == [[0, 2], [1, 3]]
    routed = answer_logits(model, method, images, ids)
    with torch.no_grad():
        for index, rows in ((0, [0, 2]), (1, [1, 3])):
            with task_loras(model, [f"task_{index}"]):
                alone = model(ids[rows], images[rows]).logits
            assert torch.equal(routed[rows], alone)
    # Generation through the routes: each row's answer is its task's LoRA's, padded.
    with torch.no_grad():
        answers = run_routes(
            method.routes(model, images, ids_, mask),
            len(ids),
            lambda rows: model.generate(ids[rows], images[rows], max_new_tokens=3, end_token=0),
            pad=0,
        )
        for index, rows in ((0, [0, 2]), (1, [1, 3])):
            with task_loras(model, [f"task_{index}"]):
                alone = model.generate(ids[rows], images[rows], max_new_tokens=3, end_token=0)
            assert torch.equal(answers[rows, : alone.shape[1]], alone)
    fresh_model, fresh = resumed("task_lora", model, method, r=4, base_quantile=None)
    assert torch.equal(answer_logits(fresh_model, fresh, images, ids), routed)


def test_task_lora_sends_inputs_far_from_every_task_to_the_base_model():
    model, method = tiny_llava().eval(), build_method("task_lora", r=4, base_quantile=0.25)
    method.setup(model, RUN)
    train_task(model, method, 0, steps=3)
    train_task(model, method, 1, steps=3)
    assert method.keys.held == {} and sorted(method.keys.thresholds) == [0, 1]
    # Rows 0 and 1: the first training input of task 0 and of task 1; rows 2 and 3 unlike
    # both: a black image, and text tokens (45-48) no instruction held (task t's: 1 + 5t ..).
    images = torch.cat([batch(0, seed=0, rows=1)[0], batch(1, seed=10, rows=1)[0]])
    images = torch.cat([images, torch.zeros(2, 3, 32, 32)])
    ids = torch.cat([batch(0, seed=0, rows=1)[1], batch(1, seed=10, rows=1)[1]])
    far = torch.cat([ids[:, :5], torch.tensor([[45, 46, 47, 48], [48, 47, 46, 45]])], dim=1)
    ids = torch.cat([ids, far])
    prompt_ids, mask = prompts(ids)
    features = input_keys(model, images, prompt_ids, instruction_tokens(model, prompt_ids, mask))
    best, nearest = (features @ method.keys.keys().T).max(dim=1)
    below = best < torch.tensor([method.keys.thresholds[int(t)] for t in nearest])
    assert below.tolist() == [False, False, True, True]
    assert method.keys.choose(features, fallback=True).tolist() == [0, 1, -1, -1]
    routed = answer_logits(model, method, images, ids)
    with torch.no_grad():  # each route's rows as one batch, as `run_routes` computes them
        with task_loras(model, []):
            base = model(ids[2:], images[2:]).logits
        for index in (0, 1):
            with task_loras(model, [f"task_{index}"]):
                alone = model(ids[[index]], images[[index]]).logits
                lora_on_far = model(ids[2:], images[2:]).logits
            assert torch.equal(routed[index], alone[0])
            assert not torch.allclose(lora_on_far, base, atol=1e-4)  # a LoRA changes them
    assert torch.equal(routed[2:], base)
    fresh_model, fresh = resumed("task_lora", model, method, r=4, base_quantile=0.25)
    assert fresh.keys.thresholds == method.keys.thresholds
    assert torch.equal(answer_logits(fresh_model, fresh, images, ids), routed)


def test_task_keys_thresholds_are_a_quantile_of_the_held_similarities_by_hand():
    keys = TaskKeys(hold=3)
    # Task 0: (1, 0) twice and (0, 1): key (2, 1) / sqrt(5), similarities 2, 2, 1 over sqrt(5).
    keys.add(0, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    keys.add(0, torch.tensor([[0.0, 1.0], [5.0, 5.0]]))  # the fourth is not held (hold=3)...
    keys.sums[0], keys.counts[0] = torch.tensor([2.0, 1.0]), 3  # ...nor in the key, here
    assert keys.held[0].tolist() == [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    keys.calibrate(0, 0.25)  # sorted (1, 2, 2) / sqrt(5): the 0.25 quantile is 1.5 / sqrt(5)
    assert keys.thresholds[0] == pytest.approx(1.5 / 5**0.5) and 0 not in keys.held
    keys.add(1, torch.tensor([[0.0, -1.0]]))
    keys.calibrate(1, 0.0)  # one input, exactly on its key: threshold 1
    assert keys.thresholds[1] == pytest.approx(1.0)
    inputs = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [0.1, -1.0], [0.0, -1.0]])
    # (1, 1): 3 / sqrt(10) = 0.95 >= 0.67, task 0; (-1, 1): nearest task 0 at -1 / sqrt(10),
    # below; (0.1, -1): nearest task 1 at 0.995 < 1, base; (0, -1): on task 1's key.
    assert keys.choose(inputs, fallback=True).tolist() == [0, -1, -1, 1]
    assert keys.choose(inputs).tolist() == [0, 0, 1, 1]
    copied = TaskKeys()
    copied.load_state_dict(copy.deepcopy(keys.state_dict()))
    assert copied.choose(inputs, fallback=True).tolist() == [0, -1, -1, 1]
    with pytest.raises(ValueError, match="no threshold for tasks \\[2\\]"):
        keys.add(2, torch.tensor([[1.0, 1.0]]))
        keys.choose(inputs, fallback=True)
    with pytest.raises(ValueError, match="holds no features of task 5"):
        keys.calibrate(5, 0.1)


def test_input_keys_join_the_image_key_and_the_instructions_mean_embedding_by_hand():
    model = tiny_llava().eval()
    images, ids, labels = batch(0, seed=4, rows=2)
    mask = torch.ones_like(ids)
    mask[1, 0] = 0  # row 1's first token is padding
    text = instruction_tokens(model, ids, mask, labels)
    # Row 0: the BOS and the first text token (the image placeholders and answers left out).
    assert text[0].nonzero().flatten().tolist() == [0, 5]
    assert text[1].nonzero().flatten().tolist() == [5]
    assert instruction_tokens(model, ids, mask)[0].nonzero().flatten().tolist() == [0, 5, 6, 7, 8]
    table = model.language_model.get_input_embeddings().weight.detach()
    with torch.no_grad():
        tokens = model.encode_image(images).mean(dim=1)
    for row, kept in ((0, [0, 5]), (1, [5])):
        image = tokens[row] / tokens[row].norm()
        words = table[ids[row, kept]].mean(dim=0)
        expected = torch.cat([image, words / words.norm()]) / 2**0.5
        torch.testing.assert_close(input_keys(model, images, ids, text)[row], expected)


def test_modal_prompt_trains_one_tasks_prompts_and_matches_keys_at_test_time():
    model, method = tiny_llava().eval(), build_method("modal_prompt", length=3)
    method.setup(model, RUN)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == []  # nothing trains before a task starts
    prompts = model.lm_prompts.embeddings
    start = [p.detach().clone() for p in prompts]
    train_task(model, method, 0)
    assert not torch.equal(prompts[0], start[0]) and torch.equal(prompts[1], start[1])
    trained_first = prompts[0].detach().clone()
    train_task(model, method, 1)
    assert torch.equal(prompts[0], trained_first) and not torch.equal(prompts[1], start[1])
    images, ids = mixed_batch()
    routed = answer_logits(model, method, images, ids)
    with torch.no_grad():
        plain = model(ids, images).logits  # outside the routes: no prompts
        with model.lm_prompts.choosing(torch.tensor([0, 1, 0, 1])):
            expected = model(ids, images).logits
    assert torch.equal(routed, expected)
    assert not torch.allclose(routed, plain, atol=1e-4)
    fresh_model, fresh = resumed("modal_prompt", model, method, length=3)
    assert torch.equal(answer_logits(fresh_model, fresh, images, ids), routed)


def test_task_keys_choose_the_nearest_task_mean_and_sum_across_calls():
    keys = TaskKeys()
    keys.add(3, torch.tensor([[1.0, 0.0], [1.0, 2.0]]))  # mean (1, 1)
    keys.add(5, torch.tensor([[-1.0, 0.0]]))
    keys.add(5, torch.tensor([[-3.0, 0.0]]))  # mean (-2, 0)
    assert keys.counts == {3: 2, 5: 2}
    # (0.1, 1) is nearest (1, 1) in angle; (-1, 0.5) nearest (-1, 0)
    assert keys.choose(torch.tensor([[0.1, 1.0], [-1.0, 0.5]])).tolist() == [3, 5]
    copied = TaskKeys()
    copied.load_state_dict(copy.deepcopy(keys.state_dict()))
    assert torch.equal(copied.keys(), keys.keys())


def test_run_routes_puts_results_back_in_row_order_padding_shorter_ones():
    routes = [
        (torch.tensor([1]), contextlib.nullcontext()),
        (torch.tensor([0, 2]), contextlib.nullcontext()),
    ]

    def compute(rows):  # route 1 gives one token per row, route 2 two
        return torch.stack([rows * 10 + k for k in range(1 if len(rows) == 1 else 2)], dim=1)

    result = run_routes(routes, 3, compute, pad=-1)
    assert result.tolist() == [[0, 1], [10, -1], [20, 21]]


def test_task_keys_doctests():
    assert doctest.testmod(task_keys).failed == 0


def test_task_lora_resumed_mid_task_by_the_trainer_ends_with_the_same_keys_and_weights(
    tmp_path,
):
    """The keys grow with every training batch: a run resumed from a mid-task checkpoint must
    end with the same sums as the run that never stopped."""
    images, ids, labels = batch(0, seed=3)
    items = [
        (images[i], torch.stack([ids[i], labels[i], torch.ones_like(ids[i])])) for i in range(4)
    ]

    def run(folder, resume=None):
        model, method = tiny_llava(), build_method("task_lora", r=4)
        method.setup(model, RUN)
        method.before_task(task(0), model, RUN)
        config = TrainConfig(
            steps=2,
            batch_size=2,
            lr=1e-2,
            checkpoint_every=1,
            progress=False,
            tensorboard=False,
            output_dir=str(folder),
            resume=resume,
        )
        Trainer(model, items, config, objective=CausalLMObjective(), plugins=[method]).fit()
        return model, method

    whole_model, whole = run(tmp_path / "whole")
    middle = tmp_path / "whole" / "checkpoints" / "step_00000001.pt"
    resumed_model, again = run(tmp_path / "resumed", resume=str(middle))
    assert again.keys.counts == whole.keys.counts == {0: 4}
    assert torch.equal(again.keys.sums[0], whole.keys.sums[0])
    assert torch.equal(again.keys.held[0], whole.keys.held[0]) and len(whole.keys.held[0]) == 4
    assert all(
        torch.equal(p, tensors(whole_model, "lora_")[n])
        for n, p in tensors(resumed_model, "lora_").items()
    )
