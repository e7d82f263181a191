"""Prompt methods: CoOp's learned text context and L2P's prompt pool, and the towers' entry
points they use (text prefix, visual prompts)."""

import math

import pytest
import torch
from continual_helpers import small_config, small_scenario
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

import mmcl
from mmcl.continual.methods.coop import CoOp, class_tokens
from mmcl.continual.methods.l2p import L2P
from mmcl.continual.runner import ContinualRun, run_continual
from mmcl.continual.scenarios import domain_incremental
from mmcl.nn.prompts import PromptPool, TextContext


def scenario():
    return small_scenario()


def config(tmp_path, **overrides):
    return small_config(tmp_path, lr=0.01, **overrides)


def model(name="tiny-vit", seed=0):
    torch.manual_seed(seed)
    return mmcl.create_model(name).eval()


def run_for(method, tmp_path, stream=None):
    return ContinualRun(stream or scenario(), method, config(tmp_path), tmp_path, {})


def inputs():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 32, 32, generator=generator)
    texts = mmcl.tokenize(["a photo of a ring.", "a hot air balloon", "x"])
    return images, texts


def outputs(net):
    images, texts = inputs()
    with torch.no_grad():
        return net(images, texts)


def backbone(net):
    return {k: v.clone() for k, v in net.state_dict().items() if not k.startswith(("coop", "l2p"))}


def small_l2p():
    return L2P(pool_size=4, prompt_length=2, top_n=2)


# --- the towers' entry points -------------------------------------------------------------------


def test_default_path_is_unchanged_by_setup_and_training_hooks(tmp_path):
    fresh, prompted = model(), model()
    stream = scenario()
    for method in (CoOp(), small_l2p()):
        run = run_for(method, tmp_path, stream)
        method.setup(prompted, run)
        method.before_task(stream.tasks[0], prompted, run)
        method.after_task(stream.tasks[0], prompted, run)
    expected, got = outputs(fresh), outputs(prompted)
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b
    images, texts = inputs()
    with torch.no_grad():
        assert torch.equal(prompted.text(texts, prefix_embeddings=None), fresh.text(texts))
        assert torch.equal(prompted.visual(images, prompt_embeddings=None), fresh.visual(images))


def test_context_from_a_phrase_reproduces_the_written_prompt():
    net = model()
    names = ["ring", "hot air balloon", "tyrannosaurus rex skeleton"]  # different lengths
    phrase = mmcl.get_tokenizer().encode("a photo of a")
    context = TextContext(4, 128, init=net.text.token_embedding.weight[phrase])
    with torch.no_grad():
        learned = net.text(class_tokens(names), prefix_embeddings=context())
        written = net.text(mmcl.tokenize([f"a photo of a {name}." for name in names]))
    torch.testing.assert_close(learned, written, rtol=0, atol=1e-5)


def test_coop_starts_as_the_zero_shot_prompt_of_its_phrase(tmp_path):
    net, coop = model(), CoOp("a photo of a")
    space = run_for(coop, tmp_path).training_space(3)
    coop.setup(net, run_for(coop, tmp_path))
    assert coop.n_ctx == 4
    with torch.no_grad():
        learned = coop.text_features(net, space.names, space.labels)
        prompts = mmcl.tokenize([f"a photo of a {name}." for name in space.names])
        written = net.encode_text(prompts, normalize=True)
    torch.testing.assert_close(learned, written, rtol=0, atol=1e-5)


def test_text_prefix_batches_and_limits():
    net = model()
    tokens = class_tokens(["ring", "square"])
    prefix = torch.randn(2, 3, 128)
    with torch.no_grad():
        both = net.text(tokens, prefix_embeddings=prefix)
        first = net.text(tokens[:1], prefix_embeddings=prefix[0])
    torch.testing.assert_close(both[:1], first, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="context length"):
        net.text(tokens, prefix_embeddings=torch.zeros(80, 128))
    with pytest.raises(ValueError, match="prefix_embeddings"):
        net.text(tokens, prefix_embeddings=torch.zeros(3, 64))
    with pytest.raises(ValueError, match="prompt_embeddings"):
        net.visual(torch.zeros(2, 3, 32, 32), prompt_embeddings=torch.zeros(3, 2, 128))


# --- the prompt pool ----------------------------------------------------------------------------


def toy_pool():
    pool = PromptPool(pool_size=4, prompt_length=2, width=3, key_dim=2, top_n=2)
    with torch.no_grad():
        # Key 0 is long but off-axis: a dot product would rank it first, cosine does not.
        pool.keys.copy_(torch.tensor([[10.0, 1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
        pool.prompt_embeddings.copy_(torch.arange(24.0).view(4, 2, 3))
    return pool


def test_pool_selects_the_top_n_keys_by_cosine():
    pool = toy_pool()
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-2.0, -0.1]])
    assert pool.select(query).tolist() == [[1, 0], [2, 0], [3, 2]]
    prompts = pool.prompts(pool.select(query))
    assert prompts.shape == (3, 4, 3)
    assert torch.equal(
        prompts[0], torch.cat([pool.prompt_embeddings[1], pool.prompt_embeddings[0]])
    )


def test_matching_loss_by_hand_trains_only_the_keys():
    pool = toy_pool()
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    prompts, loss = pool(query)
    cos_long = 10 / math.sqrt(101)  # key 0 against the x axis
    by_hand = ((1 - 1) + (1 - cos_long) + (1 - 1) + (1 - 1 / math.sqrt(101))) / 2
    assert loss.item() == pytest.approx(by_hand, abs=1e-6)
    loss.backward()
    assert pool.keys.grad is not None and pool.keys.grad[0].abs().sum() > 0
    assert pool.keys.grad[3].abs().sum() == 0  # never selected
    assert pool.prompt_embeddings.grad is None and query.grad is None


# --- CoOp ---------------------------------------------------------------------------------------


def test_coop_hook_answers_class_prompts_with_the_learned_context(tmp_path):
    net, coop, stream = model(), CoOp(per_task=True), scenario()
    run = run_for(coop, tmp_path, stream)
    coop.setup(net, run)
    with torch.no_grad():
        for context in net.coop_contexts:
            context.embeddings.normal_()
    coop.before_task(stream.tasks[1], net, run)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable == ["coop_contexts.1.embeddings"]
    # Task 1's objective prompts task 0's "ring" and task 1's "cross" with any template.
    prompts = mmcl.tokenize(["a drawing of a ring.", "a cross shape."])
    labels = [4, 5]  # stream labels of ring (task 0) and cross (task 1)
    plain = mmcl.tokenize(["a red circle"])
    with torch.no_grad():
        hooked = net.encode_text(prompts, normalize=True)
        expected = coop.text_features(net, ["ring", "cross"], labels)
        passed = net.encode_text(plain)
        with pytest.raises(ValueError, match="mixes"):
            net.encode_text(torch.cat([prompts, plain]))
    torch.testing.assert_close(hooked, expected, rtol=0, atol=1e-6)
    coop.after_task(stream.tasks[1], net, run)
    with torch.no_grad():
        assert torch.equal(passed, net.encode_text(plain))
        assert not torch.allclose(net.encode_text(prompts, normalize=True), expected)


@pytest.mark.parametrize("per_task", [False, True])
def test_coop_run_trains_only_its_contexts_and_round_trips(tmp_path, per_task):
    net, coop, stream = model(), CoOp(per_task=per_task), scenario()
    initial = backbone(net)
    result = run_continual(net, stream, coop, config(tmp_path), tmp_path / "run", progress=False)
    assert len(result.matrix) == 4 and all(len(row) == 4 for row in result.matrix)
    assert all(torch.equal(initial[k], v) for k, v in backbone(net).items())
    assert torch.equal(outputs(net)[0], outputs(model())[0])  # hooks gone: plain model again
    phrase = model().text.token_embedding.weight[coop.phrase_ids]
    contexts = net.coop_contexts
    assert len(contexts) == (4 if per_task else 1)
    assert all(not torch.equal(c.embeddings, phrase) for c in contexts)
    if per_task:  # task 0's context was frozen after task 0
        first = load_file(tmp_path / "run" / "task_00_task-0" / "model.safetensors")
        assert torch.equal(first["coop_contexts.0.embeddings"], contexts[0].embeddings)
    # Round trip: a new model and method get the learned contexts from the state dicts.
    images, _ = inputs()
    space = run_for(coop, tmp_path, stream).evaluation_space(0, 3)
    with torch.no_grad():
        before = coop.predict(net, images, space, None)
    other, again = model(seed=1), CoOp(per_task=per_task)
    again.setup(other, run_for(again, tmp_path, stream))
    other.load_state_dict(net.state_dict())
    again.load_state_dict(coop.state_dict())
    with torch.no_grad():
        assert torch.equal(again.predict(other, images, space, None), before)
    resumed = run_continual(
        model(seed=2),
        stream,
        CoOp(per_task=per_task),
        config(tmp_path),
        tmp_path / "run",
        resume=True,
        progress=False,
    )
    assert resumed.matrix == result.matrix


# --- L2P ----------------------------------------------------------------------------------------


def test_l2p_hook_prompts_images_and_reports_the_matching_loss(tmp_path):
    net, l2p, stream = model(), small_l2p(), scenario()
    run = run_for(l2p, tmp_path, stream)
    l2p.setup(net, run)
    l2p.before_task(stream.tasks[0], net, run)
    assert [n for n, p in net.named_parameters() if p.requires_grad] == [
        "l2p_pool.prompt_embeddings",
        "l2p_pool.keys",
    ]
    images, _ = inputs()
    hooked = net.encode_image(images)
    terms = l2p.extra_losses(net, None, None)
    with torch.no_grad():
        query = net.visual(images, prompt_embeddings=None)
        plain = model().encode_image(images)
        chosen = net.l2p_pool.select(query)
        prompts = net.l2p_pool.prompts(chosen)
        expected_loss = 0.1 * net.l2p_pool.matching_loss(query, chosen)
        assert torch.equal(query, plain)  # the query is the frozen, unprompted feature
        assert torch.equal(hooked, net.visual(images, prompt_embeddings=prompts))
        assert torch.equal(hooked, l2p.image_features(net, images))
        assert not torch.allclose(hooked, plain)
    assert set(terms) == {"key_matching"} and terms["key_matching"].requires_grad
    torch.testing.assert_close(terms["key_matching"], expected_loss)
    assert l2p.extra_losses(net, None, None) == {}  # one loss per prompted batch
    l2p.after_task(stream.tasks[0], net, run)
    with torch.no_grad():
        assert torch.equal(net.encode_image(images), plain)


def test_l2p_run_trains_only_its_pool_and_round_trips(tmp_path):
    net, l2p, stream = model(), small_l2p(), scenario()
    initial = backbone(net)
    result = run_continual(net, stream, l2p, config(tmp_path), tmp_path / "run", progress=False)
    assert len(result.matrix) == 4 and all(len(row) == 4 for row in result.matrix)
    assert all(torch.equal(initial[k], v) for k, v in backbone(net).items())
    assert torch.equal(outputs(net)[0], outputs(model())[0])
    first = load_file(tmp_path / "run" / "task_00_task-0" / "model.safetensors")
    assert not torch.equal(first["l2p_pool.keys"], net.l2p_pool.keys)  # later tasks trained it
    assert not torch.equal(first["l2p_pool.prompt_embeddings"], net.l2p_pool.prompt_embeddings)
    images, _ = inputs()
    space = run_for(l2p, tmp_path, stream).evaluation_space(0, 3)
    with torch.no_grad():
        before = l2p.predict(net, images, space, None)
    other, again = model(seed=1), small_l2p()
    again.setup(other, run_for(again, tmp_path, stream))
    other.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(again.predict(other, images, space, None), before)


# --- bad arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: CoOp(n_ctx=0),
        lambda: CoOp(n_ctx=2.5),
        lambda: CoOp(n_ctx=3),  # "a photo of a" is 4 tokens
        lambda: CoOp(context_init=""),
        lambda: CoOp(context_init=7),
        lambda: CoOp(per_task="yes"),
        lambda: L2P(pool_size=0),
        lambda: L2P(prompt_length=True),
        lambda: L2P(top_n=11),
        lambda: L2P(key_weight=-1.0),
        lambda: L2P(key_weight=float("nan")),
        lambda: TextContext(2, 8, init=torch.zeros(3, 8)),
        lambda: TextContext(0, 8),
        lambda: PromptPool(4, 2, 8, 3, top_n=5),
        lambda: toy_pool().select(torch.zeros(2, 3)),
    ],
)
def test_bad_arguments_are_rejected(build):
    with pytest.raises(ValueError):
        build()


def test_methods_reject_models_and_streams_they_cannot_prompt(tmp_path):
    with pytest.raises(ValueError, match="ViT"):
        small_l2p().setup(model("tiny-rn"), run_for(small_l2p(), tmp_path))
    with pytest.raises(ValueError, match="context length"):
        CoOp(context_init=None, n_ctx=75).setup(model(), run_for(CoOp(), tmp_path))
    data = TensorDataset(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
    domains = domain_incremental([("a", data, data), ("b", data, data)], ["x", "y"], ["{}"])
    with pytest.raises(ValueError, match="domain-incremental"):
        CoOp(per_task=True).setup(model(), run_for(CoOp(), tmp_path, domains))
    with pytest.raises(ValueError, match="not classes"):
        coop = CoOp()
        coop.setup(model(), run_for(coop, tmp_path))
        coop.text_features(model(), ["ring"], [99])
