"""Bad input to checkpoint conversion and model loading: what mmcl promises.

- `mmcl convert --to hf` into a non-empty folder is refused, naming the folder and --overwrite;
  nothing in the folder changes (not the input checkpoint, not the working directory).
- With --overwrite only the export's own files are written (config.json, model.safetensors
  and the tokenizer and image processor files); every other file stays.
- `mmcl convert` onto an existing file is refused unless --overwrite is given.
- `convert --to mmcl`/`open_clip` onto a folder, or `--to hf` onto a file, is a one-line error,
  given before the input is read.
- A crash while exporting leaves the previous files, or nothing, and no temporary files.
- In Python, `save_huggingface` refuses a non-empty folder unless `overwrite=True`;
  `save_safetensors`/`save_open_clip` replace a file as `torch.save` does, unless
  `overwrite=False`; none of them ever replaces a folder.
- A file that is not a checkpoint (random bytes) is named and called not a checkpoint; no
  message ever advises loading with `weights_only=False`.
- A checkpoint that does not record its architecture: the command line asks for --model, the
  Python API for a model name.
- An open_clip state dict loaded without a model name warns that QuickGELU was assumed and
  names the models to choose between (command line: one line on stderr naming --model).
- embed, zeroshot and retrieval without --pretrained warn, in one line on stderr, that the
  model has random weights; `create_model` without weights stays quiet (training from scratch).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import mmcl
from mmcl.cli import main
from mmcl.io.checkpoints import (
    CheckpointError,
    save_huggingface,
    save_open_clip,
    save_safetensors,
)
from mmcl.models.factory import ActivationAssumedWarning, ArchitectureNotRecordedError

# What a Hugging Face export writes: the model, and what CLIPProcessor reads.
HF_FILES = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
]


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return mmcl.create_model("tiny-vit")


@pytest.fixture
def checkpoint(tiny_model, tmp_path):
    return save_safetensors(tiny_model, tmp_path / "models" / "tiny.safetensors")


def run(args, capsys) -> tuple[int, str]:
    """Runs `mmcl ARGS`; returns its exit status and what it wrote to stderr."""
    status = main([str(arg) for arg in args])
    return status, capsys.readouterr().err


def snapshot(folder) -> dict:
    """Every file under `folder` (hidden ones too) with its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def assert_same_weights(model, path, name=None):
    back = mmcl.create_model(name, pretrained=path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, back.state_dict()[key]), key


def assert_one_line_error(status, err, *fragments):
    assert status == 2
    assert err.startswith("mmcl convert: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


# --- convert never deletes what it did not write ---------------------------------------------


def test_hf_into_a_non_empty_folder_is_refused_and_the_folder_kept(checkpoint, tmp_path, capsys):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "notes.txt").write_text("keep")
    before = snapshot(tmp_path)
    status, err = run(["convert", checkpoint, project, "--to", "hf"], capsys)
    assert_one_line_error(status, err, str(project), "not empty", "--overwrite")
    assert snapshot(tmp_path) == before


def test_hf_overwrite_writes_only_its_own_files(tiny_model, checkpoint, tmp_path, capsys):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "notes.txt").write_text("keep")
    (project / "config.json").write_text("{}")  # an older export's: replaced
    assert run(["convert", checkpoint, project, "--to", "hf", "--overwrite"], capsys)[0] == 0
    assert sorted(p.name for p in project.iterdir()) == sorted([*HF_FILES, "notes.txt"])
    assert (project / "notes.txt").read_text() == "keep"
    assert_same_weights(tiny_model, project)


def test_hf_into_the_inputs_own_folder_keeps_the_input(tiny_model, checkpoint, capsys):
    models = checkpoint.parent
    original = checkpoint.read_bytes()
    status, err = run(["convert", checkpoint, models, "--to", "hf"], capsys)
    assert_one_line_error(status, err, "not empty")
    assert sorted(p.name for p in models.iterdir()) == ["tiny.safetensors"]
    assert run(["convert", checkpoint, models, "--to", "hf", "--overwrite"], capsys)[0] == 0
    assert checkpoint.read_bytes() == original
    assert_same_weights(tiny_model, models)


def test_hf_into_the_working_directory_deletes_nothing(
    tiny_model, checkpoint, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work.txt").write_text("keep")
    before = snapshot(tmp_path)
    status, err = run(["convert", "models/tiny.safetensors", ".", "--to", "hf"], capsys)
    assert_one_line_error(status, err, "not empty")
    assert snapshot(tmp_path) == before
    assert (
        run(["convert", "models/tiny.safetensors", ".", "--to", "hf", "--overwrite"], capsys)[0]
        == 0
    )
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(map(str, set(after) - set(before))) == sorted(HF_FILES)
    assert_same_weights(tiny_model, tmp_path)


def test_hf_into_an_empty_or_new_folder_needs_no_flag(tiny_model, checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "new" / "deeper"):
        assert run(["convert", checkpoint, folder, "--to", "hf"], capsys)[0] == 0
        assert_same_weights(tiny_model, folder)


@pytest.mark.parametrize("target", ["mmcl", "open_clip"])
def test_an_existing_file_is_replaced_only_with_overwrite(
    tiny_model, checkpoint, tmp_path, capsys, target
):
    output = tmp_path / "out.safetensors"
    output.write_text("someone's file")
    status, err = run(["convert", checkpoint, output, "--to", target], capsys)
    assert_one_line_error(status, err, str(output), "exists", "--overwrite")
    assert output.read_text() == "someone's file"
    assert run(["convert", checkpoint, output, "--to", target, "--overwrite"], capsys)[0] == 0
    assert_same_weights(tiny_model, output, "tiny-vit" if target == "open_clip" else None)


@pytest.mark.parametrize("target", ["mmcl", "open_clip"])
def test_a_single_file_format_onto_a_folder_is_a_one_line_error(tmp_path, capsys, target):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"x" * 100)  # checked before the input is read
    folder = tmp_path / "folder"
    folder.mkdir()
    for flags in ([], ["--overwrite"]):
        status, err = run(["convert", garbage, folder, "--to", target, *flags], capsys)
        assert_one_line_error(status, err, str(folder), "is a folder")
    assert list(folder.iterdir()) == []


def test_hf_onto_a_file_is_a_one_line_error(tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"x" * 100)
    output = tmp_path / "model.safetensors"
    output.write_text("someone's file")
    for flags in ([], ["--overwrite"]):
        status, err = run(["convert", garbage, output, "--to", "hf", *flags], capsys)
        assert_one_line_error(status, err, str(output), "is a file", "folder")
    assert output.read_text() == "someone's file"


def test_a_crash_while_exporting_leaves_the_old_files_and_no_temporary_ones(
    tiny_model, tmp_path, monkeypatch
):
    from mmcl.io.checkpoints import export

    save_huggingface(tiny_model, tmp_path / "hf")
    save_safetensors(tiny_model, tmp_path / "model.safetensors")
    before = snapshot(tmp_path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export, "save_file", crash)
    torch.manual_seed(1)
    other = mmcl.create_model("tiny-vit")
    for write in (
        lambda: save_huggingface(other, tmp_path / "hf", overwrite=True),
        lambda: save_huggingface(other, tmp_path / "new-hf"),
        lambda: save_safetensors(other, tmp_path / "model.safetensors"),
    ):
        with pytest.raises(OSError, match="disk full"):
            write()
        assert snapshot(tmp_path) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "model.safetensors"]


# --- the Python API's defaults ---------------------------------------------------------------


def test_python_writers_defaults(tiny_model, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_huggingface(tiny_model, folder)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    save_huggingface(tiny_model, folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep"

    file = tmp_path / "model.safetensors"
    file.write_text("old")
    save_safetensors(tiny_model, file)  # replaces, as torch.save and safetensors' save_file do
    assert_same_weights(tiny_model, file)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_open_clip(tiny_model, file, overwrite=False)
    for writer in (save_safetensors, save_open_clip):
        with pytest.raises(IsADirectoryError, match="is a folder"):
            writer(tiny_model, folder)
    assert (folder / "notes.txt").read_text() == "keep"


def test_resnet_to_hf_fails_before_touching_the_folder(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="ModifiedResNet"):
        save_huggingface(mmcl.create_model("tiny-rn"), folder, overwrite=True)
    assert snapshot(tmp_path) == {folder.relative_to(tmp_path) / "config.json": b"{}"}


# --- messages that name the file and the way out ---------------------------------------------


def test_random_bytes_are_not_a_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    noise = torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes()
    files = {
        "random.pt": noise,
        "random-pickle-header.pt": b"\x80\x02" + noise,  # looks like a pickle for 2 bytes
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError) as error:
            mmcl.create_model("tiny-vit", pretrained=tmp_path / name)
        assert f"{tmp_path / name}: not a checkpoint" in str(error.value)
        assert error.value.__cause__ is None or "weights_only" not in str(error.value.__cause__)
        status, err = run(
            ["convert", tmp_path / name, tmp_path / "out.safetensors", "--to", "mmcl"], capsys
        )
        assert_one_line_error(status, err, name, "not a checkpoint")
        assert "weights_only" not in err


def test_pickled_code_is_refused_without_advice_to_run_it(tmp_path, capsys):
    torch.save({"weights": torch.zeros(2), "callback": json.dumps}, tmp_path / "evil.pt")
    status, err = run(["convert", tmp_path / "evil.pt", tmp_path / "o.pt", "--to", "mmcl"], capsys)
    assert_one_line_error(status, err, "evil.pt", "other than tensors", "json.dumps")
    assert "weights_only" not in err


def test_no_architecture_recorded_names_model_flag_or_argument(tiny_model, tmp_path, capsys):
    bare = tmp_path / "bare.safetensors"  # mmcl's layout without the config in its metadata
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()}, str(bare))
    status, err = run(["convert", bare, tmp_path / "out.safetensors", "--to", "mmcl"], capsys)
    assert_one_line_error(status, err, str(bare), "--model")
    assert "create_model" not in err
    (tmp_path / "texts.txt").write_text("a cat\n")
    status, err = run(
        [
            "embed",
            "--pretrained",
            bare,
            "--texts",
            tmp_path / "texts.txt",
            "--output",
            tmp_path / "e.npy",
        ],
        capsys,
    )
    assert status == 2 and "--model" in err and "create_model" not in err
    with pytest.raises(ArchitectureNotRecordedError, match="model name"):
        mmcl.load(bare)
    model, _ = mmcl.load(bare, model_name="tiny-vit")
    assert_same_weights(model, bare, "tiny-vit")


def test_open_clip_file_without_a_name_warns_what_was_assumed(tiny_model, tmp_path, capsys):
    path = save_open_clip(tiny_model, tmp_path / "open_clip.pt")
    with pytest.warns(ActivationAssumedWarning, match="assumed QuickGELU.*'tiny-vit'"):
        model, _ = mmcl.load(path)
    assert model.config.quick_gelu
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a name settles it: no warning
        assert not mmcl.load(path, model_name="tiny-vit")[0].config.quick_gelu
        assert mmcl.create_model(pretrained=path, quick_gelu=False).config.quick_gelu is False
    status, err = run(["convert", path, tmp_path / "out.safetensors", "--to", "mmcl"], capsys)
    assert status == 0
    assert err.count("\n") == 1 and err.startswith("mmcl convert: warning: ")
    assert "assumed QuickGELU" in err and "--model tiny-vit" in err
    assert load_file(str(tmp_path / "out.safetensors"))  # the conversion itself went ahead


# --- random weights --------------------------------------------------------------------------


@pytest.fixture
def evaluation_inputs(tmp_path):
    images = tmp_path / "images"
    for colour in ("red", "blue"):
        (images / colour).mkdir(parents=True)
        Image.new("RGB", (32, 32), colour).save(images / colour / "0.png")
    (tmp_path / "captions.csv").write_text("image,caption\nred/0.png,red\nblue/0.png,blue\n")
    (tmp_path / "texts.txt").write_text("a cat\n")
    return {
        "embed": ["--texts", tmp_path / "texts.txt", "--output", tmp_path / "e.npy"],
        "zeroshot": ["--data", images],
        "retrieval": ["--captions", tmp_path / "captions.csv", "--images", images],
    }


@pytest.mark.parametrize("command", ["embed", "zeroshot", "retrieval"])
def test_evaluating_random_weights_warns_in_one_line(
    command, evaluation_inputs, checkpoint, capsys
):
    args = [command, *evaluation_inputs[command], "--quiet"]
    status, err = run([*args, "--model", "tiny-vit"], capsys)
    assert status == 0
    warning = f"mmcl {command}: warning: no --pretrained checkpoint: tiny-vit has random weights"
    assert [line for line in err.splitlines() if "random weights" in line] == [
        warning + ", so these results mean nothing"
    ]
    status, err = run([*args, "--pretrained", checkpoint], capsys)
    assert status == 0 and "random weights" not in err


def test_create_model_without_weights_stays_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mmcl.create_model("tiny-vit")  # how training from scratch starts


def test_an_albef_config_with_a_special_id_outside_its_vocabulary_is_refused():
    from mmcl.models.albef_config import AlbefConfig

    with pytest.raises(ValueError, match=r"tiny\.json: albef_text ids \{'mask_id': 103\}"):
        AlbefConfig.from_dict(
            {"albef_text": {"vocab_size": 50, "cls_id": 2, "sep_id": 3}}, source="tiny.json"
        )
