"""CIFAR-10/100 and MNIST from a data root, in torchvision's formats or as image folders.

Tiny data sets are written in torchvision's formats (tests/data_formats.py); torchvision's own
readers are the reference for what they hold (its CIFAR readers check the real files' MD5 sums,
so that check is switched off for them here). Nothing is downloaded: `download=True` is tested
against a stand-in that writes what torchvision's download would.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from data_formats import CIFAR10_CLASSES, write_cifar10, write_cifar100, write_idx, write_mnist
from mmcl.continual.builtin import mini_mtil
from mmcl.continual.experiments import cifar10_cil
from mmcl.data.datasets import (
    DATA_ROOT_ENV,
    MissingDataError,
    PixelImages,
    data_root,
    find_dataset,
)
from mmcl.io.transforms import get_preprocess


@pytest.fixture
def torchvision_reads_fakes(monkeypatch):
    """torchvision's CIFAR readers, without the MD5 check of the real files."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_files_read_as_torchvision_reads_them(split, tmp_path, torchvision_reads_fakes):
    write_cifar10(tmp_path)
    found = find_dataset("cifar10", split, tmp_path)
    reference = torchvision.datasets.CIFAR10(str(tmp_path), train=split == "train")
    assert np.array_equal(found.pixels, reference.data)
    assert found.labels == reference.targets
    assert found.classnames == reference.classes == CIFAR10_CLASSES


def test_cifar100_files_read_as_torchvision_reads_them(tmp_path, torchvision_reads_fakes):
    written = write_cifar100(tmp_path)
    found = find_dataset("cifar100", "train", tmp_path)
    reference = torchvision.datasets.CIFAR100(str(tmp_path), train=True)
    assert np.array_equal(found.pixels, reference.data)
    assert np.array_equal(found.pixels, written["train"][0])  # and as written, pixel for pixel
    assert found.labels == reference.targets == written["train"][1]  # fine labels
    assert found.classnames[:2] == ["apple", "aquarium_fish"]


def test_mnist_files_read_as_torchvision_reads_them(tmp_path):
    write_mnist(tmp_path)
    for split in ("train", "test"):
        found = find_dataset("mnist", split, tmp_path)
        reference = torchvision.datasets.MNIST(str(tmp_path), train=split == "train")
        assert np.array_equal(found.pixels, reference.data.numpy())
        assert found.labels == reference.targets.tolist()
        assert found.classnames == [str(d) for d in range(10)]


def test_gzipped_mnist_files_are_read_too(tmp_path):
    written = write_mnist(tmp_path, gz=True)
    found = find_dataset("mnist", "test", tmp_path)
    assert np.array_equal(found.pixels, written["test"][0]) and found.labels == written["test"][1]


def test_image_folders_come_first(tmp_path):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar10" / "test" / "cat"
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32), "red").save(folder / "a.png")
    found = find_dataset("cifar10", "test", tmp_path)
    assert found.paths == [folder / "a.png"] and found.pixels is None


def test_the_data_root_is_the_argument_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCL_SHARED_DATA", str(tmp_path / "old"))
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert data_root() == tmp_path / "old"
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "new"))
    assert data_root() == tmp_path / "new"
    assert data_root(tmp_path / "given") == tmp_path / "given"


def test_pixel_images_give_the_transformed_image_and_its_label(tmp_path):
    written = write_cifar10(tmp_path)
    images = find_dataset("cifar10", "test", tmp_path).subset([4, 1], get_preprocess(8))
    assert isinstance(images, PixelImages) and images.targets == [4, 1]
    image, label = images[0]
    expected = get_preprocess(8)(Image.fromarray(written["test"][0][4]))
    assert label == 4 and torch.equal(image, expected)


def test_mini_mtil_from_torchvisions_files(tmp_path):
    write_cifar10(tmp_path, per_batch=4, test=10)  # 20 train images, 2 a class; 10 test
    write_mnist(tmp_path, test=50)  # 5 a digit: 4 train, 1 test each
    scenario = mini_mtil(
        image_size=8, train_size=1000, test_size=10, data_root=tmp_path, tasks=["cifar10", "mnist"]
    )
    cifar, mnist = scenario.tasks
    assert Counter(cifar.train.targets) == {c: 2 for c in range(10)}
    assert Counter(cifar.test.targets) == {c: 1 for c in range(10)}
    assert Counter(mnist.train.targets) == {d: 4 for d in range(10)}
    assert Counter(mnist.test.targets) == {d: 1 for d in range(10)}
    image, _ = mnist.train[0]
    assert image.shape == (3, 8, 8)  # grey digits become three channels


class FakeDownload:
    """Stands in for torchvision.datasets.CIFAR10: writes the files, records the call."""

    calls: list = []

    def __init__(self, root, train, download):
        FakeDownload.calls.append((root, train, download))
        write_cifar10(Path(root))


def test_download_only_when_asked_then_read_from_the_root(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeDownload)
    FakeDownload.calls = []
    with pytest.raises(MissingDataError):
        cifar10_cil(train_size=10, test_size=10, data_root=tmp_path)
    assert FakeDownload.calls == []  # not asked: nothing fetched
    scenario = cifar10_cil(train_size=10, test_size=10, data_root=tmp_path, download=True)
    assert FakeDownload.calls == [(str(tmp_path), True, True)]  # train; then test is there
    assert sum(len(task.train) for task in scenario.tasks) == 10


def test_corrupt_idx_header_names_the_file(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte", np.zeros((4, 5)), gz=False)
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte: not an IDX file of 3-dim"):
        find_dataset("mnist", "test", tmp_path)


@pytest.mark.slow
def test_continual_download_flag_fetches_into_the_data_root(tmp_path, monkeypatch, capsys):
    from mmcl.cli import main

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeDownload)
    FakeDownload.calls = []
    argv = ["continual", "--scenario", "cifar10-cil", "--method", "finetune", "--model"]
    argv += ["tiny-vit", "--data-root", str(tmp_path / "data"), "--download", "--steps", "1"]
    argv += ["--train-size", "10", "--test-size", "10", "--batch-size", "2", "--quiet"]
    assert main([*argv, "--output-dir", str(tmp_path / "run")]) == 0
    assert FakeDownload.calls == [(str(tmp_path / "data"), True, True)]
    assert (tmp_path / "run" / "report.json").is_file()
