"""Prompt methods: CoOp's learned text context and L2P's prompt pool, and the towers' entry
points they use (text prefix, visual prompts)."""

import math

import pytest
import torch
from continual_helpers import small_config, small_scenario
from safetensors.torch import load_file
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import mmcl
from mmcl.continual.heads import classification_objective
from mmcl.continual.methods import build_method
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


def hand_coop_text(net, context: torch.Tensor, name: str) -> torch.Tensor:
    """One class's CoOp text feature, assembled by hand: [SOT] ctx_1..ctx_M, then the token
    embeddings of "name." and [EOT], positions added, every block on the whole sequence, and
    the final norm and projection at the end token."""
    ids = mmcl.get_tokenizer().encode(f"{name}.")
    start, end = mmcl.tokenize([""])[0, :2].tolist()  # [SOT] and [EOT]
    embed = net.text.token_embedding.weight
    x = torch.cat([embed[[start]], context, embed[ids + [end]]])
    x = x + net.text.positional_embedding[: len(x)]
    for block in net.text.transformer.resblocks:
        x = block(x[None], causal=True)[0]
    return net.text.ln_final(x[-1]) @ net.text.text_projection


def test_coop_logits_are_its_contexts_and_the_class_tokens_through_the_text_tower(tmp_path):
    net, coop, stream = model(), CoOp(per_task=True), scenario()
    run = run_for(coop, tmp_path, stream)
    coop.setup(net, run)
    with torch.no_grad():
        for context in net.coop_contexts:
            context.embeddings.normal_()
    coop.before_task(stream.tasks[1], net, run)
    assert [n for n, p in net.named_parameters() if p.requires_grad] == [
        "coop_contexts.1.embeddings"
    ]
    # Task 1 trains over the classes seen so far: task 0's (their context: 0) and its own (1).
    space = run.training_space(1)
    objective = classification_objective(net, space, coop)
    images, _ = inputs()
    labels = torch.tensor(space.labels[:3])
    terms, outputs = objective(net, images, labels)
    with torch.no_grad():
        text = torch.stack(
            [
                hand_coop_text(net, net.coop_contexts[coop.owner[label]].embeddings, name)
                for name, label in zip(space.names, space.labels, strict=True)
            ]
        )
        text = F.normalize(text, dim=-1)
        image = net.encode_image(images, normalize=True)
        logits = net.logit_scale.exp() * image @ text.T
    torch.testing.assert_close(outputs["logits"], logits, rtol=0, atol=1e-4)
    assert set(terms) == {"classification"}
    torch.testing.assert_close(terms["classification"], F.cross_entropy(logits, torch.arange(3)))
    # The model itself was not hooked: class prompts encode as written while the task trains.
    prompts = mmcl.tokenize(["a photo of a ring.", "a cross shape."])
    with torch.no_grad():
        assert torch.equal(net.encode_text(prompts), model().encode_text(prompts))


def test_coop_trains_its_context_through_the_objective(tmp_path):
    net, coop, stream = model(), CoOp(), scenario()
    run = run_for(coop, tmp_path, stream)
    coop.setup(net, run)
    coop.before_task(stream.tasks[0], net, run)
    space = run.training_space(0)
    objective = classification_objective(net, space, coop)
    images, labels = next(iter(DataLoader(run.stream_data(0), batch_size=8)))
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=0.01)
    losses = []
    for _ in range(5):
        terms, _ = objective(net, images, labels)
        optimizer.zero_grad()
        terms["classification"].backward()
        optimizer.step()
        losses.append(terms["classification"].item())
    assert losses[-1] < losses[0] - 0.01, losses
    phrase = model().text.token_embedding.weight[coop.phrase_ids]
    assert not torch.allclose(net.coop_contexts[0].embeddings, phrase)  # the context moved


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
    space = run_for(coop, tmp_path, stream).evaluation_space(0, 3)
    with torch.no_grad():
        before, _ = coop.class_features(net, space)
    other, again = model(seed=1), CoOp(per_task=per_task)
    again.setup(other, run_for(again, tmp_path, stream))
    other.load_state_dict(net.state_dict())
    again.load_state_dict(coop.state_dict())
    with torch.no_grad():
        assert torch.equal(again.class_features(other, space)[0], before)
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


def test_l2p_returns_prompted_features_with_the_matching_loss_and_keeps_nothing(tmp_path):
    net, l2p, stream = model(), small_l2p(), scenario()
    run = run_for(l2p, tmp_path, stream)
    l2p.setup(net, run)
    l2p.before_task(stream.tasks[0], net, run)
    assert [n for n, p in net.named_parameters() if p.requires_grad] == [
        "l2p_pool.prompt_embeddings",
        "l2p_pool.keys",
    ]
    space = run.training_space(0)
    objective = classification_objective(net, space, l2p)
    images, _ = inputs()
    attributes = set(vars(l2p))
    for step, rows in enumerate(([0, 1, 2], [2, 0])):  # two steps, other images
        labels = torch.tensor([space.labels[k % len(space)] for k in rows])
        terms, outputs = objective(net, images[rows], labels)
        with torch.no_grad():
            query = model().visual(images[rows])  # the frozen, unprompted feature
            chosen = net.l2p_pool.select(query)
            prompts = net.l2p_pool.prompts(chosen)
            image = F.normalize(net.visual(images[rows], prompt_embeddings=prompts), dim=-1)
            matching = 0.1 * net.l2p_pool.matching_loss(query, chosen)
            written = [t[step].format(n) for n, t in zip(space.names, space.templates, strict=True)]
            text = net.encode_text(mmcl.tokenize(written), normalize=True)
            logits = net.logit_scale.exp() * image @ text.T
            classification = F.cross_entropy(logits, space.positions(labels))
        assert set(terms) == {"classification", "key_matching"}
        assert terms["key_matching"].requires_grad
        torch.testing.assert_close(outputs["image_features"], image)
        torch.testing.assert_close(terms["key_matching"], matching)
        torch.testing.assert_close(sum(terms.values()), classification + matching)
        assert set(vars(l2p)) == attributes
    with torch.no_grad():  # the model itself is not hooked: plain features while training
        assert torch.equal(net.encode_image(images), model().encode_image(images))


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
    with torch.no_grad():
        before, _ = l2p.image_features(net, images)
    other, again = model(seed=1), small_l2p()
    again.setup(other, run_for(again, tmp_path, stream))
    other.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(again.image_features(other, images)[0], before)


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


def test_two_methods_that_compute_the_same_features_cannot_be_combined():
    with pytest.raises(ValueError, match=r"\['coop', 'moe_adapters'\] both compute the class"):
        build_method("coop+moe_adapters")
    with pytest.raises(ValueError, match=r"\['l2p', 'moe_adapters'\] both compute the image"):
        build_method("l2p+moe_adapters")
    both = build_method("coop+l2p")  # one computes the class features, the other the images
    assert [type(part) for part in both.parts] == [CoOp, L2P]


def test_ewc_importance_in_coop_plus_ewc_measures_coops_classifier(tmp_path):
    # With CoOp the only trainable weights are its contexts, which the classifier reaches only
    # through CoOp's class features (without them the loss would not depend on them at all).
    from mmcl.continual.methods.ewc import diagonal_fisher

    net, coop, stream = model(), CoOp(), scenario()
    run = run_for(coop, tmp_path, stream)
    coop.setup(net, run)
    coop.before_task(stream.tasks[0], net, run)
    arguments = (net, run.training_space(0), run.stream_data(0), 8, 0)
    through_coop = diagonal_fisher(*arguments, method=coop)
    assert list(through_coop) == ["coop_contexts.0.embeddings"]
    assert through_coop["coop_contexts.0.embeddings"].sum() > 0
