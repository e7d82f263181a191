"""`mmcl convert --to hf` writes what `CLIPProcessor.from_pretrained(folder)` reads: its
tokenizer gives mmcl's ids, its image processor mmcl's pixels, and transformers' CLIPModel
on what the processor gives computes mmcl's features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, CLIPModel, CLIPProcessor

import mmcl
from conftest import max_abs_diff
from mmcl.cli import main
from mmcl.io.checkpoints import save_safetensors
from mmcl.io.transforms import OPENAI_DATASET_STD

EOT = 49407
TEXTS = [
    "a photo of a cat",
    "A RED Circle, above two blue squares!",
    "Hello, World!! What?! ... (yes) [no] {maybe} #tag @user 50% $3.14",
    "don't stop: it's what we'll do, they've said, I'm sure, you'd agree, they're right",
    "numbers 1234567890 and 3.14159 and 1,000,000",
    "café naïve résumé Ångström façade",
    "Привет мир, Γειά σου κόσμε, שלום עולם, مرحبا بالعالم",
    "中文字符 日本語のテキスト 한국어 텍스트",
    "emoji 😀👍🏽🇫🇷 and symbols © ® ™ ∑ ∞ → ←",
    "  tabs\tand\nnew lines\r\n and   spaces  ",
    "",
    " ".join(["a very long caption that goes on"] * 20),  # cut at 77 tokens
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = mmcl.create_model("tiny-vit")
    save_safetensors(model, folder / "tiny.safetensors")
    assert (
        main(["convert", str(folder / "tiny.safetensors"), str(folder / "hf"), "--to", "hf"]) == 0
    )
    return model, folder / "hf"


def images() -> list[Image.Image]:
    rng = np.random.RandomState(0)
    shapes = [(300, 400, 3), (32, 32, 3), (64, 48, 3), (31, 90, 3), (50, 70)]
    return [Image.fromarray(rng.randint(0, 256, shape).astype(np.uint8)) for shape in shapes]


def test_the_tokenizer_gives_mmcls_ids(exported):
    _, folder = exported
    tokenizer = CLIPProcessor.from_pretrained(folder).tokenizer
    ours = mmcl.tokenize(TEXTS)
    for text, row in zip(TEXTS, ours, strict=True):
        theirs = tokenizer(text, truncation=True, max_length=77)["input_ids"]
        length = int((row == EOT).nonzero()[0]) + 1  # mmcl's row up to its end token
        assert theirs == row[:length].tolist(), text
    padded = tokenizer(TEXTS, padding="max_length", truncation=True, return_tensors="pt")
    assert padded["input_ids"].shape == ours.shape  # model_max_length is the context length


def test_the_pil_image_processor_gives_mmcls_pixels(exported):
    model, folder = exported
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    preprocess = mmcl.get_preprocess(model)
    for image in images():
        pixels = processor(images=image, return_tensors="pt")["pixel_values"][0]
        assert max_abs_diff(pixels, preprocess(image)) <= 1e-6, image.size


def test_the_default_image_processor_is_within_one_grey_level(exported):
    model, folder = exported
    processor = CLIPProcessor.from_pretrained(folder).image_processor  # torchvision resizing
    preprocess = mmcl.get_preprocess(model)
    one_level = 1 / 255 / min(OPENAI_DATASET_STD)  # in normalised units
    for image in images():
        pixels = processor(images=image, return_tensors="pt")["pixel_values"][0]
        assert max_abs_diff(pixels, preprocess(image)) <= one_level * 1.001, image.size


def test_transformers_on_the_processors_output_computes_mmcls_features(exported):
    model, folder = exported
    processor = CLIPProcessor.from_pretrained(folder, backend="pil")
    hf = CLIPModel.from_pretrained(folder).eval()
    batch = processor(
        text=TEXTS, images=images()[:2], padding=True, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        theirs_text = hf.get_text_features(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).pooler_output
        theirs_images = hf.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
        ours_text = model.encode_text(mmcl.tokenize(TEXTS))
        ours_images = model.encode_image(
            torch.stack([mmcl.get_preprocess(model)(i) for i in images()[:2]])
        )
    assert max_abs_diff(theirs_text, ours_text) <= 1e-5
    assert max_abs_diff(theirs_images, ours_images) <= 1e-5
