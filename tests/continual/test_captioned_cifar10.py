"""CIFAR-10 with captions as a task of the captioned stream, from the data root."""

import json

import torch

from data_formats import CIFAR10_CLASSES, write_cifar10
from mmcl.cli import main
from mmcl.continual.experiments import build_scenario
from mmcl.data.captions import class_caption
from mmcl.data.zeroshot import load_zero_shot_metadata
from mmcl.io.tokenizer import tokenize


def test_cifar10_items_are_captioned_from_their_class_names(tmp_path):
    written = write_cifar10(tmp_path, per_batch=2, test=6)
    labels, train_labels = written["test"][1], written["train"][1]
    stream = build_scenario(
        "scene-styles", styles=["cifar10-captions"], data_root=tmp_path, train_size=10, test_size=6
    )
    templates = load_zero_shot_metadata("cifar10").templates
    assert stream.task_names == ["cifar10-captions"] and len(stream[0].test) == 6
    for index in range(6):  # every test image drawn: item i is image i of the test batch
        _, tokens = stream[0].test[index]
        caption = f"a photo of a {CIFAR10_CLASSES[labels[index]]}."  # the test's one template
        assert torch.equal(tokens, tokenize([caption])[0])
    assert len(stream[0].train) == 10  # every training image drawn, captioned in turn
    for index in range(10):
        _, tokens = stream[0].train[index]
        caption = class_caption(CIFAR10_CLASSES[train_labels[index]], templates, index)
        assert torch.equal(tokens, tokenize([caption])[0])


def test_the_command_line_trains_a_stream_ending_with_cifar10_from_the_data_root(tmp_path):
    write_cifar10(tmp_path / "data", per_batch=2, test=6)
    output = tmp_path / "run"
    command = ["continual", "--scenario", "scene-styles", "--tasks", "upright,cifar10-captions"]
    command += ["--data-root", str(tmp_path / "data"), "--model", "tiny-vit", "--method"]
    command += ["finetune", "--steps", "1", "--batch-size", "4", "--train-size", "8"]
    command += ["--test-size", "4", "--quiet", "--output-dir", str(output)]
    assert main(command) == 0
    report = json.loads((output / "report.json").read_text())
    assert report["tasks"] == ["upright", "cifar10-captions"]
    assert "data_root" not in report["extra"]["scenario_args"]  # where the data are: unrecorded
