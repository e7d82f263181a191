"""lwf, er, ewc and zscl on an instruction stream (a tiny LLaVA-style bridge), and LoRA from
a recipe in a continual run: each term against a hand computation, and each method end to
end through `run_continual`."""

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mmcl.continual.generative import conversation_encoder, starting_bridge
from mmcl.continual.instruction_streams import vqa_functions
from mmcl.continual.methods import build_method
from mmcl.continual.methods.arguments import describe_method
from mmcl.continual.methods.instruction_terms import lm_importance, next_token_kl
from mmcl.continual.methods.lwf import LwF
from mmcl.continual.runner import ContinualRun, run_continual
from mmcl.data.chat_template import IGNORE_INDEX
from mmcl.train import TrainConfig
from tiny_bridge import SPEC, tiny_bridge

IGN = IGNORE_INDEX


@pytest.fixture(scope="module")
def bridge():
    return tiny_bridge()


@pytest.fixture(scope="module")
def stream():
    return vqa_functions(["shape", "count"], train_size=8, test_size=4, general_size=2)


def config(output, steps=2):
    return TrainConfig(
        steps=steps, batch_size=4, lr=1e-3, progress=False, tensorboard=False, output_dir=output
    )


def a_run(stream, method, model, tokenizer, tmp_path, initial=None):
    run = ContinualRun(stream, method, config(tmp_path), tmp_path, initial or {})
    run.encoder = conversation_encoder(model, tokenizer)
    return run


@pytest.fixture(scope="module")
def small():
    """What an end-to-end run evaluates: few answers to generate."""
    return vqa_functions(["shape", "count"], train_size=8, test_size=2, general_size=1)


# --- lwf -----------------------------------------------------------------------------------


def test_next_token_kl_is_the_hand_worked_kl_at_answer_positions_only():
    # Position 0 predicts a labelled token; position 1 does not (label 2 ignored), and its
    # wildly different logits must not count. At T = 2: teacher (0, 0) -> (1/2, 1/2);
    # student (0, 2 ln 3) / 2 -> (1/4, 3/4). KL = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3).
    teacher = torch.tensor([[[0.0, 0.0], [9.0, -9.0], [0.0, 0.0]]])
    student = torch.tensor([[[0.0, 2 * math.log(3)], [-9.0, 9.0], [1.0, 1.0]]])
    labels = torch.tensor([[IGN, 1, IGN]])
    assert next_token_kl(teacher, student, labels, 2.0).item() == pytest.approx(
        0.5 * math.log(4 / 3), rel=1e-6
    )


def test_lwf_distils_the_frozen_previous_model_on_instructions_and_saves_no_teacher(
    bridge, stream, tmp_path
):
    model, tokenizer = copy.deepcopy(bridge[0]), bridge[1]
    method = LwF(temperature=2.0)
    run = a_run(stream, method, model, tokenizer, tmp_path)
    method.before_task(stream[1], model, run)
    assert all(not p.requires_grad for p in method.teacher.parameters())
    assert method.state_dict() == {"calls": 0}
    images, targets = next(iter_batches(stream[1].train, run.encoder))
    logits = model(targets[:, 0], images, targets[:, 2]).logits
    # The model is still the teacher: nothing to hold yet.
    same = method.extra_losses(model, (images, targets, None), {"logits": logits})["lwf"]
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        model.language_model.lm_head.weight.add_(
            0.5 * torch.randn_like(model.language_model.lm_head.weight)
        )
    student = model(targets[:, 0], images, targets[:, 2]).logits
    term = method.extra_losses(model, (images, targets, None), {"logits": student})["lwf"]
    assert term.item() > 0 and term.requires_grad
    assert all(p.grad is None for p in method.teacher.parameters())


def iter_batches(data, encoder, size=4):
    from mmcl.continual.methods.instruction_terms import encoded_batches

    return encoded_batches(data, encoder, size)


# --- er ------------------------------------------------------------------------------------


def er_run(stream, seed):
    data = {i: stream[i].train for i in range(len(stream))}
    return SimpleNamespace(
        instructions=True,
        config=SimpleNamespace(seed=seed),
        stream_data=lambda index, split="train": data[index],
    )


def test_er_keeps_every_past_conversation_with_the_same_probability(stream):
    # 2 tasks of 8 conversations, 4 slots: each is kept with probability 4 / 16 after both.
    kept = torch.zeros(2, 8)
    trials = 300
    for seed in range(trials):
        method, run = build_method("er", buffer_size=4), er_run(stream, seed)
        method.setup(None, run)
        method.after_task(stream[0], None, run)
        method.after_task(stream[1], None, run)
        for task, index, label in method.buffer.items:
            kept[task, index] += 1
            assert label == 0
    share = kept / trials
    assert share.sum().item() == pytest.approx(4.0)
    # A binomial share of 300 draws at p = 0.25 has sd 0.025: 0.1 is four of them.
    assert (share - 0.25).abs().max().item() < 0.1


def test_er_batches_mix_replayed_conversations_and_the_buffer_resumes_exactly(stream, tmp_path):
    method, run = build_method("er", buffer_size=4), er_run(stream, 3)
    method.setup(None, run)
    method.after_task(stream[0], None, run)
    data = method.train_data(stream[1], run)
    old = [stream[0].train[i][1] for i in range(8)]
    new = [stream[1].train[i][1] for i in range(8)]
    conversations = [data[i][1] for i in range(len(data))]
    assert conversations[:8] == new and all(c in old for c in conversations[8:])
    loader = torch.utils.data.DataLoader(
        range(len(data)), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    mixed = [
        any(conversations[i] in old for i in batch) and any(conversations[i] in new for i in batch)
        for batch in loader
    ]
    assert any(mixed)
    # Saved and loaded (as a checkpoint does): the same replay, and the same buffer after.
    torch.save(method.state_dict(), tmp_path / "er.pt")
    resumed = build_method("er", buffer_size=4)
    resumed.setup(None, run)
    resumed.load_state_dict(torch.load(tmp_path / "er.pt", weights_only=True))
    again = resumed.train_data(stream[1], run)
    assert [again[i][1] for i in range(len(again))] == conversations
    method.after_task(stream[1], None, run)
    resumed.after_task(stream[1], None, run)
    assert resumed.buffer.items == method.buffer.items


# --- ewc -----------------------------------------------------------------------------------


class TwoTokenLM(nn.Module):
    """Logits = a trainable bias over 2 tokens at every position, plus a frozen weight."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(2))
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)

    def forward(self, input_ids, pixel_values, attention_mask):
        logits = self.bias + 0 * self.frozen
        return SimpleNamespace(logits=logits.expand(*input_ids.shape, 2))


def test_ewc_importance_from_the_lm_loss_and_its_penalty_by_hand():
    # Two answer positions, both labelled 0; p = (1/2, 1/2) at each. The batch's LM loss has
    # gradient mean(p - onehot(0)) = (-1/2, 1/2) in the bias: importance (1/4, 1/4); the
    # frozen weight gets none. With the bias moved by (1, 2) from its anchor the penalty is
    # lambda / 2 * (1/4 * 1 + 1/4 * 4) = lambda * 0.625.
    model = TwoTokenLM()
    targets = torch.tensor([[[5, 6, 7], [IGN, 0, 0], [1, 1, 1]]])
    batches = [(torch.zeros(1, 3, 2, 2), targets)]
    fisher = lm_importance(model, batches, "minibatch", torch.Generator())
    assert set(fisher) == {"bias"}
    assert torch.allclose(fisher["bias"], torch.tensor([0.25, 0.25]))
    method = build_method("ewc", lambda_=10.0)
    method._store(fisher, model)
    with torch.no_grad():
        model.bias.add_(torch.tensor([1.0, 2.0]))
    assert method.extra_losses(model, None, None)["ewc"].item() == pytest.approx(6.25)


def test_ewc_sampled_fisher_on_a_bridge_gives_importance_to_trainable_weights_only(
    bridge, stream, tmp_path
):
    model, tokenizer = copy.deepcopy(bridge[0]), bridge[1]
    model.language_model.requires_grad_(False)  # only the projector trains
    method = build_method("ewc", fisher_samples=3)
    run = a_run(stream, method, model, tokenizer, tmp_path)
    method.after_task(stream[0], model, run)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(method.fishers[0]) == trainable
    assert all(name.startswith("projector.") for name in trainable)
    assert any(value.sum() > 0 for value in method.fishers[0].values())


# --- zscl ----------------------------------------------------------------------------------


def test_zscl_distils_the_initial_model_on_reference_captions_as_computed_by_hand(
    bridge, stream, tmp_path
):
    model, tokenizer = copy.deepcopy(bridge[0]), bridge[1]
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    method = build_method(
        "zscl", lambda_=0.5, temperature=2.0, reference_pairs=4, reference_batch_size=2
    )
    run = a_run(stream, method, model, tokenizer, tmp_path, initial)
    method.setup(model, run)
    method.before_task(stream[0], model, run)
    with torch.no_grad():
        for p in model.language_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images, targets = method.reference_batch(0)
    term = method.extra_losses(model, (images, targets, None), {})["zscl"]
    # By hand: the caption's positions, softmax at T = 2, KL summed over the vocabulary and
    # averaged over positions, times lambda * T**2.
    ids, labels, mask = targets.unbind(1)
    with torch.no_grad():
        student = model(ids, images, mask).logits.double()
        teacher_model = copy.deepcopy(model)
        teacher_model.load_state_dict(initial)
        teacher = teacher_model(ids, images, mask).logits.double()
    total, count = 0.0, 0
    for row in range(len(ids)):
        for t in range(ids.shape[1] - 1):
            if labels[row, t + 1] == IGN:
                continue
            p = torch.softmax(teacher[row, t] / 2, dim=-1)
            q = torch.softmax(student[row, t] / 2, dim=-1)
            total += float((p * (p.log() - q.log())).sum())
            count += 1
    assert count > 0
    assert term.item() == pytest.approx(0.5 * 4 * total / count, rel=1e-4)
    # The answers are built-in scene captions of the reference set.
    answers = tokenizer.batch_decode(
        torch.where(labels == IGN, tokenizer.pad_token_id, labels), skip_special_tokens=True
    )
    captions = {conversation.turns[0][1] for _, conversation in method.reference}
    assert all(" ".join(a.split()) in captions for a in answers)


# --- end to end ----------------------------------------------------------------------------

ARGUMENTS = {
    "lwf": {},
    "er": {"buffer_size": 4},
    "ewc": {"fisher_samples": 4},
    "online_ewc": {"fisher_samples": 4, "fisher": "minibatch"},
    "zscl": {"reference_pairs": 8, "average_every": 1},
}


@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_regularising_methods_run_an_instruction_stream_end_to_end(bridge, small, tmp_path, name):
    model, tokenizer = copy.deepcopy(bridge[0]), bridge[1]
    method = build_method(name, **ARGUMENTS[name])
    result = run_continual(
        model, small, method, config(tmp_path), tmp_path, progress=False, tokenizer=tokenizer
    )
    assert len(result.matrix) == 2 and len(result.report["generative"]["format_matrix"]) == 2
    # The second task trained with the method's term beside the LM loss.
    if name != "er":
        lines = (tmp_path / "task_01_count" / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines if '"lm"' in line]
        assert records and all(math.isfinite(r[name]) for r in records)
    assert "instruction streams" in describe_method(name, type(method))


def lora_recipe(tmp_path):
    lm = "".join(f"\n    {k}: {v}" for k, v in SPEC["lm"].items())
    text = (
        f"model:\n  kind: llava\n  tower: tiny-vit\n  vocab_size: {SPEC['vocab_size']}\n"
        f"  tokenizer_text_size: {SPEC['tokenizer_text_size']}\n  lm:{lm}\n"
        f"  trainable: [language_model]\n"
        f"  lora: {{target: lm, r: 2, alpha: 4, modules: [q_proj, v_proj]}}\n"
    )
    path = tmp_path / "llava-lora.yaml"
    path.write_text(text)
    return path


def test_a_recipes_lora_trains_only_its_adapters_in_a_continual_run(small, tmp_path):
    model, tokenizer = starting_bridge(str(lora_recipe(tmp_path)))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    output = tmp_path / "run"
    run_continual(model, small, build_method("lwf"), config(output), output,
                  progress=False, tokenizer=tokenizer)  # fmt: skip
    after = model.state_dict()
    changed = {k for k in start if not torch.equal(start[k], after[k])}
    assert changed and all("lora_B" in k or "lora_A" in k for k in changed)


def test_instruction_terms_doctests():
    import doctest

    from mmcl.continual.methods import instruction_terms

    assert doctest.testmod(instruction_terms).failed == 0
