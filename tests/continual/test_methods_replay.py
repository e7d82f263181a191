"""Experience replay (reservoir buffer) and iCaRL (herding, nearest mean of exemplars,
distillation), checked against independent references and run through the continual runner."""

import doctest
import math

import pytest
import torch
from continual_helpers import small_config, tiny_clip
from torch.nn import functional as F

from mmcl.continual.classes import evaluation_space
from mmcl.continual.experiments import build_scenario
from mmcl.continual.methods import icarl as icarl_module
from mmcl.continual.methods import replay as replay_module
from mmcl.continual.methods.composite import Composite
from mmcl.continual.methods.icarl import ICaRL, herding
from mmcl.continual.methods.replay import ExperienceReplay, ReservoirBuffer
from mmcl.continual.methods.wise_ft import WiseFT
from mmcl.continual.runner import ContinualRun, run_continual
from mmcl.train.objectives import ClassificationObjective


def scenario(train_size=32):
    return build_scenario("scenes-cil", train_size=train_size, test_size=16)


def config(tmp_path, **overrides):
    return small_config(tmp_path, lr=0.0001, **overrides)


def model():
    return tiny_clip().eval()


def started_run(method, tmp_path, train_size=32):
    """A run as the runner sets it up, without training: hooks can be called by hand."""
    run = ContinualRun(scenario(train_size), method, config(tmp_path), tmp_path, {})
    method.setup(None, run)
    return run


def items(n, task=0):
    return [(task, i, i % 3) for i in range(n)]


def binomial_bound(trials, p, sigmas=4.5):
    """Allowed |count - trials * p|: 4.5 standard deviations (a false alarm is below 1e-5)."""
    return sigmas * math.sqrt(trials * p * (1 - p))


# --- reservoir sampling --------------------------------------------------------------------


def test_reservoir_keeps_every_item_with_equal_probability():
    # Algorithm R keeps a uniform sample: P(item kept) = k / n for every item, and a pair is
    # kept together with probability k (k - 1) / (n (n - 1)). Items arrive over several calls
    # (tasks) to check that the draws stay correct across calls.
    n, k, trials = 20, 5, 3000
    chunks = [(0, 7), (7, 8), (8, 20)]
    counts = torch.zeros(n)
    together = 0
    for seed in range(trials):
        buffer = ReservoirBuffer(k, seed=seed)
        for start, stop in chunks:
            buffer.add([(0, i, 0) for i in range(start, stop)])
        kept = {index for _, index, _ in buffer.items}
        assert len(kept) == k
        counts[list(kept)] += 1
        together += {0, n - 1} <= kept
    p = k / n
    assert (counts - trials * p).abs().max() <= binomial_bound(trials, p)
    p_pair = k * (k - 1) / (n * (n - 1))
    assert abs(together - trials * p_pair) <= binomial_bound(trials, p_pair)


def test_reservoir_never_exceeds_its_size_and_holds_offered_items():
    buffer = ReservoirBuffer(6, seed=3)
    offered = []
    for task, size in enumerate([4, 1, 9, 30]):
        chunk = items(size, task)
        buffer.add(chunk)
        offered += chunk
        assert len(buffer) == min(len(offered), 6) and buffer.seen == len(offered)
        assert set(buffer.items) <= set(offered) and len(set(buffer.items)) == len(buffer)


def test_reservoir_is_exactly_reproducible_and_resumes_from_its_state():
    def filled(seed):
        buffer = ReservoirBuffer(5, seed=seed)
        buffer.add(items(12, 0))
        buffer.add(items(12, 1))
        return buffer

    assert filled(7).items == filled(7).items
    assert filled(7).items != filled(8).items
    half = ReservoirBuffer(5, seed=7)
    half.add(items(12, 0))
    restored = ReservoirBuffer(5)
    restored.load_state_dict(half.state_dict())
    restored.add(items(12, 1))
    assert restored.items == filled(7).items and restored.seen == 24


def test_empty_buffers_and_memories_are_errors():
    with pytest.raises(ValueError, match="er: buffer_size must be at least 1"):
        ExperienceReplay(buffer_size=0)
    with pytest.raises(ValueError, match="er: buffer_size must be an integer"):
        ExperienceReplay(buffer_size=2.5)
    with pytest.raises(ValueError, match="capacity of at least 1"):
        ReservoirBuffer(0)
    with pytest.raises(ValueError, match="icarl: memory_size must be at least 1"):
        ICaRL(memory_size=0)
    with pytest.raises(ValueError, match="icarl: distill_weight"):
        ICaRL(distill_weight=-1.0)


def test_icarl_memory_too_small_for_the_stream_fails_before_training(tmp_path):
    with pytest.raises(
        ValueError, match="memory_size 7 cannot hold one exemplar for each of the 8"
    ):
        run_continual(model(), scenario(), ICaRL(memory_size=7), config(tmp_path), tmp_path / "r")
    assert not list((tmp_path / "r").glob("task_*"))


def test_er_trains_on_the_task_plus_an_equal_share_of_replay(tmp_path):
    method = ExperienceReplay(buffer_size=5)
    run = started_run(method, tmp_path)
    tasks = run.scenario.tasks
    assert len(method.train_data(tasks[0], run)) == 8  # nothing to replay yet
    method.after_task(tasks[0], None, run)
    data = method.train_data(tasks[1], run)
    current = run.stream_data(1)
    assert len(data) == 2 * len(current)
    assert [data[i][1] for i in range(8)] == current.targets
    replay = data.datasets[1]
    # 8 replayed items cycle through the 5 stored ones: 3 are replayed twice, 2 once.
    uses = [replay.references.count((t, i)) for t, i, _ in method.buffer.items]
    assert sorted(uses) == [1, 1, 2, 2, 2]
    past = run.stream_data(0)
    for k in range(len(replay)):
        task, index = replay.references[k]
        image, label = replay[k]
        assert task == 0 and label == past.targets[index] == replay.targets[k]
        assert torch.equal(image, past[index][0])


# --- herding -------------------------------------------------------------------------------


def test_herding_on_a_hand_checked_toy():
    # Mean 3.2. Pick 1: the closest point, 3. Pick 2: (3 + x) / 2 closest to 3.2 -> x = 2.
    # Pick 3: (5 + x) / 3 -> x = 1 (mean 2.0 beats 1.67 and 5.0). Pick 4: (6 + x) / 4 -> 10.
    points = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    assert herding(points, 5) == [3, 2, 1, 4, 0]
    assert herding(points, 2) == [3, 2]
    square = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0], [1.5, 2.5]])
    assert herding(square, 1) == [4]  # the point closest to the mean (1.9, 2.1)
    with pytest.raises(ValueError):
        herding(points, 6)


def test_herding_means_approach_the_true_mean_faster_than_random_subsets():
    generator = torch.Generator().manual_seed(0)
    points = F.normalize(torch.randn(200, 8, generator=generator), dim=1)
    mean = points.mean(0)
    order = herding(points, 200)
    assert sorted(order) == list(range(200))
    errors = [float((points[order[:k]].mean(0) - mean).norm()) for k in range(1, 201)]
    assert errors[-1] < 1e-6
    random_errors = [
        float((points[torch.randperm(200, generator=generator)[:20]].mean(0) - mean).norm())
        for _ in range(200)
    ]
    # A random subset of 20 misses by about sqrt(1/20 * (1 - 20/200)) ~ 0.2; herding by far
    # less, and less than the best of 200 random subsets.
    assert errors[19] < min(random_errors) and errors[19] < 0.25 * sorted(random_errors)[100]
    assert max(errors[20:]) < errors[0]


# --- iCaRL memory and nearest mean of exemplars --------------------------------------------


def features_of(net, run, references):
    images = torch.stack([run.stream_data(t)[i][0] for t, i in references])
    with torch.no_grad():
        return net.encode_image(images, normalize=True).float()


def test_icarl_keeps_memory_size_over_classes_seen_exemplars_chosen_by_herding(tmp_path):
    method = ICaRL(memory_size=8)
    run = started_run(method, tmp_path, train_size=64)
    net = model()
    previous = {}
    for task in run.scenario.tasks:
        method.after_task(task, net, run)
        seen = 2 * (task.index + 1)
        assert sum(len(e) for e in method.memory.values()) <= 8
        for label, exemplars in method.memory.items():
            if label in task.class_ids:
                targets = run.stream_data(task.index).targets
                available = [i for i, y in enumerate(targets) if y == label]
                assert len(exemplars) == min(8 // seen, len(available))
                # The same choice as herding the class's items by hand.
                mine = [(task.index, i) for i in available]
                order = herding(features_of(net, run, mine), len(exemplars))
                assert exemplars == [mine[k] for k in order]
            else:
                assert exemplars == previous[label][: 8 // seen]  # reduced, priority kept
            assert all(run.stream_data(t).targets[i] == label for t, i in exemplars)
        previous = {label: list(e) for label, e in method.memory.items()}
    assert len(method.memory) == 8


def test_nearest_mean_of_exemplars_matches_a_hand_computation(tmp_path):
    method = ICaRL(memory_size=16)
    run = started_run(method, tmp_path, train_size=64)
    net = model()
    tasks = run.scenario.tasks
    assert method.predict(net, torch.zeros(1, 3, 32, 32), run.training_space(0), run) is None
    for task in tasks[:2]:
        method.after_task(task, net, run)
    images = torch.stack(
        [run.stream_data(2, "test")[i][0] for i in range(4)]
        + [run.stream_data(0, "test")[i][0] for i in range(4)]
    )
    with torch.no_grad():
        features = net.encode_image(images, normalize=True).float()
        space = evaluation_space(run.scenario, 0, 1)  # classes of tasks 0 and 1: all stored
        scores = method.predict(net, images, space, run)
        means = torch.stack(
            [
                F.normalize(features_of(net, run, method.memory[y]).mean(0), dim=0)
                for y in space.labels
            ]
        )
    assert scores.shape == (8, 4)
    assert torch.equal(scores.argmax(1), torch.cdist(features, means).argmin(1))
    assert torch.allclose(scores, features @ means.T, atol=1e-5)
    # Task 2's classes have no exemplars yet: their columns are the zero-shot classifier's.
    wider = evaluation_space(run.scenario, 2, 1)
    with torch.no_grad():
        scores = method.predict(net, images, wider, run)
        text = wider.classifier(net).float()
    future = [k for k, y in enumerate(wider.labels) if y not in method.memory]
    assert len(future) == 2
    assert torch.allclose(scores[:, future], features @ text[:, future], atol=1e-5)
    assert torch.allclose(scores[:, :4], features @ means.T, atol=1e-5)
    # Prototypes are cached per evaluation, but follow the model when its weights change.
    with torch.no_grad():
        for parameter in net.visual.parameters():
            parameter.mul_(1.5)
        scores = method.predict(net, images, space, run)
        features = net.encode_image(images, normalize=True).float()
        means = torch.stack(
            [
                F.normalize(features_of(net, run, method.memory[y]).mean(0), dim=0)
                for y in space.labels
            ]
        )
    assert torch.allclose(scores, features @ means.T, atol=1e-5)


def test_distillation_follows_the_objectives_template_and_starts_at_its_minimum(tmp_path):
    method = ICaRL(memory_size=8)
    run = started_run(method, tmp_path)
    net = model()
    task = run.scenario.tasks[1]
    run.task_index = 1
    method.before_task(task, net, run)
    space = run.training_space(1)
    objective = ClassificationObjective(space.names, space.templates, space.labels)
    images, labels = zip(*[run.stream_data(1)[i] for i in range(4)], strict=True)
    batch = (torch.stack(images), torch.tensor(labels))
    old = space.positions(torch.tensor(run.training_space(0).labels))
    for _ in range(3):  # three steps, three different prompt templates
        _, outputs = objective(net, *batch)
        logits = outputs["logits"].detach().requires_grad_(True)
        loss = method.extra_losses(net, batch, {**outputs, "logits": logits})["distillation"]
        # The student is still the teacher: the loss is the targets' own entropy, at its minimum.
        centred = logits[:, old] - logits[:, old].mean(1, keepdim=True)
        entropy = F.binary_cross_entropy_with_logits(centred, torch.sigmoid(centred))
        assert torch.allclose(loss, entropy, atol=1e-5)
        (gradient,) = torch.autograd.grad(loss, logits)
        assert gradient.abs().max() < 1e-6
    method.after_task(task, net, run)
    assert method._teacher is None  # the snapshot is freed with the task


# --- state and end-to-end runs -------------------------------------------------------------


def assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


def test_state_dicts_round_trip_through_a_weights_only_checkpoint(tmp_path):
    er, icarl = ExperienceReplay(buffer_size=5), ICaRL(memory_size=8)
    run = started_run(er, tmp_path)
    icarl.setup(None, run)
    net = model()
    for task in run.scenario.tasks[:2]:
        er.after_task(task, net, run)
        icarl.after_task(task, net, run)
    for method, fresh in ((er, ExperienceReplay(buffer_size=5)), (icarl, ICaRL(memory_size=8))):
        torch.save(method.state_dict(), tmp_path / "state.pt")
        fresh.setup(None, run)
        fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
        assert_same(method.state_dict(), fresh.state_dict())
        task = run.scenario.tasks[2]
        a, b = method.train_data(task, run), fresh.train_data(task, run)
        assert a.datasets[1].references == b.datasets[1].references
    images = torch.stack([run.stream_data(0, "test")[i][0] for i in range(3)])
    space = evaluation_space(run.scenario, 0, 3)
    with torch.no_grad():
        assert torch.equal(
            icarl.predict(net, images, space, run), fresh.predict(net, images, space, run)
        )
    with pytest.raises(ValueError, match="same buffer size"):
        ExperienceReplay(buffer_size=6).load_state_dict(er.state_dict())


@pytest.mark.parametrize(
    "make",
    [
        lambda: ExperienceReplay(buffer_size=5),
        # iCaRL runs inside a composite: every hook reaches it, and composition is checked too.
        lambda: Composite([WiseFT(alpha=0.5), ICaRL(memory_size=8)]),
    ],
    ids=["er", "wise_ft+icarl"],
)
def test_runs_end_to_end_through_the_continual_runner(tmp_path, make):
    method = make()
    sizes, losses = [], []
    original_data = method.train_data

    def train_data(task, run):
        data = original_data(task, run)
        sizes.append(len(data))
        return data

    original_losses = method.extra_losses if hasattr(method, "extra_losses") else None

    def extra_losses(net, batch, outputs):
        terms = original_losses(net, batch, outputs)
        losses.append(set(terms))
        assert all(torch.isfinite(v) for v in terms.values())
        return terms

    method.train_data = train_data
    if original_losses is not None:
        method.extra_losses = extra_losses
    result = run_continual(
        model(), scenario(), method, config(tmp_path), tmp_path / "run", progress=False
    )
    assert len(result.matrix) == 4 and all(len(row) == 4 for row in result.matrix)
    assert all(0.0 <= a <= 1.0 for row in result.matrix for a in row)
    state = torch.load(tmp_path / "run" / "state_after_task.pt", weights_only=True)["method"]
    if isinstance(method, ExperienceReplay):
        assert sizes == [8, 16, 16, 16]  # the task, then the task plus as much replay
        assert state["buffer"]["seen"] == 32 and len(state["buffer"]["items"]) == 5
    else:
        icarl = method.parts[1]
        # The task plus every exemplar: 8 // 2 (up to 4 of 4 per class), 8 // 4, 8 // 6.
        assert sizes == [8, 8 + 8, 8 + 8, 8 + 6]
        assert losses[:2] == [set(), set()] and losses[2:] == [{"distillation"}] * 6
        assert sorted(len(e) for e in icarl.memory.values()) == [1] * 8


@pytest.mark.parametrize("module", [replay_module, icarl_module], ids=["replay", "icarl"])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0
