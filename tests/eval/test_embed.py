"""Embedding: length-bucketed texts against open_clip's padded computation; image folders
embedded part by part against the one-shot path, through a simulated crash and a resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import nn

import mmcl
from conftest import max_abs_diff, open_clip_reference
from mmcl.data.images import ImageFiles, ImageReadError, list_images
from mmcl.eval.embed import embed_images, embed_texts
from mmcl.eval.embed_folder import embed_image_folder, parts_folder
from mmcl.io.checkpoints.openai import from_openai_layout
from mmcl.models import CLIP, CLIPConfig, get_model_config


class CountingModel(nn.Module):
    """Passes calls to `model`, counts them, and fails the `fail_at`-th image batch."""

    def __init__(self, model: nn.Module, fail_at: int | None = None):
        super().__init__()
        self.model = model
        self.fail_at = fail_at
        self.image_calls = 0
        self.text_lengths: list[int] = []  # computed length (longest text) of each text batch

    @property
    def image_size(self) -> int:
        return self.model.image_size

    def encode_image(self, images, normalize=False):
        self.image_calls += 1
        if self.image_calls == self.fail_at:
            raise RuntimeError("simulated crash")
        return self.model.encode_image(images, normalize=normalize)

    def encode_text(self, tokens, normalize=False):
        self.text_lengths.append(int(tokens.argmax(dim=-1).max()) + 1)
        return self.model.encode_text(tokens, normalize=normalize)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return mmcl.create_model("tiny-vit")


@pytest.fixture
def image_paths(tmp_path):
    """Ten small images of distinct colours and sizes, in a nested folder."""
    for i in range(10):
        folder = tmp_path / "images" / ("a" if i < 6 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32 + i, 30 + 2 * i), (25 * i, 255 - 20 * i, 60)).save(folder / f"{i}.png")
    return list_images(tmp_path / "images")


def one_shot(model, paths) -> torch.Tensor:
    preprocess = mmcl.get_preprocess(model)
    with torch.no_grad():
        return model.encode_image(torch.stack([preprocess(Image.open(p)) for p in paths]), True)


# --- texts --------------------------------------------------------------------------------------


def test_bucketed_texts_equal_open_clip_padded_and_keep_their_order():
    reference = open_clip_reference("tiny-vit")
    model = CLIP(CLIPConfig.from_dict(get_model_config("tiny-vit"))).eval()
    model.load_state_dict(from_openai_layout(reference.state_dict()))
    generator = torch.Generator().manual_seed(0)
    words = "red green blue circle square above below a the of photo small large".split()
    texts = [
        " ".join(words[int(i)] for i in torch.randint(len(words), (int(n),), generator=generator))
        for n in torch.randint(0, 30, (23,), generator=generator)
    ]
    texts += ["", "a very long caption " * 30]  # empty, and cut at the context length
    counting = CountingModel(model)
    features = embed_texts(counting, texts, mmcl.tokenize, batch_size=4, progress=False)
    with torch.no_grad():  # open_clip: one batch, every row padded to all 77 positions
        expected = F.normalize(reference.encode_text(mmcl.tokenize(texts)), dim=-1)
    assert features.shape == (25, 64) and features.dtype == torch.float32
    assert max_abs_diff(features, expected) <= 1e-5
    # Longest batches first, and less work than batching the texts in their given order.
    assert counting.text_lengths == sorted(counting.text_lengths, reverse=True)
    lengths = mmcl.tokenize(texts).argmax(dim=-1) + 1
    unsorted_work = sum(4 * int(lengths[i : i + 4].max()) for i in range(0, len(texts), 4))
    assert 4 * sum(counting.text_lengths) < 0.75 * unsorted_work


# --- image folders ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_folder_in_parts_equals_one_shot(model, image_paths, tmp_path, suffix):
    output = tmp_path / f"features{suffix}"
    result = embed_image_folder(
        model, image_paths, output, batch_size=3, part_size=4, progress=False
    )
    assert (result.rows, result.dim, result.parts_computed, result.parts_reused) == (10, 64, 3, 0)
    features = np.load(output) if suffix == ".npy" else load_file(output)["features"].numpy()
    assert max_abs_diff(torch.from_numpy(features), one_shot(model, image_paths)) < 1e-5
    in_memory = embed_images(model, ImageFiles(image_paths, mmcl.get_preprocess(model)), 10)
    assert max_abs_diff(torch.from_numpy(features), in_memory.features) < 1e-5
    assert result.index.read_text().splitlines() == [str(p) for p in image_paths]
    assert not parts_folder(output).exists()  # joined, then removed


def test_interrupted_run_resumes_with_only_the_missing_parts(model, image_paths, tmp_path):
    # 10 images in parts of 4 and batches of 2: parts [0-3] [4-7] [8-9] take 2, 2, 1 batches.
    complete = embed_image_folder(
        model, image_paths, tmp_path / "complete.npy", batch_size=2, part_size=4, progress=False
    )
    output = tmp_path / "resumed.npy"
    crashing = CountingModel(model, fail_at=5)  # dies on part 2's only batch
    with pytest.raises(RuntimeError, match="simulated crash"):
        embed_image_folder(crashing, image_paths, output, batch_size=2, part_size=4, progress=False)
    parts = parts_folder(output)
    assert sorted(p.name for p in parts.glob("part-*")) == [
        "part-000000.safetensors",
        "part-000001.safetensors",
    ]
    assert not output.exists()
    (parts / ".part-000002.safetensors.abc.tmp").write_bytes(b"half-written")  # a killed write

    rerun = CountingModel(model)
    result = embed_image_folder(
        rerun, image_paths, output, batch_size=2, part_size=4, progress=False
    )
    assert rerun.image_calls == 1
    assert (result.parts_computed, result.parts_reused) == (1, 2)
    assert np.array_equal(np.load(output), np.load(complete.output))
    assert result.index.read_text() == complete.index.read_text()
    assert not parts.exists()


def test_parts_of_another_job_are_refused(model, image_paths, tmp_path):
    output = tmp_path / "features.npy"
    embed_image_folder(model, image_paths, output, part_size=4, keep_parts=True, progress=False)
    assert (parts_folder(output) / "manifest.json").exists()
    torch.manual_seed(1)
    other_weights = mmcl.create_model("tiny-vit")
    for model_, paths, part_size, settings, field in [
        (model, image_paths, 5, None, "part_size"),
        (model, image_paths[:-1], 4, None, "files"),
        (other_weights, image_paths, 4, None, "weights_sha256"),
        (model, image_paths, 4, {"precision": "bf16"}, "settings"),
    ]:
        with pytest.raises(ValueError, match=f"another embedding job.*{field}"):
            embed_image_folder(
                model_, paths, output, part_size=part_size, settings=settings, progress=False
            )
    # The same job again reuses every part.
    again = embed_image_folder(model, image_paths, output, part_size=4, progress=False)
    assert (again.parts_computed, again.parts_reused) == (0, 3)


def test_unreadable_images_stop_the_job_or_are_skipped_and_listed(model, image_paths, tmp_path):
    broken = image_paths[0].parent / "4b.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    paths = list_images(image_paths[0].parent.parent)
    output = tmp_path / "features.npy"
    with pytest.raises(ImageReadError, match="4b.png"):
        embed_image_folder(model, paths, output, part_size=1, progress=False)
    # Part 5 holds only the broken file: it is written empty, and the rest still joins.
    with pytest.warns(UserWarning, match="4b.png"):
        result = embed_image_folder(
            model, paths, output, part_size=1, skip_bad=True, progress=False
        )
    assert result.skipped == [broken] and result.rows == 10
    assert result.index.read_text().splitlines() == [str(p) for p in image_paths]
    assert max_abs_diff(torch.from_numpy(np.load(output)), one_shot(model, image_paths)) < 1e-5


def test_bad_arguments_are_named(model, image_paths, tmp_path):
    with pytest.raises(ValueError, match=r"\.npy or \.safetensors"):
        embed_image_folder(model, image_paths, tmp_path / "features.pt", progress=False)
    with pytest.raises(ValueError, match="part_size"):
        embed_image_folder(model, image_paths, tmp_path / "f.npy", part_size=0, progress=False)
    with pytest.raises(ValueError, match="no images"):
        embed_image_folder(model, [], tmp_path / "f.npy", progress=False)


def test_unreadable_image_in_a_worker_is_a_clean_error(tmp_path):
    # A worker's exception is re-raised from its message alone: it must stay an ImageReadError
    # whose text is our one-line message, not a TypeError or the worker's traceback.
    from torch.utils.data import DataLoader

    from mmcl.data.images import ImageFiles, ImageReadError, collate_skipping_bad

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    loader = DataLoader(
        ImageFiles([bad], lambda image: image, skip_bad=False),
        batch_size=1,
        num_workers=1,
        collate_fn=collate_skipping_bad,
    )
    with pytest.raises(ImageReadError) as caught:
        list(loader)
    message = str(caught.value)
    assert message.startswith(f"{bad}: cannot read image") and "\n" not in message
