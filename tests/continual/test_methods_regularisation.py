"""EWC, online EWC, LwF and ZSCL: their terms against hand computations, and whole runs."""

import inspect
import io
import json
import math
from types import SimpleNamespace

import pytest
import torch
from continual_helpers import small_config, tiny_clip
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

import mmcl
from mmcl.continual import classes
from mmcl.continual.experiments import build_scenario
from mmcl.continual.methods import ewc as ewc_module
from mmcl.continual.methods.ewc import EWC, OnlineEWC, diagonal_fisher
from mmcl.continual.methods.lwf import LwF
from mmcl.continual.methods.zscl import ZSCL
from mmcl.continual.runner import ContinualRun, run_continual
from mmcl.continual.scenarios import multi_dataset
from mmcl.continual.tasks import Scenario
from mmcl.data.zeroshot import format_prompts
from mmcl.train.objectives import ClassificationObjective


def scenario(tasks: int = 4):
    full = build_scenario("scenes-cil", train_size=32, test_size=16)
    return Scenario(full.tasks[:tasks], full.kind, full.seed, full.classnames, full.name)


def config(tmp_path, **overrides):
    return small_config(tmp_path, lr=0.001, **overrides)


def a_run(tmp_path, method, model):
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return ContinualRun(scenario(), method, config(tmp_path), tmp_path, initial)


def a_batch(run, index, size=4):
    data = run.stream_data(index)
    images, labels = zip(*(data[i] for i in range(size)), strict=True)
    return torch.stack(images), torch.tensor(labels)


def objective_outputs(model, run, index, images, labels):
    space = run.training_space(index)
    objective = ClassificationObjective(space.names, space.templates, space.labels)
    return objective(model, images, labels)[1]


def nudge(model, scale=0.05):
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn_like(parameter))


class ToyClip(nn.Module):
    """A CLIP-shaped toy: linear image tower, frozen bag-of-tokens text tower."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.visual = nn.Linear(4, 3)
        self.text = nn.Embedding(49408, 3)
        self.text.requires_grad_(False)
        self.logit_scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, images, texts, output_dict=True):
        mask = (texts > 0).unsqueeze(-1)  # no padding
        return {
            "image_features": F.normalize(self.visual(images), dim=-1),
            "text_features": F.normalize((self.text(texts) * mask).sum(dim=1), dim=-1),
            "logit_scale": self.logit_scale.exp(),
        }


# ------------------------------------------------------------------------------------- EWC


def test_ewc_penalty_is_half_lambda_fisher_weighted_squared_distance():
    model = nn.Linear(3, 2)
    method = EWC(lambda_=4.0)
    fishers, anchors = [], []
    for seed in (1, 2):  # two past tasks: EWC sums one term per task
        generator = torch.Generator().manual_seed(seed)
        fishers.append(
            {n: torch.rand(p.shape, generator=generator) for n, p in model.named_parameters()}
        )
        anchors.append(
            {n: torch.randn(p.shape, generator=generator) for n, p in model.named_parameters()}
        )
    method.fishers, method.anchors = fishers, anchors
    penalty = method.extra_losses(model, None, {})["ewc"]
    expected = 0.0
    for fisher, anchor in zip(fishers, anchors, strict=True):
        for name, parameter in model.named_parameters():
            difference = parameter.detach() - anchor[name]
            expected += float((fisher[name] * difference * difference).sum())
    assert penalty.item() == pytest.approx(4.0 / 2 * expected, rel=1e-5)
    penalty.backward()  # d/dtheta = lambda * sum_k F_k * (theta - theta*_k)
    gradient = sum(
        4.0 * f["weight"] * (model.weight.detach() - a["weight"])
        for f, a in zip(fishers, anchors, strict=True)
    )
    assert torch.allclose(model.weight.grad, gradient, atol=1e-5)
    assert EWC().extra_losses(model, None, {}) == {}  # nothing learned yet: no term


def test_true_fisher_matches_its_expectation_and_skips_frozen_weights():
    model = ToyClip()
    space = classes.ClassSpace(["red", "green", "blue"], [0, 1, 2], [["a {} thing"]] * 3)
    torch.manual_seed(3)
    distinct = torch.randn(4, 4)
    data = TensorDataset(distinct.repeat(500, 1), torch.zeros(2000, dtype=torch.long))
    fisher = diagonal_fisher(model, space, data, samples=2000, seed=0)
    assert set(fisher) == {"visual.weight", "visual.bias", "logit_scale"}  # text is frozen

    # Reference: E_x E_{y ~ p(y|x)} [(d log p(y|x) / d theta)^2], the expectation over y exact.
    tokens = mmcl.tokenize(
        format_prompts("red", ["a {} thing"]) + ["a green thing", "a blue thing"]
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    expected = [torch.zeros_like(p) for p in trainable]
    for x in distinct:
        outputs = model(x[None], tokens)
        logits = outputs["logit_scale"] * outputs["image_features"] @ outputs["text_features"].T
        log_p = logits[0].log_softmax(-1)
        for y in range(3):
            grads = torch.autograd.grad(log_p[y], trainable, retain_graph=True)
            for total, g in zip(expected, grads, strict=True):
                total += log_p[y].exp().detach() * g**2 / len(distinct)
    for (name, parameter), reference in zip(
        [(n, p) for n, p in model.named_parameters() if p.requires_grad], expected, strict=True
    ):
        assert fisher[name].shape == parameter.shape
        # A Monte Carlo estimate from 2000 draws; the empirical Fisher (the data's labels
        # instead of draws from the model) is 70-95% off here.
        assert torch.allclose(fisher[name], reference, rtol=0.2, atol=0.05 * reference.max()), name


def fake_run():
    space = classes.ClassSpace(["a", "b"], [0, 1], [["{}"]] * 2)
    data = TensorDataset(torch.zeros(2, 3), torch.tensor([0, 1]))
    return SimpleNamespace(
        config=SimpleNamespace(seed=0),
        method=None,
        training_space=lambda index: space,
        stream_data=lambda index: data,
    )


def test_online_ewc_keeps_one_decayed_fisher_and_the_latest_anchor(monkeypatch):
    model = nn.Linear(3, 2)
    queue = []  # the Fisher of each task, in turn: 2 everywhere, then 5
    monkeypatch.setattr(ewc_module, "diagonal_fisher", lambda *arguments, method: queue.pop(0))
    online, plain = OnlineEWC(lambda_=1.0, gamma=0.5), EWC(lambda_=1.0)
    for method in (online, plain):
        queue[:] = [
            {n: torch.full_like(p, value) for n, p in model.named_parameters()}
            for value in (2.0, 5.0)
        ]
        for index, weight in enumerate((1.0, 3.0)):  # the weights each task ends with
            with torch.no_grad():
                model.weight.fill_(weight)
            method.after_task(SimpleNamespace(index=index), model, fake_run())
    assert len(online.fishers) == len(online.anchors) == 1
    assert torch.allclose(online.fishers[0]["weight"], torch.full((2, 3), 0.5 * 2.0 + 5.0))
    assert torch.allclose(online.anchors[0]["weight"], torch.full((2, 3), 3.0))
    # EWC keeps one merged pair: S = 2 + 5, m = (2 * 1 + 5 * 3) / 7, and the constant
    # sum_k F_k (a_k - m)^2 = 2 (10/7)^2 + 5 (4/7)^2 = 40/7 per weight (bias: anchors equal).
    assert len(plain.fishers) == len(plain.anchors) == 1
    assert torch.allclose(plain.fishers[0]["weight"], torch.full((2, 3), 7.0))
    assert torch.allclose(plain.anchors[0]["weight"], torch.full((2, 3), 17 / 7))
    assert plain.constant == pytest.approx(6 * 40 / 7)
    with torch.no_grad():
        model.weight.fill_(4.0)
        model.bias.copy_(plain.anchors[0]["bias"])
    # At w = 4: lambda / 2 * sum_k F_k (4 - a_k)^2 = 1/2 * 6 * (2 * 3^2 + 5 * 1^2) = 69.
    assert plain.extra_losses(model, None, {})["ewc"].item() == pytest.approx(69.0)
    with torch.no_grad():
        model.weight.fill_(4.0)
        model.bias.copy_(online.anchors[0]["bias"])
    penalty = online.extra_losses(model, None, {})["online_ewc"]
    assert penalty.item() == pytest.approx(0.5 * 6 * 6.0 * (4.0 - 3.0) ** 2)


# ------------------------------------------------------------------------------------- LwF


def lwf_by_hand(student, teacher, old, images, temperature):
    """KL(teacher || student) at temperature T over the old classes, first template."""
    tokens = mmcl.tokenize(
        [format_prompts(n, t[:1])[0] for n, t in zip(old.names, old.templates, strict=True)]
    )
    with torch.no_grad():
        s, t = student(images, tokens, output_dict=True), teacher(images, tokens, output_dict=True)
        zs = s["logit_scale"] * s["image_features"] @ s["text_features"].T / temperature
        zt = t["logit_scale"] * t["image_features"] @ t["text_features"].T / temperature
    p = zt.softmax(-1)
    return float((p * (p.log() - zs.log_softmax(-1))).sum(-1).mean())


def test_lwf_distils_old_classes_only_from_the_second_task(tmp_path):
    model = tiny_clip()
    method = LwF(lambda_=3.0, temperature=2.0)
    run = a_run(tmp_path, method, model)
    images, labels = a_batch(run, 0)
    method.before_task(run.scenario[0], model, run)
    outputs = objective_outputs(model, run, 0, images, labels)
    assert method.extra_losses(model, (images, labels), outputs) == {}  # task 0: nothing old

    teacher = mmcl.create_model("tiny-vit")
    teacher.load_state_dict(model.state_dict())
    method.before_task(run.scenario[1], model, run)
    assert method.old_classes.labels == run.scenario[0].class_ids  # classes before task 1
    images, labels = a_batch(run, 1)
    outputs = objective_outputs(model, run, 1, images, labels)
    same = method.extra_losses(model, (images, labels), outputs)["lwf"]
    assert abs(same.item()) < 1e-6  # student == teacher

    nudge(model)
    method.calls = 0  # same template as the hand computation
    outputs = objective_outputs(model, run, 1, images, labels)
    moved = method.extra_losses(model, (images, labels), outputs)["lwf"]
    expected = 3.0 * lwf_by_hand(model, teacher, method.old_classes, images, 2.0)
    assert expected > 1e-4 and moved.item() == pytest.approx(expected, rel=1e-4)
    moved.backward()  # the student's text tower is held as well as its image tower
    assert model.text.token_embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher.parameters())


def test_lwf_old_classes_are_earlier_tasks_in_multi_dataset_streams():
    a = TensorDataset(torch.zeros(2, 1), torch.tensor([0, 1]))
    b = TensorDataset(torch.zeros(3, 1), torch.tensor([0, 1, 2]))
    stream = multi_dataset(
        [
            ("a", a, a, ["x", "y"], ["{}"]),
            ("b", b, b, ["p", "q", "r"], ["{}"]),
            ("c", a, a, ["u", "v"], ["{}"]),
        ]
    )
    method = LwF()
    run = SimpleNamespace(scenario=stream)
    method.before_task(stream[2], nn.Linear(1, 1), run)
    assert method.old_classes.names == ["x", "y", "p", "q", "r"]
    assert method.old_classes.labels == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------------ ZSCL


def test_zscl_loss_is_zero_at_the_start_and_grows_as_the_model_drifts(tmp_path):
    model = tiny_clip()
    method = ZSCL(reference_pairs=16, reference_batch_size=6)
    run = a_run(tmp_path, method, model)
    method.setup(model, run)
    assert method.reference.split == "val" and len(method.reference) == 16
    images, labels = a_batch(run, 0)
    method.before_task(run.scenario[0], model, run)
    start = method.extra_losses(model, (images, labels), {})["zscl"]
    assert abs(start.item()) < 1e-5

    nudge(model)
    first = method.draws
    moved = method.extra_losses(model, (images, labels), {})["zscl"]
    # By hand: both directions of KL(teacher || student) at T = 2, scaled by T^2.
    ref_images, ref_tokens = method.reference_batch(first)
    assert ref_images.shape[0] == 6
    with torch.no_grad():
        s = model(ref_images, ref_tokens, output_dict=True)
        t = method.teacher(ref_images, ref_tokens, output_dict=True)
        zs = s["logit_scale"] * s["image_features"] @ s["text_features"].T / 2
        zt = t["logit_scale"] * t["image_features"] @ t["text_features"].T / 2

    def kl(teacher, student):
        p = teacher.softmax(-1)
        return (p * (p.log() - student.log_softmax(-1))).sum(-1).mean()

    expected = 4 * (kl(zt, zs) + kl(zt.T, zs.T))
    assert expected > 1e-4 and moved.item() == pytest.approx(expected.item(), rel=1e-4)
    assert torch.equal(method.reference_batch(first)[1], ref_tokens)  # a function of the count
    assert not torch.equal(method.reference_batch(first + 1)[1], ref_tokens)


def test_zscl_weight_average_is_the_mean_of_the_sampled_weights_and_resumes_exactly():
    model = nn.Linear(3, 2)
    method = ZSCL(average_every=3)
    method.teacher = model  # set up already: the average does not use it
    method.before_task(None, model, None)
    recorded = [{n: p.detach().clone() for n, p in model.named_parameters()}]  # task start
    resumed = None
    for step in range(8):  # folds at steps 0, 3, 6
        nudge(model, scale=1.0)
        method.after_optimizer_step(SimpleNamespace(step=step, model=model))
        if step % 3 == 0:
            recorded.append({n: p.detach().clone() for n, p in model.named_parameters()})
        if step == 4:  # a checkpoint, and a fresh process that loads it
            resumed = ZSCL(average_every=3)
            resumed.load_state_dict(reloaded(method.state_dict()))
        elif step > 4:
            resumed.after_optimizer_step(SimpleNamespace(step=step, model=model))
    assert method.members == len(recorded) == 4
    method.after_task(None, model, None)
    for name, parameter in model.named_parameters():
        mean = torch.stack([r[name] for r in recorded]).mean(dim=0)
        assert torch.allclose(parameter, mean, atol=1e-6), name
    other = nn.Linear(3, 2)
    resumed.after_task(None, other, None)
    assert all(
        torch.allclose(a, b) for a, b in zip(model.parameters(), other.parameters(), strict=True)
    )
    assert method.state_dict()["average"] is None  # nothing left to carry across tasks


def test_zscl_warns_when_a_tasks_average_holds_only_its_start_and_first_step(recwarn):
    # 5 steps at average_every=100: the average folds in step 0 only, (start + step 0) / 2,
    # so the task ends next to its start; a tenth of the steps (here 1) is what to set.
    for every, warned in ((100, True), (1, False)):
        model = nn.Linear(3, 2)
        method = ZSCL(average_every=every)
        method.teacher = model
        method.before_task(None, model, None)
        for step in range(5):
            nudge(model, scale=1.0)
            method.after_optimizer_step(SimpleNamespace(step=step, model=model))
        if every == 100:  # the count survives a checkpoint
            resumed = ZSCL(average_every=every)
            resumed.load_state_dict(reloaded(method.state_dict()))
            assert resumed.task_steps == 5
        recwarn.clear()
        method.after_task(None, model, None)
        messages = [str(w.message) for w in recwarn.list]
        assert any("holds 2 weights of its 5 steps" in m for m in messages) == warned, messages
        if warned:
            assert any("set average_every to about 1" in m for m in messages)


def reloaded(state):
    """`state` saved and loaded again the way the engine loads checkpoints (weights only)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# --------------------------------------------------------------------------- whole runs


def log_terms(folder):
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return set().union(*(row.keys() for row in rows if row["kind"] == "train"))


@pytest.mark.parametrize(
    ("method", "term"),
    [
        (EWC(lambda_=10.0, fisher_samples=3), "ewc"),
        (OnlineEWC(lambda_=10.0, gamma=0.9, fisher_samples=3), "online_ewc"),
        (LwF(), "lwf"),
        (ZSCL(reference_pairs=16, average_every=1), "zscl"),
    ],
    ids=lambda value: value if isinstance(value, str) else value.name,
)
def test_each_method_runs_a_stream_and_adds_its_term(tmp_path, method, term):
    stream = scenario(tasks=2)
    model = tiny_clip()
    # The token embedding (6.3M of the 7.2M weights) stays frozen: fast, and EWC's Fisher and
    # ZSCL's average must then leave it out.
    frozen = config(tmp_path, steps=1, lock_text=True, lock_text_unlocked_groups=3)
    averages = []  # ZSCL's weight average as each task ends (what its checkpoints hold)
    if isinstance(method, ZSCL):
        finish = method.after_task

        def recording(task, model_, run_):
            averages.append(dict(method.state_dict()["average"]))
            finish(task, model_, run_)

        method.after_task = recording
    result = run_continual(model, stream, method, frozen, tmp_path / "run", progress=False)
    assert len(result.matrix) == 2 and all(math.isfinite(a) for row in result.matrix for a in row)
    run = tmp_path / "run"
    folders = sorted(p for p in run.iterdir() if p.name.startswith("task_"))
    assert (term in log_terms(folders[0])) == (term == "zscl")  # only ZSCL distils on task 0
    assert term in log_terms(folders[1])
    saved = torch.load(run / "state_after_task.pt", weights_only=True)
    fresh = type(method)()
    fresh.load_state_dict(reloaded(saved["method"]))
    assert fresh.state_dict().keys() == method.state_dict().keys()
    if isinstance(method, ZSCL):
        # One step per task, averaged at step 0: each task ends at the mean of its start and
        # its trained weights (what the engine saved before after_task).
        key = "visual.proj"
        start = torch.load(run / "initial_model.pt", weights_only=True)[key]
        for folder in folders:
            trained = load_file(folder / "model.safetensors")[key]
            start = (start + trained) / 2
        assert torch.allclose(saved["model"][key], start, atol=1e-6)
        # The average (saved in every in-task checkpoint) leaves the frozen weights out.
        average = averages[1]
        assert "text.token_embedding.weight" not in average and key in average
    if isinstance(method, EWC):
        assert len(method.fishers) == 1  # EWC merges its tasks' pairs into one
        assert "text.token_embedding.weight" not in method.fishers[-1]
        assert "text.transformer.resblocks.0.attn.in_proj_weight" in method.fishers[-1]
        for name, value in fresh.fishers[-1].items():
            assert torch.equal(value.cpu(), method.fishers[-1][name].cpu())


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: EWC(lambda_=-1.0), "ewc: lambda_ must be"),
        (lambda: EWC(lambda_=float("nan")), "ewc: lambda_ must be"),
        (lambda: EWC(fisher_samples=0), "ewc: fisher_samples must be at least 1"),
        (lambda: EWC(fisher_samples=2.5), "ewc: fisher_samples must be an integer"),
        (lambda: OnlineEWC(gamma=1.5), "online_ewc: gamma must be in"),
        (lambda: OnlineEWC(lambda_=-2), "online_ewc: lambda_ must be"),
        (lambda: LwF(lambda_=-0.1), "lwf: lambda_ must be"),
        (lambda: LwF(temperature=0), "lwf: temperature must be"),
        (lambda: ZSCL(lambda_=float("inf")), "zscl: lambda_ must be"),
        (lambda: ZSCL(temperature=-1), "zscl: temperature must be"),
        (lambda: ZSCL(reference_pairs=0), "zscl: reference_pairs must be"),
        (lambda: ZSCL(reference_batch_size=True), "zscl: reference_batch_size must be"),
        (lambda: ZSCL(average_every=0), "zscl: average_every must be"),
    ],
)
def test_bad_arguments_name_the_method_and_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_registry_can_route_keyword_arguments():
    # build_method passes each part the keywords its constructor names: gamma is online EWC's.
    assert "gamma" not in inspect.signature(EWC).parameters
    assert {"lambda_", "gamma", "fisher_samples"} <= set(inspect.signature(OnlineEWC).parameters)
    assert (EWC.name, OnlineEWC.name, LwF.name, ZSCL.name) == ("ewc", "online_ewc", "lwf", "zscl")
    assert repr(OnlineEWC(gamma=0.5)) == (
        "OnlineEWC(lambda_=1000.0, gamma=0.5, fisher_samples=256, fisher='sample')"
    )
