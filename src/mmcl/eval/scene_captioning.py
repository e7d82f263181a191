"""A captioner on held-out built-in scenes, beside the nearest-neighbour baseline.

The captioner's greedy captions (a BLIP's after its prompt, e.g. "a picture of"; a CoCa's
from its start token, as it is trained) and the baseline's
(the caption of the most similar TRAINING image under the same model's ITC image features:
a captioner that only copies) are scored alike:

- attribute accuracy (`mmcl.eval.scene_captions`: shape, colour, count named rightly);
- BLEU-4 and CIDEr-D (`mmcl.eval.captioning`) against `references` truthful captions of each
  scene, written by the scenes' own caption generator with other random choices (as COCO
  has five per image); the data set's caption is the first.

`scene_captioning_table` runs both; `SceneCaptioningSuite` does it during training
(`eval: {caption_size: N}` in a recipe).

>>> import mmcl
>>> model = mmcl.create_model("tiny-blip")
>>> table = scene_captioning_table(model, test_size=4, train_size=8, max_new_tokens=3)
>>> sorted(table), sorted(table["captioner"])
(['captioner', 'nearest_neighbour'], ['bleu4', 'cider_d', 'colour', 'count', 'shape'])
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from mmcl.data.scenes import SceneCaptions
from mmcl.data.scenes_text import caption
from mmcl.eval.captioner import Captioner, CaptionSettings
from mmcl.eval.captioning import bleu, cider_d
from mmcl.eval.model_text import model_text
from mmcl.eval.scene_captions import attribute_accuracy
from mmcl.models.coca import CoCa

__all__ = [
    "SceneCaptioningSuite",
    "generate_captions",
    "nearest_neighbour_captions",
    "scene_captioning_table",
    "score_captions",
]


def generate_captions(
    model,
    images: torch.Tensor,
    prompt: str = "a picture of",
    max_new_tokens: int = 20,
    batch_size: int = 250,
) -> list[str]:
    """Greedy captions of `images`: a BLIP's (its WordPiece `tokenizer`) after `prompt`,
    without the prompt's words; a CoCa's from its start token (`prompt` unused: CoCa learns
    captions without one)."""
    if isinstance(model, CoCa):
        captioner = Captioner(model, model_text(model), CaptionSettings(max_length=max_new_tokens))
        device = next(model.parameters()).device
        return [
            text
            for start in range(0, len(images), batch_size)
            for text in captioner.caption(images[start : start + batch_size].to(device))
        ]
    tokenizer = model.tokenizer
    prompt_ids = [tokenizer.dec_token_id, *tokenizer.encode(prompt)]
    device = next(model.parameters()).device
    captions = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size].to(device)
        prompts = torch.tensor([prompt_ids] * len(chunk), device=device)
        generated = model.generate(chunk, prompt=prompts, max_new_tokens=max_new_tokens)
        captions += [tokenizer.decode(row[len(prompt_ids) :]) for row in generated.tokens.cpu()]
    return captions


def nearest_neighbour_captions(
    train_features: torch.Tensor,
    train_captions: Sequence[str],
    features: torch.Tensor,
) -> list[str]:
    """For each row of `features`, the caption of the training image whose (normalised)
    features are the most similar (cosine; the first of ties)."""
    if len(train_features) != len(train_captions):
        raise ValueError(
            f"{len(train_features)} training features but {len(train_captions)} captions"
        )
    train = torch.nn.functional.normalize(train_features.float(), dim=-1)
    queries = torch.nn.functional.normalize(features.float(), dim=-1)
    nearest = (queries @ train.T).argmax(dim=1)
    return [train_captions[i] for i in nearest.tolist()]


def score_captions(
    captions: Sequence[str], scenes: Sequence, references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Attribute accuracies (shape, colour, count), BLEU-4 and CIDEr-D of `captions`."""
    scores = attribute_accuracy(captions, scenes)
    scores["bleu4"] = bleu(list(captions), [list(r) for r in references], n=4)
    scores["cider_d"] = cider_d(list(captions), [list(r) for r in references])
    return scores


class SceneCaptioningSuite:
    """`suite(model) -> metrics`: `scene_captioning_table` flattened ("captions/colour",
    "nearest_neighbour/cider_d", ...), on images rendered once when built."""

    def __init__(
        self,
        test_size: int = 500,
        train_size: int = 2000,
        image_size: int = 32,
        references: int = 5,
        prompt: str = "a picture of",
        max_new_tokens: int = 20,
        seed: int = 0,
    ):
        if references < 1:
            raise ValueError(f"references must be at least 1, got {references}")
        test = SceneCaptions("test", test_size, image_size=image_size, seed=seed)
        train = SceneCaptions("train", train_size, image_size=image_size, seed=seed)
        self.test_images = torch.stack([test[i][0] for i in range(test_size)])
        self.scenes = [test.scene(i) for i in range(test_size)]
        self.references = [
            [test.caption(i)]
            + [
                caption(scene, random.Random(f"reference/{seed}/{i}/{k}"))
                for k in range(1, references)
            ]
            for i, scene in enumerate(self.scenes)
        ]
        self.train_images = torch.stack([train[i][0] for i in range(train_size)])
        self.train_captions = [train.caption(i) for i in range(train_size)]
        self.prompt, self.max_new_tokens = prompt, max_new_tokens

    def table(self, model) -> dict[str, dict[str, float]]:
        with torch.no_grad():
            captions = generate_captions(model, self.test_images, self.prompt, self.max_new_tokens)
            copied = nearest_neighbour_captions(
                _features(model, self.train_images),
                self.train_captions,
                _features(model, self.test_images),
            )
        self.last_captions = {"captioner": captions, "nearest_neighbour": copied}
        return {
            "captioner": score_captions(captions, self.scenes, self.references),
            "nearest_neighbour": score_captions(copied, self.scenes, self.references),
        }

    def __call__(self, model) -> dict[str, float]:
        return {
            f"{'captions' if who == 'captioner' else who}/{name}": value
            for who, scores in self.table(model).items()
            for name, value in scores.items()
        }


def scene_captioning_table(
    model,
    test_size: int = 500,
    train_size: int = 2000,
    references: int = 5,
    prompt: str = "a picture of",
    max_new_tokens: int = 20,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """``{"captioner": scores, "nearest_neighbour": scores}`` (`score_captions`) on
    `test_size` held-out scenes, the baseline copying from `train_size` training scenes."""
    suite = SceneCaptioningSuite(
        test_size, train_size, model.image_size, references, prompt, max_new_tokens, seed
    )
    return suite.table(model)


def _features(model, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat(
        [
            model.encode_image(images[i : i + batch_size].to(device), normalize=True).float().cpu()
            for i in range(0, len(images), batch_size)
        ]
    )
