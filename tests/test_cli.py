"""The `mmcl` command line: each subcommand end to end on tiny models and generated images."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import mmcl
from mmcl.cli import main
from mmcl.io.checkpoints import save_open_clip, save_safetensors


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = mmcl.create_model("tiny-vit")
    save_safetensors(model, tmp_path / "tiny.safetensors")
    return model, tmp_path / "tiny.safetensors"


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "images"
    for label, colour in enumerate(("red", "green", "blue")):
        (root / colour).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (36 + i, 30 + label), colour).save(root / colour / f"{i}.png")
    return root


def test_models_lists_names_and_filters(capsys):
    assert main(["models", "--filter", "RN50x"]) == 0
    out = capsys.readouterr().out
    assert "RN50x64" in out and "ModifiedResNet" in out and "ViT-B-32" not in out


def test_embed_images_equals_the_python_api(checkpoint, class_folder, tmp_path):
    model, path = checkpoint
    output = tmp_path / "out.npy"
    assert (
        main(
            [
                "embed",
                "--pretrained",
                str(path),
                "--images",
                str(class_folder),
                "--output",
                str(output),
                "--quiet",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    features = np.load(output)
    names = (tmp_path / "out.npy.index.txt").read_text().splitlines()
    assert features.shape == (9, 64) and len(names) == 9
    preprocess = mmcl.get_preprocess(model)
    with torch.no_grad():
        expected = model.encode_image(preprocess(Image.open(names[4])).unsqueeze(0), normalize=True)
    assert np.abs(features[4] - expected[0].numpy()).max() < 1e-5


def test_embed_images_in_parts_resumes_and_refuses_other_settings(
    checkpoint, class_folder, tmp_path, capsys
):
    model, path = checkpoint
    output = tmp_path / "out.npy"
    args = ["embed", "--pretrained", str(path), "--images", str(class_folder)]
    args += ["--output", str(output), "--quiet", "--batch-size", "2", "--part-size", "4"]
    assert main([*args, "--workers", "2", "--keep-parts"]) == 0
    parts = tmp_path / "out.npy.parts"
    assert len(list(parts.glob("part-*.safetensors"))) == 3  # 9 images in parts of 4
    first = np.load(output)
    names = (tmp_path / "out.npy.index.txt").read_text().splitlines()
    preprocess = mmcl.get_preprocess(model)
    with torch.no_grad():
        expected = model.encode_image(torch.stack([preprocess(Image.open(n)) for n in names]), True)
    assert np.abs(first - expected.numpy()).max() < 1e-5
    capsys.readouterr()

    assert main([*args, "--precision", "bf16"]) == 2
    error = capsys.readouterr().err
    assert "another embedding job" in error and "precision" in error and str(parts) in error
    assert main(args) == 0
    assert "reused 3 finished part(s)" in capsys.readouterr().out
    assert np.array_equal(np.load(output), first) and not parts.exists()


def test_embed_in_streams_gives_the_same_features(
    checkpoint, class_folder, tmp_path, capsys, monkeypatch
):
    from mmcl.nn import streams

    parts, run = [], streams._run

    def recorded(fn, part, inference):
        parts.append(len(part))
        return run(fn, part, inference)

    model, path = checkpoint
    args = ["embed", "--pretrained", str(path), "--images", str(class_folder)]
    args += ["--quiet", "--batch-size", "5"]
    assert main([*args, "--output", str(tmp_path / "one.npy")]) == 0
    monkeypatch.setattr(streams, "_run", recorded)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # a share for each stream
    assert not parts
    assert main([*args, "--output", str(tmp_path / "two.npy"), "--streams", "2"]) == 0
    assert parts == [3, 2, 2, 2]  # 9 images: batches of 5 and 4, each split in two
    np.testing.assert_allclose(
        np.load(tmp_path / "two.npy"), np.load(tmp_path / "one.npy"), rtol=1e-5, atol=1e-6
    )
    capsys.readouterr()
    assert main([*args, "--output", str(tmp_path / "bad.npy"), "--streams", "0"]) == 2
    assert "--streams must be positive, got 0" in capsys.readouterr().err


def test_embed_texts_to_safetensors(checkpoint, tmp_path):
    model, path = checkpoint
    texts = tmp_path / "texts.txt"
    captions = ["a cat", "a dog asleep on a red sofa beside a window in the sun", "", "a bird"]
    texts.write_text("".join(f"{caption}\n" for caption in captions))
    output = tmp_path / "texts.safetensors"
    assert (
        main(
            [
                "embed",
                "--pretrained",
                str(path),
                "--texts",
                str(texts),
                "--output",
                str(output),
                "--quiet",
            ]
        )
        == 0
    )
    with torch.no_grad():
        expected = model.encode_text(mmcl.tokenize(captions), normalize=True)
    assert torch.allclose(load_file(str(output))["features"], expected, atol=1e-5)
    assert (tmp_path / "texts.safetensors.index.txt").read_text().splitlines() == captions


def test_unreadable_image_is_named_or_skipped(checkpoint, class_folder, tmp_path, capsys):
    _, path = checkpoint
    (class_folder / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    args = [
        "embed",
        "--pretrained",
        str(path),
        "--images",
        str(class_folder),
        "--output",
        str(tmp_path / "out.npy"),
        "--quiet",
    ]
    assert main(args) == 2
    assert "broken.png" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="broken.png"):
        assert main([*args, "--skip-bad"]) == 0
    assert "skipped 1 unreadable" in capsys.readouterr().err
    assert np.load(tmp_path / "out.npy").shape[0] == 9


def test_zeroshot_reports_accuracy_consistent_with_manual_computation(
    checkpoint, class_folder, tmp_path, capsys
):
    model, path = checkpoint
    report = tmp_path / "report.json"
    assert (
        main(
            [
                "zeroshot",
                "--pretrained",
                str(path),
                "--data",
                str(class_folder),
                "--quiet",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    result = json.loads(report.read_text())
    # Hand computation: class prompt embedding per folder name, nearest by cosine.
    classes = ["blue", "green", "red"]
    preprocess = mmcl.get_preprocess(model)
    with torch.no_grad():
        text = model.encode_text(
            mmcl.tokenize([f"a photo of a {c}." for c in classes]), normalize=True
        )
        correct = 0
        for label, name in enumerate(classes):
            for file in sorted((class_folder / name).iterdir()):
                image = preprocess(Image.open(file)).unsqueeze(0)
                logits = model.encode_image(image, normalize=True) @ text.T
                correct += int(logits.argmax()) == label
    assert result["images"] == 9
    assert abs(result["overall"]["top1"] - correct / 9) < 1e-9
    assert "top-1" in capsys.readouterr().out


def test_zeroshot_with_a_shipped_dataset_checks_folder_names(checkpoint, class_folder, capsys):
    _, path = checkpoint
    assert (
        main(
            [
                "zeroshot",
                "--pretrained",
                str(path),
                "--data",
                str(class_folder),
                "--dataset",
                "cifar10",
                "--quiet",
            ]
        )
        == 2
    )
    assert "not cifar10 class names" in capsys.readouterr().err


def test_retrieval_recalls(checkpoint, class_folder, tmp_path, capsys):
    _, path = checkpoint
    rows = ["image,caption"] + [
        f"{c}/{i}.png,a {c} thing" for c in ("red", "green", "blue") for i in range(3)
    ]
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    report = tmp_path / "recall.json"
    assert (
        main(
            [
                "retrieval",
                "--pretrained",
                str(path),
                "--captions",
                str(tmp_path / "captions.csv"),
                "--images",
                str(class_folder),
                "--quiet",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    recall = json.loads(report.read_text())["recall"]
    assert all(0.0 <= value <= 1.0 for value in recall.values())
    assert recall["image_to_text_R@10"] == 1.0 and recall["text_to_image_R@10"] == 1.0


def test_retrieval_csv_without_caption_column(checkpoint, tmp_path, capsys):
    _, path = checkpoint
    (tmp_path / "bad.csv").write_text("image,text\na.png,hello\n")
    assert (
        main(["retrieval", "--pretrained", str(path), "--captions", str(tmp_path / "bad.csv")]) == 2
    )
    assert "missing column(s) ['caption']" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["hf", "open_clip", "mmcl"])
def test_convert_round_trips_exactly(checkpoint, tmp_path, target):
    model, path = checkpoint
    output = tmp_path / ("converted.pt" if target == "open_clip" else "converted")
    if target == "mmcl":
        output = tmp_path / "converted.safetensors"
    assert main(["convert", str(path), str(output), "--to", target]) == 0
    back = mmcl.create_model("tiny-vit" if target == "open_clip" else None, pretrained=output)
    for key, value in model.state_dict().items():
        assert torch.equal(value, back.state_dict()[key]), key


def test_convert_open_clip_file_needs_no_name_when_inferable(tmp_path):
    model = mmcl.create_model("tiny-vit")
    save_open_clip(model, tmp_path / "oc.pt")
    assert (
        main(
            [
                "convert",
                str(tmp_path / "oc.pt"),
                str(tmp_path / "x.safetensors"),
                "--to",
                "mmcl",
                "--model",
                "tiny-vit",
            ]
        )
        == 0
    )


def test_unknown_model_name_suggests(capsys):
    assert main(["embed", "--model", "ViT-B-33", "--texts", "x.txt", "--output", "o.npy"]) == 2
    assert "Did you mean" in capsys.readouterr().err
