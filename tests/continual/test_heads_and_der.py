"""Plain image classifiers in the continual runner, and DER / DER++."""

import json
import math

import pytest
import torch
import torchvision
from continual_helpers import small_config, synthetic_class_stream
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from mmcl.continual.classes import task_classes
from mmcl.continual.heads import HeadObjective, classification_objective, is_classifier
from mmcl.continual.methods import build_method
from mmcl.continual.runner import ContinualRun, run_continual
from mmcl.models.cifar_resnet import cifar_resnet18
from mmcl.models.image_classifier import ImageClassifier
from mmcl.train import TrainConfig


def separable_stream(classes: int = 4, per_class: int = 24, tasks: int = 2, seed: int = 0):
    """Class-incremental stream of 3x8x8 images whose class is a bright pixel's position."""

    def draw(labels, generator):
        images = 0.1 * torch.randn(len(labels), 3, 8, 8, generator=generator)
        images[torch.arange(len(labels)), 0, labels, labels] += 3.0
        return images

    return synthetic_class_stream(draw, "separable", classes, per_class, tasks, seed)


def linear_classifier(classes: int = 4) -> ImageClassifier:
    """No BatchNorm or dropout: train and eval mode compute the same function."""
    torch.manual_seed(0)
    return ImageClassifier(nn.Flatten(), 3 * 8 * 8, classes, image_size=8)


def test_cifar_resnet18_is_torchvisions_with_a_small_stem():
    model = cifar_resnet18(num_classes=10)
    reference = torchvision.models.resnet18(num_classes=10)
    # Only the stem differs: a 3x3 instead of a 7x7 convolution over 3 input channels.
    stem_difference = 64 * 3 * (7 * 7 - 3 * 3)
    assert sum(p.numel() for p in model.parameters()) == (
        sum(p.numel() for p in reference.parameters()) - stem_difference
    )
    assert isinstance(model.backbone.maxpool, nn.Identity)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert model.encode_image(torch.zeros(2, 3, 32, 32), normalize=True).shape == (2, 512)
    narrow = cifar_resnet18(num_classes=10, width=20)
    assert narrow.encode_image(torch.zeros(1, 3, 32, 32)).shape == (1, 160)


def test_head_objective_is_cross_entropy_over_the_space_columns():
    model = linear_classifier()
    images = torch.randn(5, 3, 8, 8)
    labels = torch.tensor([3, 1, 1, 3, 1])
    terms, outputs = HeadObjective([3, 1])(model, images, labels)
    logits = model(images)
    expected = F.cross_entropy(logits[:, [3, 1]], torch.tensor([0, 1, 1, 0, 1]))
    torch.testing.assert_close(terms["classification"], expected)
    torch.testing.assert_close(outputs["all_logits"], logits)
    with pytest.raises(ValueError, match=r"labels \[2\]"):
        HeadObjective([3, 1])(model, images, torch.tensor([2, 1, 1, 3, 1]))
    with pytest.raises(ValueError, match="num_classes >= 8"):
        HeadObjective([7])(model, images, torch.full((5,), 7))


def test_classification_objective_picks_the_head_for_a_classifier():
    stream = separable_stream()
    space = ContinualRun(stream, build_method("finetune"), None, None, {}).training_space(0)
    assert isinstance(classification_objective(linear_classifier(), space), HeadObjective)
    wrapped = nn.Module()
    wrapped.module = linear_classifier()  # what DistributedDataParallel looks like
    assert is_classifier(wrapped)


@pytest.mark.parametrize(
    "method", ["finetune", "joint", "ewc", "lwf", "er", "icarl", "der", "derpp", "er+lwf"]
)
def test_classifier_runs_through_every_textless_method(tmp_path, method):
    stream = separable_stream()
    arguments = {
        "icarl": {"memory_size": 8},
        "der": {"buffer_size": 8},
        "ewc": {"lambda_": 1.0},  # the default suits CLIP's tiny steps, not SGD at lr 0.05
    }.get(method, {})
    if method in ("er", "derpp", "er+lwf"):
        arguments = {"buffer_size": 8}
    result = run_continual(
        linear_classifier(),
        stream,
        build_method(method, **arguments),
        small_config(tmp_path, lr=0.05, steps=12, optimizer="sgd", weight_decay=0.0),
        tmp_path / "run",
        progress=False,
    )
    matrix = torch.tensor(result.matrix)
    assert matrix.shape == (2, 2) and ((0 <= matrix) & (matrix <= 1)).all()
    # The pixel tells the class: after its task, every method has learned the task well.
    assert matrix[0, 0] > 0.9 and matrix[1, 1] > 0.9, result.matrix


def test_text_tower_methods_refuse_a_classifier(tmp_path):
    for method in ("zscl", "coop", "er+moe_adapters"):
        with pytest.raises(ValueError, match="text tower"):
            run_continual(
                linear_classifier(),
                separable_stream(),
                build_method(method),
                small_config(tmp_path),
                tmp_path / method,
                progress=False,
            )


def test_a_head_too_small_for_the_stream_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="head has 3 outputs but the stream has 4 classes"):
        run_continual(
            linear_classifier(classes=3),
            separable_stream(),
            build_method("finetune"),
            small_config(tmp_path),
            tmp_path / "run",
            progress=False,
        )
    assert not (tmp_path / "run").exists()


def _started(method, stream, model, tmp_path):
    """A run of `method` on `stream`, set up and at the start of task 0, as the runner has it."""
    run = ContinualRun(stream, method, small_config(tmp_path), tmp_path, {}, 0)
    method.setup(model, run)
    method.before_task(stream.tasks[0], model, run)
    return run


def _trained_batch(run, task, indices, model):
    """What the engine hands `extra_losses`: a batch of the task's items with their indices,
    and the objective's outputs on it."""
    data = run.stream_data(task)
    images = torch.stack([data[i][0] for i in indices])
    labels = torch.tensor([data[i][1] for i in indices])
    _, outputs = classification_objective(model, run.training_space(task))(model, images, labels)
    return (images, labels, torch.tensor(indices)), outputs


def test_der_stores_each_trained_items_logits_so_its_term_starts_at_zero(tmp_path):
    stream = separable_stream()
    model = linear_classifier().eval()
    der = build_method("derpp", buffer_size=10, alpha=1.0, beta=0.5)
    run = _started(der, stream, model, tmp_path)
    batch, outputs = _trained_batch(run, 0, list(range(12)), model)
    assert der.extra_losses(model, batch, outputs) == {}  # the buffer was empty before it
    # Reservoir over the 12 items offered: the first 10 fill it, the last 2 may replace some.
    assert len(der.buffer) == 10 and der.buffer.seen == 12
    for slot, (t, i, label) in enumerate(der.buffer.items):
        image, stream_label = run.stream_data(t)[i]
        assert t == 0 and stream_label == label
        # Stored: every column of the head, as the model computed it in that step.
        torch.testing.assert_close(der.logits[slot], model(image.unsqueeze(0))[0].detach())

    run.task_index = 1
    der.before_task(stream.tasks[1], model, run)
    batch, outputs = _trained_batch(run, 1, [0, 1, 2, 3], model)
    terms = der.extra_losses(model, batch, outputs)
    assert terms["der"].item() == pytest.approx(0.0, abs=1e-10)  # same model: nothing to pull
    # DER++'s term is the cross-entropy of stored items' labels over the current classes.
    assert terms["der++"].item() > 0
    assert der.buffer.seen == 16  # task 1's batch was offered too
    with torch.no_grad():
        model.head.weight.add_(0.5)
    batch, outputs = _trained_batch(run, 1, [4, 5], model)
    assert der.extra_losses(model, batch, outputs)["der"].item() > 0


def test_der_keeps_a_clip_models_logits_for_the_trained_classes_only(tmp_path):
    import mmcl

    stream = separable_stream()
    torch.manual_seed(0)
    model = mmcl.create_model("tiny-vit").eval()
    der = build_method("der", buffer_size=4)
    run = _started(der, stream, model, tmp_path)
    data = run.stream_data(0)
    resize = torch.nn.Upsample(size=model.visual.image_size, mode="nearest")
    images = resize(torch.stack([data[i][0] for i in range(4)]))
    labels = torch.tensor([data[i][1] for i in range(4)])
    objective = classification_objective(model, run.training_space(0))
    _, outputs = objective(model, images, labels)
    der.extra_losses(model, (images, labels, torch.arange(4)), outputs)
    trained = stream.tasks[0].label_ids
    others = [k for k in range(4) if k not in trained]
    for slot, (_, index, _) in enumerate(der.buffer.items):
        torch.testing.assert_close(der.logits[slot][trained], outputs["logits"][index].detach())
        assert torch.isnan(der.logits[slot][others]).all()


def test_der_needs_item_indices(tmp_path):
    stream = separable_stream()
    model = linear_classifier()
    der = build_method("der", buffer_size=4)
    run = _started(der, stream, model, tmp_path)
    batch, outputs = _trained_batch(run, 0, [0, 1], model)
    with pytest.raises(ValueError, match="map-style"):
        der.extra_losses(model, (batch[0], batch[1], None), outputs)


def test_der_draws_are_reproducible_from_its_state(tmp_path):
    stream = separable_stream()
    model = linear_classifier()
    der = build_method("derpp", buffer_size=6)
    run = _started(der, stream, model, tmp_path)
    der.extra_losses(model, *_trained_batch(run, 0, list(range(8)), model))
    run.task_index = 1
    der.before_task(stream.tasks[1], model, run)
    der.extra_losses(model, *_trained_batch(run, 1, [0, 1, 2, 3], model))
    saved = der.state_dict()
    after = der._draw(4, "cpu")

    restored = build_method("derpp", buffer_size=6)
    restored.setup(model, run)
    restored.before_task(stream.tasks[1], model, run)
    restored.load_state_dict(saved)
    again = restored._draw(4, "cpu")
    for a, b in zip(after, again, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)


def test_der_arguments_are_checked():
    with pytest.raises(ValueError, match="buffer_size"):
        build_method("der", buffer_size=0)
    with pytest.raises(ValueError, match="alpha"):
        build_method("derpp", alpha=-1)
    with pytest.raises(ValueError, match="minibatch_size"):
        build_method("der", minibatch_size=0)


def test_icarl_on_a_classifier_scores_only_classes_with_exemplars(tmp_path):
    stream = separable_stream()
    model = linear_classifier()
    icarl = build_method("icarl", memory_size=8)
    run = _started(icarl, stream, model, tmp_path)
    images = torch.randn(3, 3, 8, 8)
    every = ContinualRun(stream, icarl, None, None, {}).evaluation_space(1, 1)
    assert icarl.predict(model, images, every, run) is None  # no exemplars: the head decides
    icarl.after_task(stream.tasks[0], model, run)
    scores = icarl.predict(model, images, every, run)
    seen = set(stream.tasks[0].label_ids)
    for column, label in enumerate(every.labels):
        if label in seen:
            assert torch.isfinite(scores[:, column]).all()
        else:
            assert (scores[:, column] == -math.inf).all()
    future = task_classes(stream, 1)  # a space with no exemplars at all: the head's logits
    assert not set(future.labels) & seen
    torch.testing.assert_close(
        icarl.predict(model, images, future, run), model(images)[:, future.labels]
    )


# ----------------------------------------------------------------------------- DER protocol
def test_der_protocol_table_and_settings_match():
    from mmcl.continual.protocols import (
        DER_METHODS,
        DER_PUBLISHED_CLASS_IL,
        DER_TRAINING,
        der_training,
    )

    assert set(DER_METHODS) == set(DER_PUBLISHED_CLASS_IL)
    for name, setting in DER_METHODS.items():
        build_method(setting.method, **setting.arguments)  # every row is a valid mmcl method
        config = TrainConfig(**der_training(name, output_dir="unused"))
        assert (config.optimizer, config.batch_size, config.epochs) == ("sgd", 32, 50)
        assert (config.lr, config.weight_decay) == (setting.lr, setting.weight_decay)
    # 35 and 45 of 50 epochs, as fractions of the run.
    assert [50 * x for x in DER_TRAINING["lr_decay_at"]] == pytest.approx([35, 45])
    with pytest.raises(ValueError, match="unknown protocol method 'der'"):
        der_training("der")


def test_seq_cifar10_is_five_pairs_in_natural_order_with_cifar_preprocessing():
    from mmcl.continual.builtin import MissingDataError
    from mmcl.continual.protocols import seq_cifar10
    from mmcl.data.cifar import CIFAR10_MEAN, CIFAR10_STD

    try:
        scenario = seq_cifar10(train_per_class=3, test_per_class=2)
    except MissingDataError as missing:
        pytest.skip(f"shared data not available, skipping: {missing}")
    assert [task.label_ids for task in scenario.tasks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert scenario.tasks[0].classnames == ["airplane", "automobile"]
    for task in scenario.tasks:
        assert sorted(task.train.targets) == sorted(task.label_ids * 3)
        assert sorted(task.test.targets) == sorted(task.label_ids * 2)
    # Test images: CIFAR normalisation of the decoded file, no augmentation.
    from mmcl.data.images import load_image

    test_data = scenario.tasks[0].test
    image, _ = test_data[0]
    source = (
        test_data.dataset.paths[test_data.indices[0]] if hasattr(test_data, "indices") else None
    )
    if source is not None:
        pixels = torchvision.transforms.functional.to_tensor(load_image(source))
        mean, std = (
            torch.tensor(CIFAR10_MEAN)[:, None, None],
            torch.tensor(CIFAR10_STD)[:, None, None],
        )
        torch.testing.assert_close(image, (pixels - mean) / std)
    # Training images are augmented: two reads of one item differ (crop and flip are random).
    torch.manual_seed(0)
    reads = [scenario.tasks[0].train[0][0] for _ in range(6)]
    assert any(not torch.equal(reads[0], other) for other in reads[1:])
    assert {tuple(r.shape) for r in reads} == {(3, 32, 32)}


def test_batched_fisher_of_a_classifier_equals_the_one_image_loop(monkeypatch):
    from mmcl.continual.methods import ewc as ewc_module

    stream = separable_stream()
    torch.manual_seed(0)
    model = cifar_resnet18(num_classes=4, width=4)  # BatchNorm: eval mode must be respected
    model.train()
    images = torch.randn(10, 3, 32, 32)
    space = task_classes(stream, 0)
    data = TensorDataset(images, torch.tensor(space.labels * 5))
    model(images)  # move BatchNorm's running statistics off their initial values
    batched = ewc_module.diagonal_fisher(model, space, data, samples=10, seed=3)
    monkeypatch.setattr(ewc_module, "is_classifier", lambda model: False)
    looped = ewc_module.diagonal_fisher(model, space, data, samples=10, seed=3)
    assert batched.keys() == looped.keys()
    for name in batched:
        torch.testing.assert_close(batched[name], looped[name], rtol=1e-4, atol=1e-9)
    assert model.training  # restored


def _train_losses(output):
    curves = {}
    for folder in sorted(output.glob("task_*")):
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        curves[folder.name] = [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]
    return curves


def test_derpp_resumed_inside_a_task_repeats_the_uninterrupted_run(tmp_path, monkeypatch):
    config = dict(lr=0.05, steps=6, optimizer="sgd", checkpoint_every=2, log_every=1)

    def run(output, resume=False):
        method = build_method("derpp", buffer_size=8)
        result = run_continual(
            linear_classifier(),
            separable_stream(),
            method,
            small_config(tmp_path, **config),
            output,
            progress=False,
            resume=resume,
        )
        return result, method

    whole, whole_method = run(tmp_path / "whole")
    # Stop the second run inside task 1, after its checkpoint at step 4 and before step 6.
    original, calls = type(whole_method).extra_losses, []

    def stop_at_step_five(self, model, batch, outputs):
        calls.append(self._task)
        if self._task == 1 and calls.count(1) == 5:
            raise KeyboardInterrupt
        return original(self, model, batch, outputs)

    monkeypatch.setattr(type(whole_method), "extra_losses", stop_at_step_five)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut")
    monkeypatch.setattr(type(whole_method), "extra_losses", original)
    checkpoints = list((tmp_path / "cut").glob("task_01_*/checkpoints/step_*.pt"))
    assert max(path.name for path in checkpoints) == "step_00000004.pt"  # resumes mid-task
    resumed, resumed_method = run(tmp_path / "cut", resume=True)

    assert _train_losses(tmp_path / "cut") == _train_losses(tmp_path / "whole")
    assert resumed.matrix == whole.matrix
    torch.testing.assert_close(resumed_method.logits, whole_method.logits, equal_nan=True)
    assert resumed_method.buffer.items == whole_method.buffer.items


@pytest.mark.slow
def test_der_protocol_benchmark_runs_end_to_end(tmp_path):
    """The benchmark script itself, tiny: two methods, one epoch, 16 images a class."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from mmcl.continual.builtin import MissingDataError
    from mmcl.continual.protocols import DER_PUBLISHED_CLASS_IL, seq_cifar10

    try:
        seq_cifar10(train_per_class=1, test_per_class=1)
        missing = None
    except MissingDataError as error:
        missing = error
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "continual_der_protocol.py"
    command = [sys.executable, str(script), "--methods", "sgd,derpp", "--epochs", "1"]
    command += ["--train-per-class", "16", "--test-per-class", "2", "--width", "4"]
    command += ["--output", str(tmp_path / "runs"), "--json", str(tmp_path / "table.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if missing is not None:  # no shared CIFAR-10 here: one clear line naming the folder
        assert result.returncode != 0
        assert result.stderr.strip().splitlines() == [
            f"continual_der_protocol.py: error: {missing}"
        ]
        return
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["epochs"] == 1 and table["device"] in ("cpu", "cuda")
    assert set(table["results"]) == {"sgd", "derpp"}
    for name, row in table["results"].items():
        assert row["published"] == DER_PUBLISHED_CLASS_IL[name] and 0 <= row["ours"] <= 100
    if table["device"] == "cpu":
        refused = subprocess.run([*command, "--device", "cuda"], capture_output=True, text=True)
        assert refused.returncode == 2 and "no CUDA device is visible" in refused.stderr
    too_few = [*command[:-4], "--train-per-class", "2", "--output", str(tmp_path / "few")]
    refused = subprocess.run(too_few, capture_output=True, text=True)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "error: tasks with fewer training items than one step takes" in refused.stderr
