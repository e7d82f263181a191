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
from mmcl.continual.methods.mod_x import ModX, off_diagonal_distillation
from mmcl.continual.methods.similarity import ClassPrompts, paired_similarities
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


def test_mod_x_term_by_hand_takes_the_diagonal_from_the_new_model():
    old = [[3.0, 1.0], [0.5, 0.0]]
    new = [[1.0, 0.5], [0.0, 2.0]]
    # The target is the old matrix with the new diagonal: [[1, 1], [0.5, 2]].
    # Row 0: p = (1/2, 1/2), q = softmax(1, 0.5) = (e/(e + e^0.5), e^0.5/(e + e^0.5)).
    q0 = math.e / (math.e + math.exp(0.5))
    row0 = 0.5 * math.log(0.5 / q0) + 0.5 * math.log(0.5 / (1 - q0))
    target = [[1.0, 1.0], [0.5, 2.0]]
    expected_rows = (row0 + kl_rows(target[1:], new[1:])[0]) / 2
    expected_columns = sum(kl_rows(transposed(target), transposed(new))) / 2
    got = off_diagonal_distillation(torch.tensor(old), torch.tensor(new))
    assert got.item() == pytest.approx(expected_rows + expected_columns, rel=1e-5)
    at_two = off_diagonal_distillation(torch.tensor(old), torch.tensor(new), temperature=2.0)
    by_hand_two = (
        sum(kl_rows(target, new, 2.0)) / 2
        + sum(kl_rows(transposed(target), transposed(new), 2.0)) / 2
    )
    assert at_two.item() == pytest.approx(by_hand_two, rel=1e-5)


def test_mod_x_term_ignores_the_diagonal_and_sees_the_off_diagonal():
    generator = torch.Generator().manual_seed(0)
    old = torch.randn(5, 5, generator=generator)
    new = old + torch.diag(torch.randn(5, generator=generator) * 3)  # only the diagonal moved
    assert off_diagonal_distillation(old, new).item() == pytest.approx(0.0, abs=1e-6)
    moved = new.clone()
    moved[0, 3] += 1.0
    assert off_diagonal_distillation(old, moved).item() > 1e-3
    student = new.clone().requires_grad_(True)
    off_diagonal_distillation(old, student + torch.eye(5) * 0).backward()
    assert student.grad.abs().max() < 1e-6  # at the target: no pull on anything


def test_kdr_term_by_hand_leaves_out_what_the_old_model_gets_wrong():
    old = [[3.0, 1.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]]  # row 1 ranks text 0 first
    new = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 2.0]]
    rows = kl_rows(old, new)
    columns = kl_rows(transposed(old), transposed(new))
    # Columns of old: (3, 2, 0), (1, 1, 0), (0, 0, 1): every match is ranked first (1 ties 1).
    expected = (rows[0] + rows[2]) / 2 + sum(columns) / 3
    got = rectified_distillation(torch.tensor(old), torch.tensor(new))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    plain = rectified_distillation(torch.tensor(old), torch.tensor(new), rectify=False)
    assert plain.item() == pytest.approx(sum(rows) / 3 + sum(columns) / 3, rel=1e-5)
    wrong_everywhere = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert rectified_distillation(wrong_everywhere, torch.zeros(2, 2)).item() == 0.0


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
    with torch.no_grad():
        for net, matrix in ((student, got), (teacher, old)):
            image = net.encode_image(images, normalize=True)
            text = net.encode_text(tokens, normalize=True)
            expected = net.logit_scale.exp() * image @ text.T
            torch.testing.assert_close(matrix, expected, rtol=1e-5, atol=1e-5)
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
                                       method.prompts, 1)  # fmt: skip
    expected = 2.0 * off_diagonal_distillation(old, student)
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
        (lambda: off_diagonal_distillation(torch.zeros(2, 3), torch.zeros(2, 3)), "square"),
    ],
)
def test_bad_arguments_name_the_method_and_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()
