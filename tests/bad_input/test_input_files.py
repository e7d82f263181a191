"""What mmcl does with bad input files (images, caption tables, texts) in embed/zeroshot/retrieval.

Promises checked here, one a line:
- 16-bit PNGs (grey or RGB) are scaled to 8 bits, never clipped to white: the result equals
  that of the 8-bit image holding each value's high byte; `--high-bit-depth refuse` refuses them.
- A dangling symbolic link, a loop of links and a folder named like an image are reported like
  any unreadable image: an error naming them, or skipped and counted with --skip-bad.
- Only regular files are opened: a FIFO named as an image cannot hang a job.
- A decompression bomb (a tiny PNG claiming 100000 x 100000 pixels) is an unreadable image,
  named, and skipped and counted with --skip-bad; --max-image-pixels sets the limit, which
  also holds in DataLoader worker processes.
- An --output or --report that is a folder is refused before any work, in one line.
- A caption row without a caption field, or with more fields than the header, is an error
  naming the file and line.
- Text that is not UTF-8 in a caption table, a --texts file or a --templates file is an error
  naming the file and line.
- `mmcl retrieval` reads caption tables like the library: a UTF-8 byte-order mark and
  tab-separated .tsv files give the same results as a plain CSV.
- Progress written to a log (stderr not a terminal) has no carriage-return frames.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mmcl
from mmcl.cli import main
from mmcl.data.images import ImageReadError, load_image, pixel_limit
from mmcl.io.checkpoints import save_safetensors

# --- files made by hand -------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_file(width: int, height: int, bit_depth: int, colour_type: int, pixels: bytes) -> bytes:
    """A PNG written from the specification (no filter on any row), not by Pillow."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(pixels))
        + png_chunk(b"IEND", b"")
    )


def png_16_bit(values: np.ndarray) -> bytes:
    """(H, W) grey or (H, W, 3) RGB values 0..65535 as a 16-bit PNG (Pillow cannot write
    16-bit RGB)."""
    values = np.asarray(values, dtype=">u2")
    height, width = values.shape[:2]
    colour_type = 0 if values.ndim == 2 else 2
    rows = b"".join(b"\x00" + values[y].tobytes() for y in range(height))
    return png_file(width, height, 16, colour_type, rows)


def decompression_bomb() -> bytes:
    """A valid PNG header claiming 100000 x 100000 grey pixels, and almost no data."""
    return png_file(100_000, 100_000, 8, 0, b"\x00" * 64)


def ramp_16_bit(height: int = 48, width: int = 64) -> np.ndarray:
    """A 0..4095 ramp (12-bit data, as a camera stores it in a 16-bit file) and a few
    values over the full range."""
    ramp = (np.arange(height * width) * 4096 // (height * width)).reshape(height, width)
    ramp[0, :8] = [0, 255, 256, 32767, 32768, 65279, 65280, 65535]
    return ramp.astype(np.uint16)


def high_bytes(values: np.ndarray) -> Image.Image:
    """The 8-bit image made independently: each 16-bit value's high byte."""
    return Image.fromarray((values >> 8).astype(np.uint8))


def write_images(folder: Path, count: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"good{i}.png"
        Image.new("RGB", (40 + i, 36), (60 * i, 100, 200 - 50 * i)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_safetensors(mmcl.create_model("tiny-vit"), path)
    return path


def finishes(work, timeout: float, what: str):
    """`work()`'s result, run in a thread so that a hang fails the test instead of stopping the
    suite; an exception it raises is raised here."""
    outcome = []

    def run():
        try:
            outcome.append((True, work()))
        except BaseException as error:  # handed to the test's thread
            outcome.append((False, error))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), f"{what} still running after {timeout}s"
    finished, value = outcome[0]
    if not finished:
        raise value
    return value


def run_cli(args: list[str], timeout: float = 120) -> int:
    """`mmcl args`' exit status, failing the test if it hangs."""
    return finishes(lambda: main(args), timeout, f"mmcl {' '.join(args)}")


def embed(checkpoint: Path, images: Path, output: Path, *extra: str) -> int:
    return run_cli(
        ["embed", "--pretrained", str(checkpoint), "--images", str(images)]
        + ["--output", str(output), "--quiet", *extra]
    )


def index_rows(output: Path) -> list[str]:
    return output.with_name(output.name + ".index.txt").read_text().splitlines()


# --- 16-bit images (issue 16, item 3) -----------------------------------------------------------


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    values = ramp_16_bit()
    path = tmp_path / "grey16.png"
    path.write_bytes(png_16_bit(values))
    image = load_image(path)
    assert image.mode == "I;16" and np.array_equal(np.asarray(image), values)
    preprocess = mmcl.get_preprocess(32)
    expected = preprocess(high_bytes(values))
    assert torch.equal(preprocess(image), expected)
    # open_clip's clip to [0, 255] made 99.6% of such a ramp white; the scaled ramp is dark.
    pixels = np.asarray(image.convert("L"))
    assert (pixels == 255).mean() > 0.9 and (np.asarray(high_bytes(values)) == 255).mean() < 0.01


def test_16_bit_rgb_png_equals_its_8_bit_image(tmp_path):
    values = np.stack([ramp_16_bit(), 65535 - ramp_16_bit(), ramp_16_bit() * 16], axis=-1)
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_16_bit(values))
    preprocess = mmcl.get_preprocess(32)
    assert torch.equal(preprocess(load_image(path)), preprocess(high_bytes(values)))


def test_embed_16_bit_pngs_like_their_8_bit_images(checkpoint, tmp_path):
    grey, rgb = ramp_16_bit(), np.stack([ramp_16_bit()] * 3, axis=-1) * 9
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a_grey16.png").write_bytes(png_16_bit(grey))
    high_bytes(grey).save(folder / "b_grey8.png")
    (folder / "c_rgb16.png").write_bytes(png_16_bit(rgb))
    high_bytes(rgb).save(folder / "d_rgb8.png")
    output = tmp_path / "out.npy"
    assert embed(checkpoint, folder, output) == 0
    features = np.load(output)
    assert [Path(row).name for row in index_rows(output)][0] == "a_grey16.png"
    assert np.array_equal(features[0], features[1]) and np.array_equal(features[2], features[3])


def test_high_bit_depth_refuse(checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    write_images(folder, 2)
    (folder / "grey16.png").write_bytes(png_16_bit(ramp_16_bit()))
    (folder / "rgb16.png").write_bytes(png_16_bit(np.stack([ramp_16_bit()] * 3, axis=-1)))
    output = tmp_path / "out.npy"
    assert embed(checkpoint, folder, output, "--high-bit-depth", "refuse") == 2
    err = capsys.readouterr().err
    assert "grey16.png" in err and "more than 8 bits" in err and len(err.splitlines()) == 1
    with pytest.warns(UserWarning, match=r"(grey|rgb)16.png"):
        assert embed(checkpoint, folder, output, "--high-bit-depth", "refuse", "--skip-bad") == 0
    assert "skipped 2 unreadable image(s)" in capsys.readouterr().err
    assert sorted(Path(row).name for row in index_rows(output)) == ["good0.png", "good1.png"]


# --- entries that are not image files (items 4 and 5) -------------------------------------------


def folder_with_odd_entries(folder: Path) -> list[str]:
    """Good images plus a dangling link, a loop of links, a folder and a FIFO with image
    names; returns the odd entries' names."""
    write_images(folder, 2)
    (folder / "dangling.png").symlink_to(folder / "missing.png")
    (folder / "loop_a.jpg").symlink_to(folder / "loop_b.jpg")
    (folder / "loop_b.jpg").symlink_to(folder / "loop_a.jpg")
    (folder / "folder.jpg").mkdir()
    os.mkfifo(folder / "pipe.png")
    return ["dangling.png", "folder.jpg", "loop_a.jpg", "loop_b.jpg", "pipe.png"]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("dangling.png", "dangling symbolic link"),
        ("loop_a.jpg", "loop of symbolic links"),
        ("folder.jpg", "a folder, not a regular file"),
        ("pipe.png", "a FIFO, not a regular file"),
    ],
)
def test_load_image_names_what_is_not_a_file(tmp_path, name, reason):
    folder_with_odd_entries(tmp_path)
    with pytest.raises(ImageReadError, match=reason) as caught:
        finishes(lambda: load_image(tmp_path / name), 20, f"load_image({name})")
    assert str(caught.value).startswith(str(tmp_path / name))


def test_embed_reports_entries_that_are_not_images(checkpoint, tmp_path, capsys):
    odd = folder_with_odd_entries(tmp_path / "images")
    output = tmp_path / "out.npy"
    assert embed(checkpoint, tmp_path / "images", output) == 2
    err = capsys.readouterr().err
    assert "dangling.png" in err and len(err.splitlines()) == 1  # the first, in sorted order
    with pytest.warns(UserWarning):
        assert embed(checkpoint, tmp_path / "images", output, "--skip-bad") == 0
    err = capsys.readouterr().err
    assert f"skipped {len(odd)} unreadable image(s)" in err
    assert all(name in err for name in odd)
    assert sorted(Path(row).name for row in index_rows(output)) == ["good0.png", "good1.png"]


def test_zeroshot_counts_entries_that_are_not_images(checkpoint, tmp_path):
    root = tmp_path / "classes"
    odd = folder_with_odd_entries(root / "red")
    write_images(root / "blue", 2)
    report = tmp_path / "report.json"
    args = ["zeroshot", "--pretrained", str(checkpoint), "--data", str(root), "--quiet"]
    assert run_cli(args) == 2
    with pytest.warns(UserWarning):
        assert run_cli([*args, "--skip-bad", "--report", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["skipped"] == len(odd) and result["images"] == 4


def test_retrieval_with_a_fifo_in_the_captions_does_not_hang(checkpoint, tmp_path, capsys):
    images = tmp_path / "images"
    write_images(images, 2)
    os.mkfifo(images / "pipe.png")
    table = tmp_path / "captions.csv"
    table.write_text("image,caption\ngood0.png,a photo\npipe.png,a pipe\ngood1.png,another photo\n")
    args = ["retrieval", "--pretrained", str(checkpoint), "--captions", str(table), "--quiet"]
    assert run_cli([*args, "--images", str(images)], timeout=60) == 2
    assert "pipe.png: cannot read image (a FIFO" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="pipe.png"):
        assert run_cli([*args, "--images", str(images), "--skip-bad"], timeout=60) == 0
    assert "2 images, 2 captions, 1 skipped" in capsys.readouterr().out


# --- decompression bombs (item 6) ---------------------------------------------------------------


def test_decompression_bomb_is_an_unreadable_image(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(decompression_bomb())
    assert bomb.stat().st_size < 100
    with pytest.raises(ImageReadError, match=r"10,000,000,000 pixels, over the limit") as caught:
        load_image(bomb)
    assert str(caught.value).startswith(f"{bomb}: cannot read image")


def test_embed_skips_and_counts_a_decompression_bomb(checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    write_images(folder, 2)
    (folder / "bomb.png").write_bytes(decompression_bomb())
    output = tmp_path / "out.npy"
    assert embed(checkpoint, folder, output) == 2
    err = capsys.readouterr().err
    assert "bomb.png" in err and "--max-image-pixels" in err and len(err.splitlines()) == 1
    with pytest.warns(UserWarning, match="bomb.png"):
        assert embed(checkpoint, folder, output, "--skip-bad") == 0
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().err
    assert len(np.load(output)) == 2


def test_max_image_pixels_sets_the_limit(checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    write_images(folder, 3)  # 40x36, 41x36, 42x36 pixels: 1440, 1476, 1512
    output = tmp_path / "out.npy"
    before = Image.MAX_IMAGE_PIXELS
    with pytest.warns(UserWarning, match="good2.png"):
        assert embed(checkpoint, folder, output, "--max-image-pixels", "1500", "--skip-bad") == 0
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().err
    assert Image.MAX_IMAGE_PIXELS == before  # the command's setting ends with it
    assert embed(checkpoint, folder, output, "--max-image-pixels", "-1") == 2
    assert "--max-image-pixels must be 0 (no limit) or positive" in capsys.readouterr().err
    with pixel_limit(1400):
        with pytest.raises(ImageReadError, match="1,440 pixels, over the limit of 1,400"):
            load_image(folder / "good0.png")
    assert Image.MAX_IMAGE_PIXELS == before


def test_the_pixel_limit_holds_in_dataloader_workers(tmp_path, monkeypatch):
    # A worker started by spawn or forkserver has Pillow's default limit, not the caller's:
    # ImageFiles carries the limit in force when it was made into its workers.
    from mmcl.data import images as images_module

    (path,) = write_images(tmp_path, 1)  # 40 x 36 = 1440 pixels
    with pixel_limit(1000):
        dataset = images_module.ImageFiles([path], mmcl.get_preprocess(32), skip_bad=True)
    before = Image.MAX_IMAGE_PIXELS
    assert dataset[0] is not None  # the main process keeps its own setting
    monkeypatch.setattr(images_module, "get_worker_info", lambda: object())  # as in a worker
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", before)  # restored after the test
    with pytest.warns(UserWarning, match="1,440 pixels, over the limit of 1,000"):
        assert dataset[0] is None


# --- one-line errors and messages that name the file (items 7 and 8) ----------------------------


def test_output_folder_is_refused_before_any_work(tmp_path, capsys):
    write_images(tmp_path / "images", 1)
    (tmp_path / "out.npy").mkdir()
    # A model name that does not exist: the output is checked before the model is looked up.
    model = ["--model", "no-such-model"]
    embed_args = ["embed", *model, "--images", str(tmp_path / "images")]
    assert run_cli([*embed_args, "--output", str(tmp_path / "out.npy")]) == 2
    assert capsys.readouterr().err == (
        f"mmcl embed: error: --output {tmp_path / 'out.npy'} is a folder; give a file path\n"
    )
    (tmp_path / "captions.csv").write_text("image,caption\nimages/good0.png,a photo\n")
    for command in (
        ["zeroshot", *model, "--data", str(tmp_path)],
        ["retrieval", *model, "--captions", str(tmp_path / "captions.csv")],
    ):
        assert run_cli([*command, "--report", str(tmp_path)]) == 2
        assert f"--report {tmp_path} is a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("image,caption\na.png,a cat\nb.png\n", "captions.csv, line 3: no caption field"),
        ("image,caption\na.png,a cat, asleep\n", "captions.csv, line 2: 1 more field(s)"),
        ("image,caption\n,a cat\n", "captions.csv, line 2: no image path"),
    ],
)
def test_caption_rows_that_do_not_fit_the_header(checkpoint, tmp_path, capsys, rows, message):
    (tmp_path / "captions.csv").write_text(rows)
    args = ["retrieval", "--pretrained", str(checkpoint), "--captions"]
    assert run_cli([*args, str(tmp_path / "captions.csv")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1


def test_text_files_that_are_not_utf8_are_named(checkpoint, tmp_path, capsys):
    latin1 = "naïve café\n".encode("latin-1")
    (tmp_path / "captions.csv").write_bytes(b"image,caption\na.png,a cat\nb.png," + latin1)
    (tmp_path / "texts.txt").write_bytes(b"a cat\n" + latin1)
    (tmp_path / "templates.txt").write_bytes(b"a photo of a {}.\n" + latin1)
    write_images(tmp_path / "classes" / "red", 1)
    pretrained = ["--pretrained", str(checkpoint), "--quiet"]
    for args, bad in (
        (["retrieval", "--captions", str(tmp_path / "captions.csv")], "captions.csv, line 3"),
        (["embed", "--texts", str(tmp_path / "texts.txt"), "--output", "o.npy"], "texts.txt"),
        (
            ["zeroshot", "--data", str(tmp_path / "classes")]
            + ["--templates", str(tmp_path / "templates.txt")],
            "templates.txt, line 2",
        ),
    ):
        assert run_cli([*args, *pretrained]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / bad}" in err and "not UTF-8 text (byte 0xef)" in err, err


# --- one caption reader (item 9) ----------------------------------------------------------------


def test_retrieval_reads_bom_and_tsv_tables_like_csv(checkpoint, tmp_path):
    images = tmp_path / "images"
    write_images(images, 3)
    rows = [("good0.png", "a blue thing"), ("good1.png", "a purple thing")]
    rows += [("good2.png", "a red thing"), ("good0.png", "blue again")]
    tables = {
        "plain.csv": "image,caption\n" + "".join(f"{i},{c}\n" for i, c in rows),
        "bom.csv": "\ufeffimage,caption\n" + "".join(f"{i},{c}\n" for i, c in rows),
        "tabs.tsv": "image\tcaption\n" + "".join(f"{i}\t{c}\n" for i, c in rows),
    }
    reports = {}
    for name, text in tables.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        report = tmp_path / f"{name}.json"
        args = ["retrieval", "--pretrained", str(checkpoint), "--captions", str(tmp_path / name)]
        assert run_cli([*args, "--images", str(images), "--quiet", "--report", str(report)]) == 0
        reports[name] = json.loads(report.read_text())
    assert reports["plain.csv"]["images"] == 3 and reports["plain.csv"]["captions"] == 4
    assert reports["bom.csv"] == reports["plain.csv"] == reports["tabs.tsv"]


# --- progress in logs ---------------------------------------------------------------------------


def test_progress_to_a_log_has_no_carriage_returns(checkpoint, tmp_path, capsys):
    write_images(tmp_path / "images", 3)
    args = ["embed", "--pretrained", str(checkpoint), "--images", str(tmp_path / "images")]
    assert run_cli([*args, "--output", str(tmp_path / "out.npy"), "--batch-size", "1"]) == 0
    err = capsys.readouterr().err  # captured: not a terminal
    assert "\r" not in err
    lines = err.splitlines()
    assert 2 <= len(lines) <= 4 and lines[-1].startswith("embedding images: 100% 3/3")
