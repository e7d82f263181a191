"""The captioner-versus-copying table on held-out scenes: the nearest-neighbour baseline copies
the caption of the most similar training image, the captioner's captions lose the prompt,
and both are scored alike."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mmcl
from mmcl.eval.scene_captioning import (
    SceneCaptioningSuite,
    nearest_neighbour_captions,
    score_captions,
)
from mmcl.nn.generation import Generated

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


class FixedCaptioner(nn.Module):
    """Says "two red stars" of every image; its ITC image features are the pixels."""

    image_size = 32

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # for the device
        self.tokenizer = mmcl.create_model("tiny-blip").tokenizer
        self.prompts = []

    def encode_image(self, images, normalize=False):
        return F.normalize(images.flatten(1), dim=-1)

    def generate(self, images, prompt, max_new_tokens):
        self.prompts.append(prompt)
        said = self.tokenizer.encode("two red stars") + [self.tokenizer.sep_token_id]
        tokens = torch.cat([prompt, torch.tensor([said] * len(images))], dim=1)
        return Generated(tokens, torch.zeros(len(images)), torch.full((len(images),), len(said)))


def test_the_baseline_copies_the_caption_of_the_most_similar_training_image():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    queries = torch.tensor([[2.0, 0.1], [0.1, 3.0], [1.0, 1.1], [0.0, 1.0]])
    copied = nearest_neighbour_captions(train, ["east", "north", "north-east"], queries)
    assert copied == ["east", "north", "north-east", "north"]


def test_an_identical_training_image_gives_its_caption_and_the_prompt_is_dropped():
    model = FixedCaptioner()
    suite = SceneCaptioningSuite(test_size=6, train_size=4, references=3)
    # Training images: the test images in reverse order, then the four drawn ones.
    suite.train_images = torch.cat([suite.test_images.flip(0), suite.train_images])
    suite.train_captions = [f"caption of test image {i}" for i in reversed(range(6))] + [
        "a decoy"
    ] * 4
    table = suite.table(model)
    assert suite.last_captions["nearest_neighbour"] == [
        f"caption of test image {i}" for i in range(6)
    ]
    assert suite.last_captions["captioner"] == ["two red stars"] * 6
    prompt = model.tokenizer(["a picture of"], first_token="[DEC]").input_ids[0, :-1]  # no [SEP]
    assert model.prompts[0].tolist() == [prompt.tolist()] * 6
    # "two red stars" is right on colour exactly for the red scenes, on shape for the stars.
    scenes = suite.scenes
    assert table["captioner"]["colour"] == pytest.approx(sum(s.colour == "red" for s in scenes) / 6)
    assert table["captioner"]["shape"] == pytest.approx(sum(s.shape == "star" for s in scenes) / 6)
    assert table["nearest_neighbour"]["colour"] == 0.0  # "caption of ..." names no colour


def test_captions_equal_to_a_reference_score_bleu_one_and_empty_ones_zero():
    suite = SceneCaptioningSuite(test_size=5, train_size=1, references=2)
    for references in suite.references:  # five truthful captions, each a different draw
        assert len(references) == 2
    scores = score_captions([r[0] for r in suite.references], suite.scenes, suite.references)
    assert scores["bleu4"] == pytest.approx(1.0)
    nothing = score_captions(["nothing here"] * 5, suite.scenes, suite.references)
    assert nothing == pytest.approx(
        dict.fromkeys(["shape", "colour", "count", "bleu4", "cider_d"], 0.0), abs=1e-9
    )


def test_the_module_example_runs():
    from mmcl.eval import scene_captioning

    assert doctest.testmod(scene_captioning).failed == 0


def test_a_coca_captions_from_its_start_token_in_clip_tokens():
    coca = mmcl.create_model("tiny-coca").eval()
    tokenizer = mmcl.tokenize  # CLIP's BPE ids: start token, pieces, end token, padding
    said = tokenizer(["two red stars"])[0]
    said = said[: int(said.argmax()) + 1]  # up to the end token (the largest id)
    asked = []

    def fixed_generate(images, **options):
        asked.append(options)
        tokens = said.expand(len(images), -1)
        return Generated(tokens, torch.zeros(len(images)), torch.full((len(images),), len(said)))

    coca.generate = fixed_generate
    suite = SceneCaptioningSuite(test_size=4, train_size=3, references=2)
    table = suite.table(coca)
    assert suite.last_captions["captioner"] == ["two red stars"] * 4
    assert all("prompt" not in options for options in asked)  # no BLIP prompt for CoCa
    scenes = suite.scenes
    assert table["captioner"]["colour"] == pytest.approx(sum(s.colour == "red" for s in scenes) / 4)
    assert len(suite.last_captions["nearest_neighbour"]) == 4  # copied through CoCa's features
