"""MoE-Adapters: adapters that start as no-ops, noisy top-k gating, the balance loss, expert
freezing, the auto-selector, an end-to-end run, resuming and bad arguments."""

import pytest
import torch
from continual_helpers import small_config, tiny_clip
from torch.nn import functional as F

import mmcl
from mmcl.continual.evaluation import task_accuracy
from mmcl.continual.experiments import build_scenario
from mmcl.continual.heads import classification_objective
from mmcl.continual.methods.auto_selector import AutoSelector
from mmcl.continual.methods.base import Method
from mmcl.continual.methods.moe_adapters import MoEAdapters
from mmcl.continual.runner import STATE_FILE, ContinualRun, run_continual
from mmcl.nn.adapters import (
    Adapter,
    MixtureOfAdapters,
    NoisyTopKRouter,
    attach_parallel,
    cv_squared,
    load_balancing_loss,
    routings,
)

SCENARIO = build_scenario("scenes-cil", train_size=32, test_size=16)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The tiny model's operations are too small to gain from intra-op threads, and on a busy
    # two-core machine the threads' waiting made this module ten times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(tmp_path, **overrides):
    return small_config(tmp_path, lr=0.001, **overrides)


def model():
    return tiny_clip()


def adapted(tmp_path, method=None):
    network, method = model(), method or MoEAdapters()
    run = ContinualRun(SCENARIO, method, config(tmp_path), tmp_path, {})
    method.setup(network, run)
    return network, method, run


def inputs():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 32, 32, generator=generator)
    return images, mmcl.tokenize(["a red circle", "a square", "two shapes", "a blue triangle"])


# --- the nn pieces --------------------------------------------------------------------------


def test_zero_initialised_adapters_leave_the_model_exactly_unchanged(tmp_path):
    network, method, run = adapted(tmp_path)
    method.before_task(SCENARIO.tasks[0], network, run)  # router 0 active, adapters running
    for mixture in method.mixtures.values():  # routing that differs per sample
        torch.nn.init.normal_(mixture.routers[0].gate)
    reference = model()
    images, tokens = inputs()
    for training in (False, True):  # with and without the routers' noise
        network.train(training)
        reference.train(training)
        # Bit for bit, every token through the last block: the method runs every token
        # through the adapted towers' last blocks (the routers read token 0).
        for tower in (reference.visual, reference.text):
            tower.transformer.pooled_last_block = False
        with torch.no_grad():
            assert torch.equal(network.encode_image(images), reference.encode_image(images))
            assert torch.equal(network.encode_text(tokens), reference.encode_text(tokens))
    # The adapters did run: a non-zero up-projection changes the output.
    torch.nn.init.normal_(method.mixtures["visual.transformer.resblocks.1"].experts[0].up.weight)
    torch.nn.init.normal_(method.mixtures["visual.transformer.resblocks.1"].experts[1].up.weight)
    network.eval()
    with torch.no_grad():
        assert not torch.equal(network.encode_image(images), reference.encode_image(images))


def by_hand(network, images, labels, space, step):
    """Training step `step`'s loss parts, computed without the method: cross-entropy of the
    towers' features (every class prompted with its template `step`) and the balance loss, the
    mean over all adapted layers of each router's returned routing."""
    mixtures = [m for m in network.modules() if isinstance(m, MixtureOfAdapters)]
    prompts = [t[step].format(name) for name, t in zip(space.names, space.templates, strict=True)]
    tokens = mmcl.tokenize(prompts)
    torch.manual_seed(step)  # the same router noise as the objective's call
    with routings(mixtures) as seen:
        image = network.encode_image(images, normalize=True)
        text = network.encode_text(tokens, normalize=True)
    logits = network.logit_scale.exp() * image @ text.T
    classification = F.cross_entropy(logits, space.positions(labels))
    balance = torch.stack([load_balancing_loss(r.gates, r.load) for r in seen]).mean()
    return classification, balance


def test_the_loss_is_the_hand_sum_of_its_parts_and_nothing_leaks_between_steps(tmp_path):
    network, method, run = adapted(tmp_path, MoEAdapters(balance_weight=0.5))
    method.before_task(SCENARIO.tasks[0], network, run)
    for mixture in method.mixtures.values():  # routing that differs per sample
        torch.nn.init.normal_(mixture.routers[0].gate)
    network.train()
    attributes = {name: set(vars(m)) for name, m in method.mixtures.items()}
    space = run.training_space(0)
    objective = classification_objective(network, space, method)
    images, _ = inputs()
    for step, labels in enumerate(([0, 1, 1, 0], [1, 1, 0, 1])):  # two steps, other labels
        labels = torch.tensor([space.labels[k] for k in labels])
        torch.manual_seed(step)
        terms, _ = objective(network, images, labels)
        network.eval()  # an evaluation pass between steps changes nothing either
        with torch.no_grad():
            network.encode_image(images)
        network.train()
        classification, balance = by_hand(network, images, labels, space, step)
        assert set(terms) == {"classification", "moe_balance", "moe_balance_text"}
        torch.testing.assert_close(terms["classification"], classification)
        torch.testing.assert_close(terms["moe_balance"] + terms["moe_balance_text"], 0.5 * balance)
        torch.testing.assert_close(sum(terms.values()), classification + 0.5 * balance)
        assert all(set(vars(m)) == attributes[n] for n, m in method.mixtures.items())


def test_the_original_state_dict_keys_are_kept_and_only_adapter_keys_added(tmp_path):
    network, method, _ = adapted(tmp_path)
    reference = model().state_dict()
    state = network.state_dict()
    assert set(reference) <= set(state)
    assert all(torch.equal(state[k], v) for k, v in reference.items())
    extra = set(state) - set(reference)
    assert extra and all(".moe_adapter." in k for k in extra)
    blocks = {k.split(".moe_adapter.")[0] for k in extra}
    assert (
        blocks
        == set(method.mixtures)
        == {f"{tower}.transformer.resblocks.{i}" for tower in ("visual", "text") for i in (0, 1)}
    )
    # A checkpoint of the plain model still loads into the adapted one (adapters stay new).
    result = network.load_state_dict(reference, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) == extra
    # Only the last block of the image tower when asked.
    network, method, _ = adapted(tmp_path, MoEAdapters(layers=1, towers="visual"))
    assert list(method.mixtures) == ["visual.transformer.resblocks.1"]
    assert {k.split(".moe_adapter.")[0] for k in network.state_dict() if "moe_adapter" in k} == {
        "visual.transformer.resblocks.1"
    }


def test_noisy_top_k_gating_picks_exactly_k_experts_with_weights_summing_to_one():
    torch.manual_seed(0)
    router = NoisyTopKRouter(16, num_experts=5, top_k=2)
    torch.nn.init.normal_(router.gate)
    torch.nn.init.normal_(router.noise)
    x = torch.randn(64, 16)
    for training in (True, False):
        router.train(training)
        gates, chosen, load = router(x)
        assert ((gates > 0).sum(dim=1) == 2).all()
        assert torch.allclose(gates.sum(dim=1), torch.ones(64))
        assert torch.equal(gates.gather(1, chosen) > 0, torch.ones(64, 2, dtype=torch.bool))
        assert load.shape == (5,) and load.sum() > 0
    # Without noise: softmax over the two best clean logits, and the true load.
    logits = x @ router.gate
    top, index = logits.topk(2, dim=1)
    expected = torch.zeros(64, 5).scatter(1, index, torch.softmax(top, dim=1))
    gates, _, load = router(x)
    assert torch.allclose(gates, expected)
    assert torch.equal(load, (expected > 0).sum(0).float())
    # With noise (training only) the choice varies from call to call.
    router.train()
    assert not torch.equal(router(x).chosen, router(x).chosen)


def test_the_load_balancing_loss_is_zero_when_balanced_and_grows_when_collapsed():
    balanced = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])
    assert load_balancing_loss(balanced, (balanced > 0).sum(0).float()) == 0
    # Both samples on experts 0 and 1: importance (1, 1, 0, 0), load (2, 2, 0, 0); each has
    # CV^2 = unbiased variance / mean^2 = (1/3) / (1/4) = 4/3.
    pair = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    assert load_balancing_loss(pair, (pair > 0).sum(0).float()).item() == pytest.approx(8 / 3)
    # Everything on one expert: CV^2 = number of experts, for importance and load alike.
    single = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 3)
    assert load_balancing_loss(single, (single > 0).sum(0).float()).item() == pytest.approx(8)
    assert cv_squared(torch.tensor([5.0])) == 0


def test_a_mixture_returns_its_routing_and_keeps_no_loss_between_calls():
    mixture = MixtureOfAdapters(16, num_experts=4, top_k=2, bottleneck=4).train()
    x = torch.randn(8, 3, 16)
    attributes = set(vars(mixture))
    with routings([mixture]) as seen:
        mixture(x)
        mixture(x[:5])
    assert [len(r.gates) for r in seen] == [8, 5]  # one routing per forward, in call order
    gates, load = seen[0].gates, seen[0].load
    assert gates.requires_grad and load.requires_grad  # the loss trains the router
    assert ((gates > 0).sum(1) == 2).all() and torch.allclose(gates.sum(1), torch.ones(8))
    mixture(x)  # outside the block: nothing is collected, and nothing is kept on the module
    assert len(seen) == 2 and set(vars(mixture)) == attributes
    assert mixture.counts[0].sum() == (8 + 5 + 8) * 2


def test_every_trainable_expert_gets_a_gradient_and_frozen_ones_none():
    mixture = MixtureOfAdapters(8, num_experts=4, top_k=1, bottleneck=4, num_routers=2).train()
    mixture.freeze_experts([3])
    mixture.train_only(1)
    with torch.no_grad():  # router 1 sends every sample to expert 0
        mixture.routers[1].gate[:, 0] = 100.0
    with routings([mixture]) as seen:
        output = mixture(torch.ones(5, 2, 8))
    (output.sum() + load_balancing_loss(seen[0].gates, seen[0].load)).backward()
    assert mixture.counts[1].tolist() == [5, 0, 0, 0] and mixture.counts[0].sum() == 0
    for index in (0, 1, 2):  # unchosen but trainable: a (zero) gradient, as DDP needs
        assert all(p.grad is not None for p in mixture.experts[index].parameters())
    assert all(p.grad is None for p in mixture.experts[3].parameters())
    assert all(p.grad is None for p in mixture.routers[0].parameters())
    assert mixture.routers[1].gate.grad is not None


def test_adapter_pieces_check_their_arguments():
    with pytest.raises(ValueError, match="bottleneck"):
        Adapter(16, bottleneck=0)
    with pytest.raises(ValueError, match="activation"):
        Adapter(16, activation="tanh")
    with pytest.raises(ValueError, match="top_k"):
        NoisyTopKRouter(16, num_experts=2, top_k=3)
    mixture = MixtureOfAdapters(16, num_experts=2, top_k=1, num_routers=2)
    with pytest.raises(ValueError, match="out of range"):
        mixture.use(2)
    with pytest.raises(ValueError, match="out of range"):
        mixture.freeze_experts([5])
    parent = torch.nn.Sequential()
    parent.add_module("mlp", torch.nn.Identity())
    with pytest.raises(ValueError, match="no submodule"):
        attach_parallel(parent, "missing", mixture, "adapter")
    with pytest.raises(ValueError, match="already has"):
        attach_parallel(parent, "mlp", mixture, "mlp")


# --- the auto-selector ----------------------------------------------------------------------


def test_the_selector_routes_in_distribution_features_to_their_task_and_others_to_zero_shot():
    generator = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(3, 32, generator=generator), dim=1)

    def features(task, count):
        noise = 0.1 * torch.randn(count, 32, generator=generator)
        return F.normalize(centres[task] + noise, dim=1)

    selector = AutoSelector(steps=200, quantile=0.95)
    assert (selector.choose(features(0, 5)) == -1).all()  # nothing fitted: zero-shot
    selector.fit(0, features(0, 128), seed=0)
    selector.fit(1, features(1, 128), seed=1)
    for task in (0, 1):
        choice = selector.choose(features(task, 200))
        assert (choice == task).float().mean() > 0.8
        assert (choice == 1 - task).sum() == 0
    far = features(2, 200)  # a distribution no task has seen
    assert (selector.choose(far) == -1).float().mean() > 0.95
    restored = AutoSelector()
    restored.load_state_dict(selector.state_dict())
    probe = torch.cat([features(0, 20), features(1, 20), far[:20]])
    assert torch.equal(restored.choose(probe), selector.choose(probe))


# --- a whole run ----------------------------------------------------------------------------


class Recording(MoEAdapters):
    """Records, per task, what training changed and what the freezing decided."""

    def __init__(self, **arguments):
        super().__init__(**arguments)
        self.changed, self.allowed, self.newly_frozen = [], [], []

    def before_task(self, task, model, run):
        super().before_task(task, model, run)
        self.before = {k: v.clone() for k, v in model.state_dict().items() if "moe_adapter" in k}
        self.frozen_before = {name: set(m.frozen) for name, m in self.mixtures.items()}

    def after_task(self, task, model, run):
        after = {k: v for k, v in model.state_dict().items() if "moe_adapter" in k}
        changed = {k for k, v in after.items() if not torch.equal(v, self.before[k])}
        self.changed.append(changed)
        allowed = set()  # this task's router and the experts not frozen when it started
        for name in self.mixtures:
            allowed.add(f"{name}.moe_adapter.routers.{task.index}")
            allowed.update(
                f"{name}.moe_adapter.experts.{e}"
                for e in range(self.num_experts)
                if e not in self.frozen_before[name]
            )
        self.allowed.append(allowed)
        super().after_task(task, model, run)
        self.newly_frozen.append(
            {
                name: (
                    set(m.frozen) - self.frozen_before[name],
                    m.counts[task.index].clone(),
                    self.frozen_before[name],
                )
                for name, m in self.mixtures.items()
            }
        )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("moe")
    method = Recording()
    network = model()
    result = run_continual(
        network, SCENARIO, method, config(tmp_path), tmp_path / "run", progress=False
    )
    return network, method, result, tmp_path


def test_a_run_fills_the_matrix_and_starts_from_the_zero_shot_model(finished):
    _, _, result, tmp_path = finished
    assert len(result.matrix) == 4 and all(len(row) == 4 for row in result.matrix)
    assert all(0.0 <= a <= 1.0 for row in result.matrix for a in row)
    zero_shot, plain = model(), Method()
    run = ContinualRun(SCENARIO, plain, config(tmp_path), tmp_path, {})
    assert result.initial == [
        task_accuracy(zero_shot, plain, SCENARIO, j, -1, run) for j in range(4)
    ]


def test_training_changes_only_adapters_and_routers_and_never_frozen_experts(finished):
    network, method, _, _ = finished
    # The backbone is bitwise the model the run started from.
    for key, value in model().state_dict().items():
        assert torch.equal(network.state_dict()[key], value), key
    for task, (changed, allowed) in enumerate(zip(method.changed, method.allowed, strict=True)):
        assert changed, f"task {task} trained nothing"
        assert any(".experts." in k for k in changed), f"task {task} found no expert to train"
        outside = {k for k in changed if not any(k.startswith(a + ".") for a in allowed)}
        assert not outside, f"task {task} changed frozen experts or other tasks' routers: {outside}"
    # After each task every layer freezes its top_k most used experts of that task.
    for task, layers in enumerate(method.newly_frozen):
        for name, (new, counts, before) in layers.items():
            ranked = sorted(range(len(counts)), key=lambda e: (-int(counts[e]), e))
            most_used = {e for e in ranked[: method.top_k] if counts[e] > 0}
            assert new == most_used - before, (task, name)
            assert counts.sum() > 0
    assert all(mixture.frozen for mixture in method.mixtures.values())


def test_a_fresh_model_and_method_resume_from_the_saved_state(finished, tmp_path):
    network, method, _, run_dir = finished
    saved = torch.load(run_dir / "run" / STATE_FILE, weights_only=True)
    images = torch.stack([SCENARIO.tasks[t].test[i][0] for t in range(4) for i in range(4)])
    run = ContinualRun(SCENARIO, method, config(tmp_path), tmp_path, {})
    space = run.evaluation_space(3, 3)
    expected = method.predict(network, images, space, run)
    with torch.no_grad():  # after a task the adapters are off: the zero-shot features
        choice = method.selector.choose(network.eval().encode_image(images, normalize=True))
    assert (choice >= 0).any()  # some images go through a task's router
    for state_first in (False, True):  # the method's state may also come before setup
        fresh_model, fresh = model(), MoEAdapters()
        fresh_run = ContinualRun(SCENARIO, fresh, config(tmp_path), tmp_path, {})
        if state_first:
            fresh.load_state_dict(saved["method"])
        fresh.setup(fresh_model, fresh_run)
        fresh_model.load_state_dict(saved["model"])  # strict: the adapters exist already
        if not state_first:
            fresh.load_state_dict(saved["method"])
        assert {n: m.frozen for n, m in fresh.mixtures.items()} == {
            n: m.frozen for n, m in method.mixtures.items()
        }
        assert torch.equal(fresh.predict(fresh_model, images, space, fresh_run), expected)


def test_experts_are_sized_so_every_task_has_its_own_to_train(tmp_path):
    network, method, _ = adapted(tmp_path)
    tasks = len(SCENARIO)
    assert method.num_experts == method.top_k * tasks  # one top-k set frozen per task
    assert all(len(m.experts) == method.num_experts for m in method.mixtures.values())
    too_few = MoEAdapters(num_experts=method.top_k * (tasks - 1))
    with pytest.warns(UserWarning, match=f"from task {tasks} of {tasks} on"):
        too_few.setup(model(), ContinualRun(SCENARIO, too_few, config(tmp_path), tmp_path, {}))


# --- bad arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"num_experts": 0}, "num_experts"),
        ({"num_experts": True}, "num_experts"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 5, "num_experts": 4}, "exceeds num_experts"),
        ({"bottleneck": 0}, "bottleneck"),
        ({"layers": 0}, "layers"),
        ({"towers": ("visual", "audio")}, "towers"),
        ({"towers": ()}, "towers"),
        ({"adapter_scale": 0.0}, "adapter_scale"),
        ({"adapter_scale": "0.1"}, "must be a number"),
        ({"balance_weight": -1.0}, "balance_weight"),
        ({"frozen_per_task": 5, "num_experts": 4}, "frozen_per_task"),
        ({"selector_steps": -1}, "selector_steps"),
        ({"selector_quantile": 1.5}, "selector_quantile"),
        ({"selector_samples": 0}, "selector_samples"),
    ],
)
def test_bad_arguments_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        MoEAdapters(**arguments)


def test_setup_refuses_models_it_cannot_adapt(tmp_path):
    with pytest.raises(ValueError, match="layers=3"):
        adapted(tmp_path, MoEAdapters(layers=3))
    network, method, run = adapted(tmp_path)
    with pytest.raises(ValueError, match="already carries"):
        MoEAdapters().setup(network, run)
    torch.manual_seed(0)
    resnet = mmcl.create_model("tiny-rn")
    with pytest.raises(ValueError, match="no transformer blocks"):
        MoEAdapters().setup(resnet, run)
    MoEAdapters(towers="text").setup(resnet, run)  # its text tower is a transformer
