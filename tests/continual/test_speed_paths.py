"""The faster paths keep the results: channels-last classifiers, EWC's mini-batch importance
and its merged penalty."""

import copy
import shutil

import pytest
import torch
from continual_helpers import synthetic_class_stream
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from mmcl.continual.heads import HeadObjective
from mmcl.continual.methods import build_method
from mmcl.continual.methods.ewc import EWC, OnlineEWC, minibatch_importance
from mmcl.continual.runner import run_continual
from mmcl.io.checkpoints import save_safetensors
from mmcl.models.cifar_resnet import cifar_resnet18
from mmcl.models.image_classifier import ImageClassifier
from mmcl.train import TrainConfig, Trainer

CHANNELS_LAST = torch.channels_last


def resnets(width: int = 16):
    """The same weights twice: channels-last (the default) and NCHW."""
    torch.manual_seed(0)
    fast = cifar_resnet18(num_classes=6, width=width)
    torch.manual_seed(0)
    plain = cifar_resnet18(num_classes=6, width=width, channels_last=False)
    return fast, plain


def image_stream(per_class: int = 16, classes: int = 4, tasks: int = 2):
    """Class-incremental 3x32x32 images (class = a bright patch's place), for a ResNet."""

    def draw(labels, generator):
        images = 0.2 * torch.randn(len(labels), 3, 32, 32, generator=generator)
        for k in range(classes):
            images[labels == k, :, 8 * k : 8 * k + 8, 8 * k : 8 * k + 8] += 2.0
        return images

    return synthetic_class_stream(draw, "patches", classes, per_class, tasks)


def settings(folder, **overrides) -> TrainConfig:
    values = dict(
        steps=4,
        batch_size=8,
        lr=0.05,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=0.0,
        warmup_steps=0,
        progress=False,
        tensorboard=False,
        output_dir=str(folder),
    )
    values.update(overrides)
    return TrainConfig(**values)


# --- channels-last classifiers ----------------------------------------------------------------


def test_cifar_resnet18_is_channels_last_and_computes_the_nchw_function():
    fast, plain = resnets()
    convolutions = [m.weight for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convolutions and all(w.is_contiguous(memory_format=CHANNELS_LAST) for w in convolutions)
    assert plain.backbone.conv1.weight.is_contiguous()
    # The same values: only the layout differs (the seeded initialisation is unchanged).
    for name, value in fast.state_dict().items():
        assert torch.equal(value, plain.state_dict()[name]), name

    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 6, (8,))
    torch.testing.assert_close(fast(images), plain(images), rtol=1e-4, atol=1e-5)  # train mode
    # Gradients: where a ReLU's input is within rounding of 0, fp32 in another summation order
    # may flip it (and through BatchNorm's batch statistics move a whole channel's gradient),
    # so compare the smooth function SiLU makes of the same network.
    for model in (fast, plain):
        for module in model.modules():
            if hasattr(module, "relu"):
                module.relu = nn.SiLU()
        F.cross_entropy(model(images), labels).backward()
    for (name, a), b in zip(fast.named_parameters(), plain.parameters(), strict=True):
        scale = b.grad.abs().max()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-4 * scale, msg=name)
    fast.eval(), plain.eval()
    torch.testing.assert_close(fast(images), plain(images), rtol=1e-4, atol=1e-5)
    # Images in either layout give the same logits.
    torch.testing.assert_close(
        fast(images.contiguous(memory_format=CHANNELS_LAST)), fast(images), rtol=1e-5, atol=1e-6
    )


def test_the_layout_default_follows_the_backbone():
    linear = ImageClassifier(nn.Flatten(), 12, 3, image_size=2)
    assert linear(torch.randn(2, 3, 2, 2)).shape == (2, 3)
    convolutional = ImageClassifier(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), 16, 3, 4)
    assert convolutional.backbone[0].weight.is_contiguous(memory_format=CHANNELS_LAST)
    kept = ImageClassifier(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), 16, 3, 4, False)
    assert kept.backbone[0].weight.is_contiguous()
    # oneDNN #6035: NHWC weight gradients of strided 1x1 convolutions over < 16 channels are
    # broken, so a narrow ResNet (shortcuts over 8, 16 and 32 channels) stays NCHW.
    narrow = cifar_resnet18(num_classes=4, width=8)
    assert all(m.weight.is_contiguous() for m in narrow.modules() if isinstance(m, nn.Conv2d))
    assert cifar_resnet18(num_classes=4, width=16).backbone.conv1.weight.is_contiguous(
        memory_format=CHANNELS_LAST
    )


def test_channels_last_weights_save_and_load_in_either_direction(tmp_path):
    fast, plain = resnets()
    with torch.no_grad():
        for parameter in fast.parameters():
            parameter.add_(torch.randn_like(parameter))
    torch.save(fast.state_dict(), tmp_path / "fast.pt")
    loaded = torch.load(tmp_path / "fast.pt", weights_only=True)
    plain.load_state_dict(loaded)  # into NCHW weights: the values, NCHW stays NCHW
    assert plain.backbone.conv1.weight.is_contiguous()
    back, _ = resnets()
    back.load_state_dict(plain.state_dict())  # and an NCHW state into channels-last weights
    assert back.backbone.conv1.weight.is_contiguous(memory_format=CHANNELS_LAST)
    for name, value in fast.state_dict().items():
        assert torch.equal(plain.state_dict()[name], value), name
        assert torch.equal(back.state_dict()[name], value), name
    exported = load_file(str(save_safetensors(fast, tmp_path / "model.safetensors")))
    assert exported.keys() == fast.state_dict().keys()
    assert all(torch.equal(exported[k], v) for k, v in fast.state_dict().items())


def test_a_channels_last_training_run_resumes_from_its_checkpoint_exactly(tmp_path):
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 3, 32, 32, generator=generator), torch.arange(32) % 2)
    objective = HeadObjective([0, 1])
    torch.manual_seed(0)
    initial = cifar_resnet18(num_classes=4, width=16)

    whole = copy.deepcopy(initial)
    config = settings(tmp_path / "whole", checkpoint_every=1, keep_checkpoints=10)
    Trainer(whole, data, config, objective=objective).fit()

    # A second run that "stopped" after step 2: only that checkpoint is there to resume from.
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    step_2 = config.checkpoint_dir / "step_00000002.pt"
    shutil.copy(step_2, settings(cut).checkpoint_dir / step_2.name)
    resumed = copy.deepcopy(initial)
    Trainer(resumed, data, settings(cut, resume="latest"), objective=objective).fit()
    for name, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert resumed.backbone.conv1.weight.is_contiguous(memory_format=CHANNELS_LAST)


def test_a_continual_run_of_a_channels_last_resnet_resumes_at_the_task_it_stopped(tmp_path):
    def network():
        torch.manual_seed(0)
        return cifar_resnet18(num_classes=4, width=16)

    def method():
        return build_method("ewc", lambda_=10.0, fisher="minibatch", fisher_samples=16)

    expected_model = network()
    expected = run_continual(
        expected_model, image_stream(), method(), settings(tmp_path), tmp_path / "whole",
        progress=False,
    )  # fmt: skip
    stopping = method()
    original = stopping.after_task

    def after_task(task, model, run):
        original(task, model, run)
        if task.index == 0:
            raise KeyboardInterrupt  # dies after task 0's Fisher, before its weights are saved

    stopping.after_task = after_task
    with pytest.raises(KeyboardInterrupt):
        run_continual(
            network(), image_stream(), stopping, settings(tmp_path), tmp_path / "cut",
            progress=False,
        )  # fmt: skip
    model = network()
    result = run_continual(
        model, image_stream(), method(), settings(tmp_path), tmp_path / "cut",
        resume=True, progress=False,
    )  # fmt: skip
    assert result.matrix == expected.matrix
    for name, value in expected_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


# --- EWC: the mini-batch importance and the merged penalty ------------------------------------


def test_minibatch_importance_is_the_mean_squared_batch_gradient_worked_by_hand():
    torch.manual_seed(0)
    model = ImageClassifier(nn.Flatten(), 12, 4, image_size=2)  # logits = x W^T + b
    images = torch.randn(5, 3, 2, 2)
    labels = torch.tensor([3, 1, 1, 3, 3])
    data = TensorDataset(images, labels)

    class Space:  # the task trains over stream labels 1 and 3, in that order
        labels, names, templates = [1, 3], ["one", "three"], None

    seed, batch_size = 7, 2
    importance = minibatch_importance(model, Space(), data, 5, seed, batch_size)

    # By hand: the seeded order, batches of 2, 2 and 1; the cross-entropy over columns 1 and 3
    # has gradient (softmax - one-hot) x^T for those rows of W (the others get none).
    order = torch.randperm(5, generator=torch.Generator().manual_seed(seed)).tolist()
    weight, bias = model.head.weight.detach(), model.head.bias.detach()
    columns = torch.tensor([1, 3])
    expected_weight, expected_bias = torch.zeros_like(weight), torch.zeros_like(bias)
    batches = [order[0:2], order[2:4], order[4:5]]
    for batch in batches:
        x = images[batch].reshape(len(batch), 12)
        logits = x @ weight[columns].T + bias[columns]
        error = logits.softmax(dim=1) - F.one_hot((labels[batch] == 3).long(), 2).float()
        gradient_weight, gradient_bias = torch.zeros_like(weight), torch.zeros_like(bias)
        gradient_weight[columns] = error.T @ x / len(batch)  # of the batch's *mean* loss
        gradient_bias[columns] = error.mean(dim=0)
        expected_weight += gradient_weight**2
        expected_bias += gradient_bias**2
    torch.testing.assert_close(importance["head.weight"], expected_weight / len(batches))
    torch.testing.assert_close(importance["head.bias"], expected_bias / len(batches))
    assert importance["head.weight"][[0, 2]].abs().sum() == 0  # classes outside the space

    fewer = minibatch_importance(model, Space(), data, 4, seed, batch_size)  # 2 batches of 2
    x = images[order[:2]].reshape(2, 12)
    logits = x @ weight[columns].T + bias[columns]
    error = logits.softmax(dim=1) - F.one_hot((labels[order[:2]] == 3).long(), 2).float()
    first = (error.mean(dim=0)) ** 2
    x = images[order[2:4]].reshape(2, 12)
    logits = x @ weight[columns].T + bias[columns]
    error = logits.softmax(dim=1) - F.one_hot((labels[order[2:4]] == 3).long(), 2).float()
    torch.testing.assert_close(fewer["head.bias"][columns], (first + error.mean(dim=0) ** 2) / 2)


def test_minibatch_importance_equals_avalanches_on_the_same_batches():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from avalanche.training.plugins import EWCPlugin

    fast, _ = resnets()
    images, labels = torch.randn(11, 3, 32, 32), torch.randint(0, 6, (11,))
    data = TensorDataset(images, labels)

    class Space:  # every output, as avalanche's criterion sees them
        labels, names, templates = list(range(6)), [str(k) for k in range(6)], None

    ours = minibatch_importance(fast, Space(), data, 11, 3, batch_size=4)
    order = torch.randperm(11, generator=torch.Generator().manual_seed(3))
    ordered = TensorDataset(images[order], labels[order], torch.zeros(11, dtype=torch.long))
    optimizer = torch.optim.SGD(fast.parameters(), lr=0.1)
    theirs = EWCPlugin(1.0).compute_importances(
        fast, nn.CrossEntropyLoss(), optimizer, ordered, "cpu", 4
    )
    for name, value in ours.items():
        torch.testing.assert_close(value, theirs[name].data, rtol=1e-4, atol=1e-10, msg=name)


def test_merged_penalty_has_the_value_and_gradient_of_the_sum_over_tasks():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    method = EWC(lambda_=3.0)
    fishers, anchors = [], []
    for seed in (1, 2, 3):
        generator = torch.Generator().manual_seed(seed)
        named = [(n, p) for n, p in model.named_parameters() if seed != 2 or n != "1.bias"]
        fishers.append({n: torch.rand(p.shape, generator=generator) for n, p in named})
        anchors.append({n: torch.randn(p.shape, generator=generator) for n, p in named})
    fishers[0]["0.weight"][0, 0] = fishers[1]["0.weight"][0, 0] = fishers[2]["0.weight"][0, 0] = 0
    method.fishers, method.anchors = fishers, anchors

    def by_definition():
        total = 0.0
        for fisher, anchor in zip(fishers, anchors, strict=True):
            for name, parameter in model.named_parameters():
                if name in fisher:
                    total = total + (fisher[name] * (parameter - anchor[name]) ** 2).sum()
        return 3.0 / 2 * total

    for _ in range(2):  # the second call uses the merged terms built by the first
        model.zero_grad()
        penalty = method.extra_losses(model, None, {})["ewc"]
        penalty.backward()
        merged = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        expected = by_definition()
        expected.backward()
        assert penalty.item() == pytest.approx(expected.item(), rel=1e-6)
        for got, want in zip(merged, (p.grad for p in model.parameters()), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

    method.load_state_dict({"fishers": fishers[:1], "anchors": anchors[:1]})  # rebuilt
    one = method.extra_losses(model, None, {})["ewc"].item()
    fishers[1:], anchors[1:] = [], []
    assert one == pytest.approx(by_definition().item(), rel=1e-6)


def test_the_estimator_is_an_argument_that_is_checked(tmp_path, monkeypatch):
    from mmcl.continual.methods import ewc as ewc_module

    assert build_method("ewc", fisher="minibatch").fisher == "minibatch"
    assert build_method("online_ewc", fisher="minibatch", gamma=0.5).fisher == "minibatch"
    assert EWC().fisher == "sample" and OnlineEWC().fisher == "sample"
    with pytest.raises(ValueError, match="ewc: fisher must be one of sample, minibatch"):
        EWC(fisher="empirical")
    with pytest.raises(ValueError, match="fisher_batch_size must be None or an integer >= 1"):
        EWC(fisher_batch_size=0)

    calls = []

    def recorded(*arguments, batch_size, method):
        calls.append(batch_size)
        return minibatch_importance(*arguments, batch_size=batch_size, method=method)

    monkeypatch.setattr(ewc_module, "minibatch_importance", recorded)
    monkeypatch.setattr(
        ewc_module, "diagonal_fisher", lambda *arguments, method: pytest.fail("sample")
    )
    torch.manual_seed(0)
    model = ImageClassifier(nn.Flatten(), 3 * 32 * 32, 4, image_size=32)
    methods = [EWC(fisher="minibatch"), EWC(fisher="minibatch", fisher_batch_size=3)]
    for method, expected in zip(methods, (8, 3), strict=True):  # default: the training batch
        run_continual(
            copy.deepcopy(model), image_stream(), method, settings(tmp_path, steps=1),
            tmp_path / f"run_{expected}", progress=False,
        )  # fmt: skip
        assert calls[-2:] == [expected, expected] and len(method.fishers) == 1


def test_a_checkpoint_remembers_its_estimator_and_refuses_the_other():
    fisher, anchor = {"w": torch.ones(2)}, {"w": torch.zeros(2)}
    saved = EWC(fisher="minibatch")
    saved.fishers, saved.anchors = [fisher], [anchor]
    state = saved.state_dict()
    same = EWC(fisher="minibatch")
    same.load_state_dict(state)
    assert same.fishers == [fisher] and same.anchors == [anchor]
    with pytest.raises(ValueError, match="fisher='minibatch', this run asks for fisher='sample'"):
        EWC().load_state_dict(state)
    old = {"fishers": [fisher], "anchors": [anchor]}  # written before the choice existed
    EWC().load_state_dict(old)
    with pytest.raises(ValueError, match="estimated with fisher='sample'"):
        OnlineEWC(fisher="minibatch").load_state_dict(old)
    OnlineEWC(fisher="minibatch").load_state_dict({"fishers": [], "anchors": []})  # task 0
