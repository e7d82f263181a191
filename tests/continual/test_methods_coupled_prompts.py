"""CPE-CLIP (visual prompts computed from the language prompts) and S-Prompts (a prompt set per
domain, chosen at test time by the nearest k-means key)."""

import io

import pytest
import torch
from continual_helpers import small_config
from safetensors.torch import load_file
from torch.nn import functional as F

import mmcl
from mmcl.continual.methods import build_method
from mmcl.continual.methods.arguments import describe_method
from mmcl.continual.methods.coop import class_tokens
from mmcl.continual.methods.cpe_clip import CPECLIP
from mmcl.continual.methods.s_prompts import SPrompts, kmeans
from mmcl.continual.runner import ContinualRun, run_continual
from mmcl.continual.scenarios import domain_incremental, rotated_domains
from mmcl.data.scenes import SceneClassification, view_classnames, view_templates


def model(seed=0):
    torch.manual_seed(seed)
    return mmcl.create_model("tiny-vit").eval()


def domains():
    """Two domains of the built-in shape scenes: upright and turned by 90 degrees."""
    train = SceneClassification("shape", "train", 16, image_size=32, seed=0)
    test = SceneClassification("shape", "test", 8, image_size=32, seed=0)
    return domain_incremental(
        rotated_domains(train, test, [0, 90]), view_classnames("shape"), view_templates("shape")
    )


def a_run(method, tmp_path, stream=None):
    return ContinualRun(stream or domains(), method, small_config(tmp_path, lr=0.01), tmp_path, {})


def backbone(net):
    return {
        k: v.clone()
        for k, v in net.state_dict().items()
        if not k.startswith(("cpe_clip", "s_prompts"))
    }


def images(count=3, seed=1):
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# --- CPE-CLIP -----------------------------------------------------------------------------------


def test_cpe_clip_visual_prompts_are_a_linear_map_of_the_language_prompts(tmp_path):
    net, method = model(), CPECLIP()
    method.setup(net, a_run(method, tmp_path))
    prompts = net.cpe_clip
    context = prompts.context.embeddings
    assert context.shape == (4, 128)  # "a photo of a"
    x = images()
    with torch.no_grad():
        visual = context @ prompts.to_visual.weight.T + prompts.to_visual.bias
        expected = F.normalize(net.visual(x, prompt_embeddings=visual), dim=-1)
        got, terms = method.image_features(net, x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert terms == {}
    # The text side starts as the written template, exactly.
    space = a_run(method, tmp_path).training_space(0)
    with torch.no_grad():
        learned, _ = method.class_features(net, space)
        written = net.encode_text(
            mmcl.tokenize([f"a photo of a {name}." for name in space.names]), normalize=True
        )
    torch.testing.assert_close(learned, written, rtol=0, atol=1e-5)


def test_cpe_clip_image_loss_alone_moves_the_language_prompts(tmp_path):
    net, method = model(), CPECLIP()
    run = a_run(method, tmp_path)
    method.setup(net, run)
    method.before_task(run.scenario[0], net, run)
    assert [n for n, p in net.named_parameters() if p.requires_grad] == [
        "cpe_clip.context.embeddings",
        "cpe_clip.to_visual.weight",
        "cpe_clip.to_visual.bias",
    ]
    features, _ = method.image_features(net, images())
    features.sum().backward()
    assert net.cpe_clip.context.embeddings.grad.abs().sum() > 0  # coupled through W


def test_cpe_clip_run_trains_only_its_prompts(tmp_path):
    net, method = model(), build_method("cpe_clip")
    initial = backbone(net)
    config = small_config(tmp_path, lr=0.01, steps=1)
    result = run_continual(net, domains(), method, config, tmp_path / "run", progress=False)
    assert len(result.matrix) == 2 and all(len(row) == 2 for row in result.matrix)
    assert all(torch.equal(initial[k], v) for k, v in backbone(net).items())
    first = load_file(tmp_path / "run" / "task_00_rotated-0" / "model.safetensors")
    assert not torch.equal(first["cpe_clip.to_visual.weight"], net.cpe_clip.to_visual.weight)


# --- S-Prompts ----------------------------------------------------------------------------------


def test_kmeans_finds_two_separated_clusters_from_any_start():
    points = torch.tensor(
        [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [10.0, 10.0], [10.0, 11.0], [11.0, 10.0]]
    )
    expected = [[1 / 3, 1 / 3], [31 / 3, 31 / 3]]  # the clusters' means, by hand
    for seed in range(6):
        centres = kmeans(points, 2, torch.Generator().manual_seed(seed))
        ordered = sorted(centres.tolist())
        torch.testing.assert_close(torch.tensor(ordered), torch.tensor(expected)), seed
    assert kmeans(points[:1], 5, torch.Generator()).shape == (1, 2)  # never more than points


def test_s_prompts_trains_one_domain_and_keys_it_by_its_frozen_features(tmp_path):
    net, method = model(), SPrompts(prompt_length=2, centres=3)
    run = a_run(method, tmp_path)
    method.setup(net, run)
    assert len(net.s_prompts) == 2
    method.before_task(run.scenario[1], net, run)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert sorted(trainable) == ["s_prompts.1.context.embeddings", "s_prompts.1.image_embeddings"]
    x = images()
    with torch.no_grad():
        got, _ = method.image_features(net, x)
        prompted = net.visual(x, prompt_embeddings=net.s_prompts[1].image_embeddings)
    torch.testing.assert_close(got, F.normalize(prompted, dim=-1), rtol=0, atol=1e-6)
    method.keys = [torch.zeros(3, 64)]  # task 0's, as if trained
    method.after_task(run.scenario[1], net, run)
    assert method.domain is None and len(method.keys) == 2
    data = run.stream_data(1)
    with torch.no_grad():
        frozen = net.encode_image(torch.stack([data[i][0] for i in range(len(data))]), True)
    expected = kmeans(frozen, 3, torch.Generator().manual_seed(run.config.seed * 1_000_003 + 1))
    torch.testing.assert_close(method.keys[1], expected, rtol=0, atol=1e-5)
    assert method.image_features(net, x) is None and method.class_features(net, None) is None


def test_s_prompts_routes_each_image_to_its_nearest_key_and_that_domains_prompts(tmp_path):
    net, method = model(), SPrompts(prompt_length=2, centres=1)
    run = a_run(method, tmp_path)
    method.setup(net, run)
    torch.manual_seed(3)
    with torch.no_grad():
        for prompts in net.s_prompts:  # two clearly different domains
            prompts.image_embeddings.normal_()
            prompts.context.embeddings.normal_()
    space = run.evaluation_space(0, 1)
    x = images(2)
    with torch.no_grad():
        frozen = net.encode_image(x, normalize=True)
    method.keys = [frozen[1:2] + 0.01, frozen[0:1] - 0.01]  # image 0 -> domain 1, 1 -> 0
    assert method.route(net, x).tolist() == [1, 0]
    with torch.no_grad():
        logits = method.predict(net, x, space, run)
        for row, domain in ((0, 1), (1, 0)):
            prompts = net.s_prompts[domain]
            image = F.normalize(net.visual(x[row : row + 1], prompts.image_embeddings), dim=-1)
            text = net.text(class_tokens(space.names), prefix_embeddings=prompts.context())
            expected = image @ F.normalize(text, dim=-1).T
            torch.testing.assert_close(logits[row : row + 1], expected, rtol=0, atol=1e-5)
    method.keys = []  # before any task ended: the zero-shot classifier
    assert method.predict(net, x, space, run) is None


def test_s_prompts_run_leaves_earlier_domains_alone_and_round_trips(tmp_path):
    net, method = model(), SPrompts(prompt_length=2, centres=2)
    initial = backbone(net)
    config = small_config(tmp_path, lr=0.01, steps=1)
    result = run_continual(net, domains(), method, config, tmp_path / "run", progress=False)
    assert len(result.matrix) == 2 and all(len(row) == 2 for row in result.matrix)
    assert all(torch.equal(initial[k], v) for k, v in backbone(net).items())
    first = load_file(tmp_path / "run" / "task_00_rotated-0" / "model.safetensors")
    for name in ("context.embeddings", "image_embeddings"):
        assert torch.equal(first[f"s_prompts.0.{name}"], net.state_dict()[f"s_prompts.0.{name}"])
        assert not torch.equal(
            first[f"s_prompts.1.{name}"], net.state_dict()[f"s_prompts.1.{name}"]
        )
    assert [key.shape for key in method.keys] == [(2, 64), (2, 64)]
    other, again = model(seed=1), SPrompts(prompt_length=2, centres=2)
    again.setup(other, a_run(again, tmp_path))
    other.load_state_dict(net.state_dict())
    buffer = io.BytesIO()  # saved and loaded the way checkpoints are (weights only)
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    space, x = a_run(method, tmp_path).evaluation_space(0, 1), images()
    with torch.no_grad():
        assert torch.equal(
            again.predict(other, x, space, None), method.predict(net, x, space, None)
        )


# --- arguments ----------------------------------------------------------------------------------


def test_describe_names_the_papers():
    assert "paper: D'Alessandro et al. 2023" in describe_method("cpe_clip", CPECLIP)
    assert "paper: Wang et al. 2022" in describe_method("s_prompts", SPrompts)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: CPECLIP(n_ctx=3), "cpe_clip: context_init 'a photo of a' is 4 tokens"),
        (lambda: CPECLIP(context_init=7), "cpe_clip: context_init must be"),
        (lambda: SPrompts(prompt_length=0), "s_prompts: prompt_length must be"),
        (lambda: SPrompts(centres=True), "s_prompts: centres must be"),
        (lambda: build_method("s_prompts+cpe_clip"), "both compute the image features"),
    ],
)
def test_bad_arguments_name_the_method_and_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_prompt_methods_refuse_a_model_without_a_vit(tmp_path):
    for method in (CPECLIP(), SPrompts()):
        with pytest.raises(ValueError, match="choose a ViT model"):
            method.setup(mmcl.create_model("tiny-rn"), a_run(method, tmp_path))
