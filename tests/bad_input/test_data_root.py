"""Bad input to the data root (CIFAR-10/100, MNIST by name): what mmcl promises.

- A data set in neither form under the data root: the error names the data set, the root,
  the two places looked at (image folders and torchvision's folder), and the ways out
  (--data-root / MMCL_DATA_ROOT, --download); the command line says it in one line, exit 2,
  and downloads nothing.
- A CIFAR batch that holds anything but dicts, lists, strings and arrays (a pickle that
  would run code) is refused, naming the file; nothing in it runs.
- Class folders or class names that are not the data set's classes are an error, not
  silently wrong labels.
- `mmcl train` with a recipe of `kind: dataset` reads the data from --data-root.
"""

from __future__ import annotations

import os
import pickle

import pytest

from data_formats import write_cifar10
from mmcl.cli import main
from mmcl.data.datasets import MissingDataError, find_dataset


def test_missing_data_names_the_root_the_places_and_the_ways_out(tmp_path):
    with pytest.raises(MissingDataError) as caught:
        find_dataset("cifar10", "train", tmp_path)
    message = str(caught.value)
    for part in (
        f"cifar10 (train) not found under the data root {tmp_path}",
        str(tmp_path / "cifar10" / "train"),
        str(tmp_path / "cifar-10-batches-py"),
        "--data-root",
        "MMCL_DATA_ROOT",
        "--download",
    ):
        assert part in message


def test_the_command_line_says_it_in_one_line(tmp_path, capsys):
    argv = ["continual", "--scenario", "cifar10-cil", "--method", "finetune"]
    argv += ["--model", "tiny-vit", "--data-root", str(tmp_path / "data")]
    argv += ["--output-dir", str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmcl continual: error: cifar10 (train) not found under the data root")
    assert len(err.splitlines()) == 1 and "--download" in err
    assert not (tmp_path / "data").exists()  # nothing was fetched


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_a_cifar_batch_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({"data": RunsCode(), "labels": []}, protocol=2))
    with pytest.raises(
        ValueError, match=r"test_batch: not one of CIFAR's pickled batches \(refused"
    ):
        find_dataset("cifar10", "test", tmp_path)
    assert not (tmp_path / "pwned.txt").exists()


def test_classes_that_are_not_the_data_sets_are_refused(tmp_path):
    from mmcl.continual.builtin import mini_mtil

    write_cifar10(tmp_path)
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    names = ["cat", "airplane", "automobile", "bird", "deer", "dog", "frog", "horse", "ship"]
    meta.write_bytes(pickle.dumps({"label_names": [*names, "truck"]}, protocol=2))
    with pytest.raises(ValueError, match="expected the classes .*'airplane'.* found .*'cat'"):
        mini_mtil(image_size=8, train_size=4, test_size=4, data_root=tmp_path, tasks=["cifar10"])


@pytest.mark.slow
def test_train_reads_a_recipes_data_set_from_the_data_root(tmp_path, capsys):
    write_cifar10(tmp_path / "data", per_batch=8, test=10)
    overrides = ["train.steps=2", "train.batch_size=8", "train.workers=0", "train.warmup_steps=1"]
    overrides += ["train.precision=fp32", "train.eval_every=null", "train.tensorboard=false"]
    overrides += ["train.checkpoint_every=null", "eval.max_images=10"]
    argv = ["train", "--config", "cifar10-captions", "--data-root", str(tmp_path / "data")]
    argv += ["--output-dir", str(tmp_path / "run"), "--quiet"]
    assert main(argv + [a for o in overrides for a in ("--set", o)]) == 0
    assert "zeroshot/cifar10" in capsys.readouterr().out
