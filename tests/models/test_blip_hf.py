"""BLIP against Hugging Face's classes on the same tiny random weights (fp32)."""

from __future__ import annotations

import pytest
import torch
import transformers

import mmcl
import tiny_captioners
from mmcl.cli import main as cli_main

VISION = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
)
TEXT = dict(
    vocab_size=40,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=24,
    encoder_hidden_size=32,
    bos_token_id=38,
    sep_token_id=3,
    pad_token_id=0,
)
DEC, ENC, SEP = 38, 39, 3


def hf_model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.BlipConfig(
        vision_config=VISION, text_config=TEXT, image_text_hidden_size=16
    )
    model = getattr(transformers, kind)(config).eval()
    with torch.no_grad():  # HF initialises biases and LayerNorms to constants: randomise all
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def inputs(start: int):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 32, 32)
    tokens = torch.tensor([[start, 5, 6, 7, SEP], [start, 8, SEP, 0, 0]])
    return images, tokens, (tokens != 0).long()


def saved(model, folder):
    model.save_pretrained(folder)
    return mmcl.load(folder)[0]


def test_captioner_image_tokens_and_lm_logits_equal_huggingface(tmp_path):
    hf = hf_model("BlipForConditionalGeneration")
    ours = saved(hf, tmp_path / "hf")
    images, tokens, mask = inputs(DEC)
    with torch.no_grad():
        expected = hf(pixel_values=images, input_ids=tokens, attention_mask=mask)
        image_tokens = ours.encode_image_tokens(images)
        logits = ours.caption_logits(image_tokens, tokens)
    torch.testing.assert_close(image_tokens, expected.image_embeds, atol=1e-5, rtol=0)
    real = mask.bool()  # HF computes padded positions too; only real ones are compared
    torch.testing.assert_close(logits[real], expected.logits[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_itm_head", [True, False])
def test_retrieval_itm_and_itc_equal_huggingface(tmp_path, use_itm_head):
    hf = hf_model("BlipForImageTextRetrieval")
    ours = saved(hf, tmp_path / "hf")
    images, tokens, mask = inputs(ENC if use_itm_head else 2)
    with torch.no_grad():
        expected = hf(
            input_ids=tokens, pixel_values=images, attention_mask=mask, use_itm_head=use_itm_head
        ).itm_score
        if use_itm_head:
            got = ours.itm_logits(ours.encode_image_tokens(images), tokens)
        else:
            got = (
                ours.encode_image(images, normalize=True)
                @ ours.encode_text(tokens, normalize=True).t()
            )
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_question_answering_logits_equal_huggingface(tmp_path):
    hf = hf_model("BlipForQuestionAnswering")
    ours = saved(hf, tmp_path / "hf")
    images, question, question_mask = inputs(2)
    # Questions without padding: transformers 5.24's BLIP text decoder ignores its
    # encoder_attention_mask (it attends to padded question positions); BLIP masks them.
    question, question_mask = question[:, :3], question_mask[:, :3]
    answer = torch.tensor([[DEC, 9, 10, SEP], [DEC, 11, SEP, 0]])
    with torch.no_grad():  # HF's forward returns no logits: its own parts, as it chains them
        image_embeds = hf.vision_model(pixel_values=images).last_hidden_state
        question_states = hf.text_encoder(
            input_ids=question, attention_mask=question_mask, encoder_hidden_states=image_embeds
        ).last_hidden_state
        expected = hf.text_decoder(
            input_ids=answer,
            attention_mask=(answer != 0).long(),
            encoder_hidden_states=question_states,
            encoder_attention_mask=question_mask,
        ).logits
        got = ours.answer_logits(ours.encode_image_tokens(images), question, answer)
    real = answer != 0
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["BlipForConditionalGeneration", "BlipForImageTextRetrieval"])
def test_convert_to_mmcl_and_back_to_hf_gives_identical_logits(tmp_path, kind, capsys):
    hf = hf_model(kind)
    hf.save_pretrained(tmp_path / "hf")
    assert (
        cli_main(["convert", str(tmp_path / "hf"), str(tmp_path / "m.safetensors"), "--to", "mmcl"])
        == 0
    )
    assert (
        cli_main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "back"), "--to", "hf"])
        == 0
    )
    back = getattr(transformers, kind).from_pretrained(tmp_path / "back").eval()
    images, tokens, mask = inputs(DEC if "Generation" in kind else ENC)
    with torch.no_grad():
        if "Generation" in kind:
            a = hf(pixel_values=images, input_ids=tokens, attention_mask=mask).logits
            b = back(pixel_values=images, input_ids=tokens, attention_mask=mask).logits
        else:
            a = hf(input_ids=tokens, pixel_values=images, attention_mask=mask).itm_score
            b = back(input_ids=tokens, pixel_values=images, attention_mask=mask).itm_score
    assert torch.equal(a, b)


def test_greedy_captions_equal_huggingface_generate(tmp_path):
    hf = hf_model("BlipForConditionalGeneration", seed=3)
    ours = saved(hf, tmp_path / "hf")
    images = inputs(DEC)[0]
    with torch.no_grad():
        expected = hf.generate(pixel_values=images, do_sample=False, num_beams=1, max_new_tokens=8)
    got = ours.generate(images, max_new_tokens=8).tokens
    # Both return the [DEC] prompt, then the caption up to [SEP], then padding.
    for row_got, row_expected in zip(got.tolist(), expected.tolist(), strict=True):
        while row_expected and row_expected[-1] == 0:
            row_expected.pop()
        while row_got and row_got[-1] == 0:
            row_got.pop()
        assert row_got == row_expected


def test_a_generated_pad_token_is_attended_to_as_huggingface_generate_does(tmp_path):
    # These random weights emit [PAD] (id 0) mid-caption. transformers' generate attends to it
    # (its mask grows by a one a token): only a prompt's padding is masked.
    torch.manual_seed(3)
    config = transformers.BlipConfig(
        vision_config=tiny_captioners.VISION,
        text_config=tiny_captioners.TEXT,
        image_text_hidden_size=16,
    )
    hf = transformers.BlipForConditionalGeneration(config).eval()
    with torch.no_grad():
        for parameter in hf.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    ours = saved(hf, tmp_path / "hf")
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = hf.generate(pixel_values=images, do_sample=False, max_new_tokens=8)
    assert (expected[:, 1:-1] == 0).any(), "no [PAD] mid-caption: the case is not tested"
    for beams in (1, 3):
        with torch.no_grad():
            expected = hf.generate(
                pixel_values=images, do_sample=False, num_beams=beams, max_new_tokens=8
            )
        got = ours.generate(images, max_new_tokens=8, beams=beams).tokens
        for row_got, row_expected in zip(got.tolist(), expected.tolist(), strict=True):
            while row_expected[-1] == 0:
                row_expected.pop()
            while row_got[-1] == 0:
                row_got.pop()
            assert row_got == row_expected, beams


def test_greedy_captions_after_a_prompt_equal_huggingface_generate(tmp_path):
    hf = hf_model("BlipForConditionalGeneration", seed=4)
    ours = saved(hf, tmp_path / "hf")
    images = inputs(DEC)[0]
    prompt = torch.tensor([[2, 5, 6, 7, SEP]] * 2)  # "[CLS] a picture of [SEP]", as tokenized
    with torch.no_grad():
        expected = hf.generate(
            pixel_values=images, input_ids=prompt.clone(), do_sample=False, max_new_tokens=6
        )
    got = ours.generate(images, prompt=prompt[:, :-1], max_new_tokens=6).tokens
    assert got[:, 0].tolist() == [DEC, DEC]  # the start token became [DEC], as in HF
    for row_got, row_expected in zip(got.tolist(), expected.tolist(), strict=True):
        assert [t for t in row_got if t] == [t for t in row_expected if t]


@pytest.mark.parametrize("beams", [1, 3])
def test_answers_equal_huggingface_generate(tmp_path, beams):
    hf = hf_model("BlipForQuestionAnswering", seed=5)
    ours = saved(hf, tmp_path / "hf")
    images, question, question_mask = inputs(2)
    question, question_mask = question[:, :3], question_mask[:, :3]  # unpadded: see above
    with torch.no_grad():
        expected = hf.generate(
            input_ids=question,
            pixel_values=images,
            attention_mask=question_mask,
            do_sample=False,
            num_beams=beams,
            max_new_tokens=6,
        )
    got = ours.answer(images, question, max_new_tokens=6, beams=beams).tokens
    assert got[:, 0].tolist() == [DEC, DEC]
    for row_got, row_expected in zip(got.tolist(), expected.tolist(), strict=True):
        assert [t for t in row_got if t] == [t for t in row_expected if t]
