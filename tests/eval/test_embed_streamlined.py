"""`embed_image_folder` runs the streamlined preprocessing in its workers: the features are
exactly those of the plain transform, and its manifest still records the plain transform."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import mmcl
from mmcl.data.images import ImageFiles, list_images
from mmcl.eval.embed import embed_images
from mmcl.eval.embed_folder import embed_image_folder, parts_folder


@pytest.fixture
def mixed_images(tmp_path):
    """Images that need upsampling, cropping or neither, in several modes."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    sizes = [(32, 32), (20, 28), (50, 40), (32, 32), (70, 33), (31, 45)]
    modes = ["RGB", "RGB", "RGBA", "L", "P", "RGB"]
    for index, ((width, height), mode) in enumerate(zip(sizes, modes, strict=True)):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        image = image.quantize(16) if mode == "P" else image.convert(mode)
        image.save(folder / f"{index}.png")
    return list_images(folder)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("workers", [0, 2])
def test_features_equal_the_plain_transforms_exactly(
    name, precision, workers, mixed_images, tmp_path
):
    torch.manual_seed(0)
    model = mmcl.create_model(name, precision=precision)
    output = tmp_path / "features.npy"
    embed_image_folder(
        model, mixed_images, output, batch_size=4, workers=workers, keep_parts=True, progress=False
    )
    plain = embed_images(
        model, ImageFiles(mixed_images, mmcl.get_preprocess(model)), batch_size=4, progress=False
    )
    assert torch.equal(torch.from_numpy(np.load(output)), plain.features)
    manifest = json.loads((parts_folder(output) / "manifest.json").read_text())
    assert manifest["preprocess"] == repr(mmcl.get_preprocess(model))
