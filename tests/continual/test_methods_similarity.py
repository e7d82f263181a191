"""Mod-X and KDR: their distillation terms on hand-worked matrices, the batch's similarity
matrices against the towers, and short runs."""

import math

import pytest
import torch
from continual_helpers import small_config, tiny_clip
from torch.utils.data import DataLoader

import mmcl
from mmcl.continual.experiments import build_scenario
from mmcl.continual.methods import build_method
from mmcl.continual.methods.arguments import describe_method
from mmcl.continual.methods.kdr import KDR, rectified_distillation
from mmcl.continual.methods.lwf import frozen_copy
from mmcl.continual.methods.mod_x import ModX, aligned_distillation
from mmcl.continual.methods.similarity import (
    ClassPrompts,
    matched_pairs,
    paired_similarities,
    ranks_a_match_first,
    row_kl_to,
)
from mmcl.continual.runner import ContinualRun, run_continual
from mmcl.continual.tasks import Scenario


def scenario(tasks: int = 2):
    full = build_scenario("scenes-cil", train_size=32, test_size=16)
    return Scenario(full.tasks[:tasks], full.kind, full.seed, full.classnames, full.name)


def a_run(tmp_path, method, stream=None):
    return ContinualRun(stream or scenario(), method, small_config(tmp_path), tmp_path, {})


def kl_rows(target, student, temperature=1.0):
    """Row-wise KL(softmax(target) || softmax(student)) with plain floats (the reference)."""
    result = []
    for t_row, s_row in zip(target, student, strict=True):
        t = [math.exp(v / temperature) for v in t_row]
        s = [math.exp(v / temperature) for v in s_row]
        p = [v / sum(t) for v in t]
        q = [v / sum(s) for v in s]
        result.append(sum(a * math.log(a / b) for a, b in zip(p, q, strict=True)))
    return result


def transposed(matrix):
    return [list(column) for column in zip(*matrix, strict=True)]


# --- the terms on hand-worked matrices ----------------------------------------------------------


def softmax(row, temperature=1.0):
    weights = [math.exp(v / temperature) for v in row]
    return [w / sum(weights) for w in weights]


def kl_to(p, logits, temperature=1.0):
    """KL(p || softmax(logits / T)) with plain floats, 0 log 0 = 0 (the reference)."""
    q = softmax(logits, temperature)
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def test_mod_x_term_by_hand_aligns_the_rows_the_old_model_gets_right():
    # As the authors' cognition_align: row 1 of old ranks text 0 first, so it is replaced by the
    # student's row (adding nothing); column 1 of old, (1, 0), ranks image 0 first: likewise.
    old = [[3.0, 1.0], [0.5, 0.0]]
    new = [[1.0, 0.5], [0.0, 2.0]]
    for temperature in (1.0, 2.0):
        row0 = kl_rows([[3.0, 1.0]], [[1.0, 0.5]], temperature)[0]
        column0 = kl_rows([[3.0, 0.5]], [[1.0, 0.0]], temperature)[0]
        got = aligned_distillation(torch.tensor(old), torch.tensor(new), temperature)
        # Summed over rows (one kept in each direction), the two directions averaged.
        assert got.item() == pytest.approx((row0 + column0) / 2, rel=1e-5)


def test_mod_x_term_sums_over_rows_and_counts_the_diagonal():
    generator = torch.Generator().manual_seed(0)
    old = torch.randn(5, 5, generator=generator) + 4 * torch.eye(5)  # every match ranked first
    assert aligned_distillation(old, old.clone()).item() == pytest.approx(0.0, abs=1e-6)
    new = old + torch.diag(torch.randn(5, generator=generator))  # only the diagonal moved
    expected = (sum(kl_rows(old.tolist(), new.tolist())) + sum(kl_rows(old.T.tolist(),
                new.T.tolist()))) / 2  # fmt: skip
    assert expected > 1e-3
    assert aligned_distillation(old, new).item() == pytest.approx(expected, rel=1e-5)


def test_mod_x_rows_the_old_model_gets_wrong_neither_add_nor_pull():
    generator = torch.Generator().manual_seed(1)
    old = torch.randn(4, 4, generator=generator) + 4 * torch.eye(4)
    old[2, 0] = old[2, 2] + 1.0  # image 2 ranks text 0 first
    old[0, 0] = old[2, 0] + 1.0  # while text 0 still ranks image 0 first
    student = old.clone()
    student[2] += torch.tensor([0.0, 2.0, -1.0, 0.5])  # the student moves only that row
    student.requires_grad_(True)
    term = aligned_distillation(old, student)
    term.backward()
    # Row 2 is no target (its KL is 0); every column still sees image 2's entry move.
    moved = student.detach()
    expected = sum(kl_rows(old.T.tolist(), moved.T.tolist())) / 2
    assert term.item() == pytest.approx(expected, rel=1e-5)
    # Its gradient is the columns' alone: (q - p) / 2 per column, transposed back.
    columns = torch.softmax(moved.T, dim=-1) - torch.softmax(old.T, dim=-1)
    torch.testing.assert_close(student.grad, columns.T / 2, rtol=1e-5, atol=1e-6)


def test_kdr_term_by_hand_rectifies_what_the_old_model_gets_wrong():
    old = [[3.0, 1.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]]  # row 1 ranks text 0 first
    # Columns of old: (3, 2, 0), (1, 1, 0), (0, 0, 1): every match is ranked first (1 ties 1).
    right_new = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 2.0]]  # the new model gets row 1
    wrong_new = [[1.0, 0.0, 0.0], [1.0, 0.0, 0.5], [0.0, 1.0, 2.0]]  # neither model gets it
    for new, row1 in (
        (right_new, 0.0),  # rectified with the new affinity: KL of a row with itself
        (wrong_new, kl_to([0.0, 1.0, 0.0], wrong_new[1])),  # the paired label, one-hot
    ):
        rows = kl_rows(old, new)
        columns = kl_rows(transposed(old), transposed(new))
        expected = (rows[0] + row1 + rows[2]) / 3 + sum(columns) / 3
        got = rectified_distillation(torch.tensor(old), torch.tensor(new))
        assert got.item() == pytest.approx(expected, rel=1e-5)
        plain = rectified_distillation(torch.tensor(old), torch.tensor(new), rectify=False)
        assert plain.item() == pytest.approx(sum(rows) / 3 + sum(columns) / 3, rel=1e-5)


def test_kdr_term_by_hand_with_classes_shares_the_label_among_a_class():
    # Images 0 and 1 are of one class, so texts 0 and 1 are one prompt: equal columns.
    matched = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    old = [[1.0, 1.0, 2.0], [2.0, 2.0, 0.0], [0.0, 0.0, 1.0]]  # row 0 ranks text 2 first
    new = [[0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 3.0]]  # and so does the new model
    rows = (kl_to([0.5, 0.5, 0.0], new[0]) + sum(kl_rows(old[1:], new[1:]))) / 3
    # Columns of old: (1, 2, 0) twice, right (image 1 is of the class); (2, 0, 1) wrong, but
    # the new model's (1, 0, 3) is right: that column adds nothing.
    columns = 2 * kl_rows([[1.0, 2.0, 0.0]], [[0.0, 1.0, 0.0]])[0] / 3
    got = rectified_distillation(torch.tensor(old), torch.tensor(new), matched=matched)
    assert got.item() == pytest.approx(rows + columns, rel=1e-5)
    # Mod-X on the same matrices: the wrong row and column add nothing, the rest are summed.
    kept = sum(kl_rows(old[1:], new[1:])) + 2 * kl_rows([[1.0, 2.0, 0.0]], [[0.0, 1.0, 0.0]])[0]
    modx = aligned_distillation(torch.tensor(old), torch.tensor(new), matched=matched)
    assert modx.item() == pytest.approx(kept / 2, rel=1e-5)


def test_matches_ranked_first_and_kl_to_probabilities():
    logits = torch.tensor([[2.0, 1.0], [3.0, 3.0], [0.0, 1.0]])
    matched = torch.tensor([[1, 0], [0, 1], [1, 0]], dtype=torch.bool)
    assert ranks_a_match_first(logits, matched).tolist() == [True, True, False]  # a tie is right
    one_hot = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    expected = [
        kl_to(p, row, 2.0) for p, row in zip(one_hot.tolist(), logits.tolist(), strict=True)
    ]
    assert row_kl_to(one_hot, logits, 2.0).tolist() == pytest.approx(expected, rel=1e-6)
    images = torch.zeros(3, 3, 8, 8)
    assert matched_pairs((images, torch.tensor([4, 7, 4]))).tolist() == [
        [True, False, True],
        [False, True, False],
        [True, False, True],
    ]
    assert torch.equal(
        matched_pairs((images, torch.zeros(3, 77, dtype=torch.long))), torch.eye(3).bool()
    )


# --- the batch's similarity matrices ------------------------------------------------------------


def nudged(model, scale=0.05):
    other = frozen_copy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return other.requires_grad_(True).train()


def test_similarities_of_a_captioned_batch_are_image_caption_cosines():
    teacher = frozen_copy(tiny_clip())
    student = nudged(teacher)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    tokens = mmcl.tokenize(["a red ring", "two squares", "a cross on grass"])
    outputs = student(images, tokens, output_dict=True)
    got, old = paired_similarities(student, teacher, (images, tokens), outputs, None, 0)
    plain = paired_similarities(student, teacher, (images, tokens), outputs, None, 0, False)
    with torch.no_grad():
        for net, matrix, cosines in ((student, got, plain[0]), (teacher, old, plain[1])):
            image = net.encode_image(images, normalize=True)
            text = net.encode_text(tokens, normalize=True)
            expected = net.logit_scale.exp() * image @ text.T
            torch.testing.assert_close(matrix, expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(cosines, image @ text.T, rtol=1e-5, atol=1e-5)
    assert got.requires_grad and not old.requires_grad


def test_similarities_of_a_classification_batch_pair_each_image_with_its_class_prompt(tmp_path):
    teacher = frozen_copy(tiny_clip())
    student = nudged(teacher)
    run = a_run(tmp_path, ModX())
    space = run.training_space(1)
    images, labels = next(iter(DataLoader(run.stream_data(1), batch_size=4)))
    outputs = {
        "image_features": student.encode_image(images, normalize=True),
        "logit_scale": student.logit_scale.exp(),
    }
    prompts = ClassPrompts(space)
    got, old = paired_similarities(student, teacher, (images, labels), outputs, prompts, 1)
    names = dict(zip(space.labels, space.names, strict=True))
    templates = dict(zip(space.labels, space.templates, strict=True))
    written = [templates[y][1 % len(templates[y])].format(names[y]) for y in labels.tolist()]
    with torch.no_grad():
        for net, matrix in ((student, got), (teacher, old)):
            image = net.encode_image(images, normalize=True)
            text = net.encode_text(mmcl.tokenize(written), normalize=True)
            expected = net.logit_scale.exp() * image @ text.T
            torch.testing.assert_close(matrix, expected, rtol=1e-5, atol=1e-5)


# --- the methods --------------------------------------------------------------------------------


def test_mod_x_adds_nothing_on_the_first_task_and_is_zero_until_the_model_moves(tmp_path):
    model, method = tiny_clip(), ModX(lambda_=2.0)
    run = a_run(tmp_path, method)
    images, labels = next(iter(DataLoader(run.stream_data(1), batch_size=4)))
    method.before_task(run.scenario[0], model, run)
    assert method.extra_losses(model, (images, labels), {}) == {}
    method.before_task(run.scenario[1], model, run)
    outputs = model(images, mmcl.tokenize(["x"] * 4), output_dict=True)
    start = method.extra_losses(model, (images, labels), outputs)["mod_x"]
    assert abs(start.item()) < 1e-5
    moved = nudged(model)
    outputs = moved(images, mmcl.tokenize(["x"] * 4), output_dict=True)
    term = method.extra_losses(moved, (images, labels), outputs)["mod_x"]
    student, old = paired_similarities(moved, method.teacher, (images, labels), outputs,
                                       method.prompts, 1, scaled=False)  # fmt: skip
    same_class = labels[:, None] == labels[None, :]
    expected = 2.0 * aligned_distillation(old, student, matched=same_class)
    assert term.item() > 1e-5 and term.item() == pytest.approx(expected.item(), rel=1e-5)
    assert method.state_dict() == {"calls": 2}


@pytest.mark.parametrize("spec", ["kdr", "mod_x+er"])
def test_each_method_runs_a_stream_and_adds_its_term_from_the_second_task(tmp_path, spec):
    method = build_method(spec, buffer_size=8)
    term = spec.split("+")[0]
    config = small_config(tmp_path, steps=1)
    result = run_continual(
        tiny_clip(), scenario(), method, config, tmp_path / "run", progress=False
    )
    assert len(result.matrix) == 2 and all(len(row) == 2 for row in result.matrix)
    logs = [
        (tmp_path / "run" / f"task_0{i}_task-{i}" / "metrics.jsonl").read_text() for i in range(2)
    ]
    assert term not in logs[0] and f'"{term}"' in logs[1]


def test_kdr_trains_on_the_task_plus_replay_and_resumes_its_buffer(tmp_path):
    method = KDR(buffer_size=4)
    run = a_run(tmp_path, method)
    method.setup(tiny_clip(), run)
    assert len(method.train_data(run.scenario[0], run)) == len(run.stream_data(0))
    method.after_task(run.scenario[0], None, run)
    assert len(method.train_data(run.scenario[1], run)) == 2 * len(run.stream_data(1))
    again = KDR(buffer_size=4)
    again.load_state_dict(method.state_dict())
    assert again.replay.buffer.items == method.replay.buffer.items
    with pytest.raises(ValueError, match=r"\['kdr', 'er'\] both choose the training data"):
        build_method("kdr+er")


def test_describe_names_the_papers():
    assert "paper: Ni et al. 2023" in describe_method("mod_x", ModX)
    assert "paper: Cui et al. 2024" in describe_method("kdr", KDR)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ModX(lambda_=-1), "mod_x: lambda_ must be"),
        (lambda: ModX(temperature=0), "mod_x: temperature must be"),
        (lambda: KDR(lambda_=float("nan")), "kdr: lambda_ must be"),
        (lambda: KDR(buffer_size=0), "kdr: buffer_size must be"),
        (lambda: KDR(rectify="yes"), "kdr: rectify must be"),
        (lambda: aligned_distillation(torch.zeros(2, 3), torch.zeros(2, 3)), "square"),
        (
            lambda: rectified_distillation(
                torch.zeros(2, 2), torch.zeros(2, 2), matched=torch.zeros(2, 2, dtype=torch.bool)
            ),
            "kdr: matched must be booleans of shape",
        ),
    ],
)
def test_bad_arguments_name_the_method_and_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()
