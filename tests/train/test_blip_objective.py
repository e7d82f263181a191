"""BLIP's objective (`train.loss: blip`): each term against the pure functions of
`mmcl.train.blip_losses` on hand-built inputs, the prompt masked out of the LM loss, ITM
negatives never sharing an image or a caption, and a few steps on the engine."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import mmcl
from mmcl.data.scenes import SceneCaptions
from mmcl.models.blip import Blip
from mmcl.models.blip_config import BlipConfig
from mmcl.recipe import text_tokenizer
from mmcl.train import TrainConfig, Trainer
from mmcl.train.blip_losses import (
    IGNORE,
    contrastive_loss,
    itm_loss,
    itm_pairs,
    lm_loss,
    lm_targets,
    pair_ids,
    sample_hard_negatives,
)
from mmcl.train.blip_objective import BlipObjective, row_fingerprints, trim_padding, with_prompt
from mmcl.train.objectives import default_objective

TINY = {
    "blip_vision": {"image_size": 16, "patch_size": 8, "width": 16, "layers": 1, "heads": 2,
                    "mlp_width": 32},
    "blip_text": {"vocab_size": 40, "width": 16, "layers": 1, "heads": 2, "mlp_width": 32,
                  "max_positions": 20, "pad_id": 0, "sep_id": 3, "dec_id": 5, "enc_id": 6},
    "embed_dim": 8,
}  # fmt: skip
PROMPT = [30, 31, 32]  # "a picture of"
# [CLS]=2 ... [SEP]=3, padded with 0; rows 1 and 3 are the same caption.
TEXTS = torch.tensor(
    [[2, 10, 11, 3, 0, 0], [2, 12, 3, 0, 0, 0], [2, 13, 14, 15, 3, 0], [2, 12, 3, 0, 0, 0]]
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


class Recording(nn.Module):
    """Passes the call to the BLIP it wraps (as DistributedDataParallel does, under
    `.module`) and counts the calls."""

    def __init__(self, blip: Blip):
        super().__init__()
        self.module, self.calls = blip, 0

    def forward(self, images, texts, negatives, caption_texts):
        self.calls += 1
        return self.module(images, texts, negatives=negatives, caption_texts=caption_texts)


def tiny_blip() -> Blip:
    torch.manual_seed(0)
    return Blip(BlipConfig.from_dict(TINY)).eval()


def test_the_prompt_goes_after_the_first_token_and_is_left_out_of_the_lm_targets():
    tokens = torch.tensor([[2, 10, 11, 3, 0], [2, 12, 3, 0, 0]])
    with_words = with_prompt(tokens, PROMPT)
    assert with_words.tolist() == [
        [2, 30, 31, 32, 10, 11, 3, 0],
        [2, 30, 31, 32, 12, 3, 0, 0],
    ]
    # The start token and the three prompt words are never predicted, nor is padding.
    assert lm_targets(with_words, 1 + len(PROMPT)).tolist() == [
        [IGNORE, IGNORE, IGNORE, IGNORE, 10, 11, 3, IGNORE],
        [IGNORE, IGNORE, IGNORE, IGNORE, 12, 3, IGNORE, IGNORE],
    ]


def test_padding_columns_of_every_row_are_cut():
    assert trim_padding(TEXTS, 0).shape == (4, 5)  # the longest row has 5 tokens
    assert trim_padding(torch.tensor([[2, 3, 0, 0]]), 0).tolist() == [[2, 3]]


def test_rows_sharing_an_image_or_a_caption_form_one_group():
    images = torch.zeros(5, 3, 2, 2)
    images[1], images[3], images[4] = 1.0, 2.0, 3.0  # images 0 and 2 are the same
    texts = torch.tensor([[2, 7], [2, 8], [2, 9], [2, 9], [2, 6]])  # texts 2 and 3 too
    # 0 ~ 2 by image, 2 ~ 3 by caption: {0, 2, 3}; 1 and 4 alone.
    assert pair_ids(images, texts).tolist() == [0, 1, 0, 0, 4]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
def test_row_fingerprints_are_equal_for_equal_rows_and_differ_for_one_changed_value(dtype):
    rows = torch.randint(0, 200, (4, 3, 2, 2)).to(dtype)
    rows[2] = rows[0]
    rows[3] = rows[0]
    rows[3, 1, 1, 1] += 1  # one value of one channel differs
    fingerprints = row_fingerprints(rows).tolist()
    assert fingerprints[0] == fingerprints[2]
    assert len({fingerprints[0], fingerprints[1], fingerprints[3]}) == 3


def test_each_term_equals_the_pure_losses_on_the_same_draws():
    model, images = tiny_blip(), torch.randn(4, 3, 16, 16)
    objective = BlipObjective(prompt_ids=PROMPT, label_smoothing=0.0)
    with torch.no_grad():
        model.temp.fill_(0.1)
    recording = Recording(model)
    torch.manual_seed(3)
    terms, outputs = objective(recording, images, TEXTS)
    assert recording.calls == 1  # ONE forward call for all three terms
    assert sorted(terms) == ["itc", "itm", "lm"]

    texts = TEXTS[:, :5]
    with torch.no_grad():
        image_features = model.encode_image(images, normalize=True)
        text_features = model.encode_text(texts, normalize=True)
        itc = contrastive_loss(image_features, text_features, torch.tensor(0.1))
        torch.manual_seed(3)  # the same draws: rows 1 and 3 are one caption, so one group
        negative_texts, negative_images = sample_hard_negatives(
            image_features @ text_features.T / 0.1, torch.tensor([0, 1, 2, 1])
        )
        image_tokens = model.encode_image_tokens(images)
        pair_images, pair_texts, labels = itm_pairs(
            image_tokens, texts, negative_texts, negative_images
        )
        itm = itm_loss(model.itm_logits(pair_images, pair_texts), labels)
        caption_texts = torch.tensor(
            [
                [2, 30, 31, 32, 10, 11, 3, 0],
                [2, 30, 31, 32, 12, 3, 0, 0],
                [2, 30, 31, 32, 13, 14, 15, 3],
                [2, 30, 31, 32, 12, 3, 0, 0],
            ]
        )
        lm = lm_loss(
            model.caption_logits(image_tokens, caption_texts), lm_targets(caption_texts, 4), 0.0
        )
    assert outputs["itm_negative_texts"].tolist() == negative_texts.tolist()
    assert terms["itc"].item() == pytest.approx(itc.item(), abs=1e-5)
    assert terms["itm"].item() == pytest.approx(itm.item(), abs=1e-5)
    assert terms["lm"].item() == pytest.approx(lm.item(), abs=1e-5)


@pytest.mark.parametrize(("start", "clamped"), [(1.0, 0.5), (1e-5, 0.001), (0.2, 0.2)])
def test_the_temperature_is_clamped_to_blips_range_before_the_step_uses_it(start, clamped):
    model, images = tiny_blip(), torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        model.temp.fill_(start)
    terms, outputs = BlipObjective(prompt_ids=PROMPT)(model, images, TEXTS)
    assert model.temp.item() == pytest.approx(clamped)
    with torch.no_grad():
        itc = contrastive_loss(
            outputs["image_features"], outputs["text_features"], torch.tensor(clamped)
        )
    assert terms["itc"].item() == pytest.approx(itc.item(), rel=1e-5)


def test_the_temperature_is_trained_by_the_itc_term_alone():
    model, images = tiny_blip(), torch.randn(4, 3, 16, 16)
    objective = BlipObjective(prompt_ids=PROMPT, itc_weight=2.0)
    terms, outputs = objective(model, images, TEXTS)
    sum(terms.values()).backward()
    # d(2 * ITC)/dT by central differences of the pure loss: the ITM negatives and the other
    # terms do not depend on T.
    image, text = outputs["image_features"].detach(), outputs["text_features"].detach()
    step = 1e-3
    with torch.no_grad():
        up, down = (
            contrastive_loss(
                image.double(), text.double(), torch.tensor(0.07 + s, dtype=torch.float64)
            )
            for s in (step, -step)
        )
    assert model.temp.grad.item() == pytest.approx(2 * (up - down).item() / (2 * step), rel=1e-3)
    optimizer = torch.optim.SGD([model.temp], lr=1e-3)
    optimizer.step()
    assert model.temp.item() == pytest.approx(0.07 - 1e-3 * model.temp.grad.item())


def test_itm_negatives_never_pair_an_image_with_its_own_caption_repeated():
    model, images = tiny_blip(), torch.randn(4, 3, 16, 16)
    objective = BlipObjective(prompt_ids=PROMPT)
    # Rows 1 and 3 hold one caption: text 3 is no negative of image 1, nor image 3 of text
    # 1 (and the other way round).
    groups = [{0}, {1, 3}, {2}, {1, 3}]
    for _ in range(25):
        _, outputs = objective(model, images, TEXTS)
        negative_texts, negative_images = (
            outputs["itm_negative_texts"],
            outputs["itm_negative_images"],
        )
        for row, group in enumerate(groups):
            assert negative_texts[row].item() not in group
            assert negative_images[row].item() not in group


def test_one_positive_to_two_negatives_in_the_model_call():
    model, images = tiny_blip(), torch.randn(4, 3, 16, 16)
    negatives = (torch.tensor([1, 0, 3, 2]), torch.tensor([2, 3, 0, 1]))
    outputs = model(
        images,
        TEXTS,
        negatives=lambda i, t, tokens, texts: (texts[negatives[0]], tokens[negatives[1]]),
    )
    pair_images, pair_texts, _ = itm_pairs(model.encode_image_tokens(images), TEXTS, *negatives)
    expected = model.itm_logits(pair_images, pair_texts)
    assert outputs["itm_logits"].shape == (12, 2)
    torch.testing.assert_close(outputs["itm_logits"], expected)


def test_every_parameter_gets_a_gradient_from_the_one_call():
    model = tiny_blip().train()
    terms, _ = BlipObjective(prompt_ids=PROMPT)(model, torch.randn(4, 3, 16, 16), TEXTS)
    sum(terms.values()).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []  # as DistributedDataParallel with find_unused_parameters=False needs


def test_loss_blip_names_the_objective():
    assert isinstance(default_objective("blip"), BlipObjective)


def test_a_few_engine_steps_train_tiny_blip_and_save_a_self_contained_folder(tmp_path):
    model = mmcl.create_model(
        "tiny-blip", blip_vision={"width": 32, "layers": 1, "mlp_width": 64},
        blip_text={"width": 32, "layers": 1, "mlp_width": 64}, embed_dim=16,
    )  # fmt: skip
    data = SceneCaptions("train", 48, tokenizer=text_tokenizer(model))
    config = TrainConfig(
        loss="blip", steps=3, batch_size=16, lr=1e-3, warmup_steps=1, progress=False,
        tensorboard=False, log_every=1, output_dir=str(tmp_path / "run"),
    )  # fmt: skip
    result = Trainer(model, data, config).fit()
    assert result.steps == 3
    logged = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    first = logged[0]
    assert first["loss"] == pytest.approx(first["itc"] + first["itm"] + first["lm"], rel=1e-5)
    # The folder holds the weights and the vocabulary: it loads by itself, tokenising alike.
    loaded, _ = mmcl.load(tmp_path / "run")
    text = "three big green hearts at the top"
    assert torch.equal(loaded.tokenizer([text]).input_ids, model.tokenizer([text]).input_ids)
    assert loaded.tokenizer.source.startswith(str(tmp_path / "run"))
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_image(images), model.eval().encode_image(images))
