"""BLIP-2 against Hugging Face's `Blip2ForConditionalGeneration` on the same tiny random
weights (fp32), with an OPT and a LLaMA language model."""

from __future__ import annotations

import pytest
import torch
import transformers

import mmcl
from blip2_configs import IMAGE_TOKEN, LMS, QFORMER, QUERIES, VISION, randomised
from mmcl.cli import main as cli_main
from mmcl.train.blip2_losses import stage2_loss


@pytest.fixture(scope="module", params=sorted(LMS))
def saved(request, tmp_path_factory):
    """(Hugging Face model, its save_pretrained folder), for each LM."""
    return hf_folder(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    return hf_folder("llama", tmp_path_factory)


def hf_folder(lm: str, tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.Blip2Config(
        vision_config=VISION,
        qformer_config=QFORMER,
        text_config=LMS[lm]().to_dict(),
        num_query_tokens=QUERIES,
        image_token_index=IMAGE_TOKEN,
    )
    model = randomised(transformers.Blip2ForConditionalGeneration(config))
    folder = tmp_path_factory.mktemp(lm) / "hf"
    model.save_pretrained(folder)
    return model, folder


def batch():
    torch.manual_seed(1)
    images = torch.randn(2, 3, 32, 32)
    text = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])  # the second row padded on the right
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    placeholders = torch.full((2, QUERIES), IMAGE_TOKEN)
    ones = torch.ones(2, QUERIES, dtype=torch.long)
    return images, text, mask, torch.cat([placeholders, text], 1), torch.cat([ones, mask], 1)


def test_loaded_folder_gives_huggingface_logits(saved):
    hf, folder = saved
    ours = mmcl.load(folder)[0]
    images, text, mask, with_placeholders, full_mask = batch()
    with torch.no_grad():
        expected = hf(pixel_values=images, input_ids=with_placeholders, attention_mask=full_mask)
        logits = ours(images, with_placeholders, full_mask)
        prepended = ours(images, text, mask)  # no placeholders: the prompts go before the text
    real = full_mask.bool()
    torch.testing.assert_close(logits[real], expected.logits[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(prepended[real], expected.logits[real], atol=1e-5, rtol=0)
    lm = ours.language_model  # OPT ties its LM head to its input embeddings; LLaMA here does not
    tied = lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
    assert tied == hf.config.text_config.tie_word_embeddings


def test_stage2_loss_equals_huggingface_loss_and_trains_only_qformer_and_projection(saved_llama):
    hf, folder = saved_llama
    ours = mmcl.load(folder)[0]
    images, _, _, with_placeholders, full_mask = batch()
    labels = with_placeholders.masked_fill(full_mask == 0, -100)
    labels[:, :QUERIES] = -100
    expected = hf(
        pixel_values=images, input_ids=with_placeholders, attention_mask=full_mask, labels=labels
    ).loss
    loss = stage2_loss(ours, images, with_placeholders, labels, full_mask)
    torch.testing.assert_close(loss, expected.detach(), atol=1e-5, rtol=0)
    loss.backward()
    trainable = {id(p) for p in ours.trainable_parameters()}
    for name, parameter in ours.named_parameters():
        learns = name.startswith(("qformer.", "language_projection."))
        assert (id(parameter) in trainable) == learns, name
        assert (parameter.grad is not None) == learns, name


def test_convert_to_mmcl_and_back_to_hf_gives_identical_logits(saved_llama, tmp_path):
    hf, folder = saved_llama
    file, back = tmp_path / "blip2.safetensors", tmp_path / "back"
    assert cli_main(["convert", str(folder), str(file), "--to", "mmcl"]) == 0
    assert cli_main(["convert", str(file), str(back), "--to", "hf"]) == 0
    reloaded = transformers.Blip2ForConditionalGeneration.from_pretrained(back).eval()
    images, _, _, with_placeholders, full_mask = batch()
    with torch.no_grad():
        expected = hf(pixel_values=images, input_ids=with_placeholders, attention_mask=full_mask)
        got = reloaded(pixel_values=images, input_ids=with_placeholders, attention_mask=full_mask)
    assert torch.equal(got.logits, expected.logits)


def test_greedy_tokens_equal_huggingface_generate(saved):
    hf, folder = saved
    ours = mmcl.load(folder)[0]
    images = batch()[0]
    pad = hf.config.text_config.pad_token_id
    bos = hf.config.text_config.bos_token_id
    # left padding (as generation pads) on the first row: one token shorter
    prompt = torch.tensor(
        [[pad] + [IMAGE_TOKEN] * QUERIES + [bos, 5], [IMAGE_TOKEN] * QUERIES + [bos, 7, 8]]
    )
    mask = (torch.arange(prompt.shape[1]) > 0).long().expand(2, -1).clone()
    mask[1] = 1
    with torch.no_grad():
        free = hf.generate(
            pixel_values=images,
            input_ids=prompt,
            attention_mask=mask,
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=-1,
        )
        # an end token that row 0 reaches at its 2nd new token: rows finish at different steps
        end = int(free[0, prompt.shape[1] + 1])
        expected = hf.generate(
            pixel_values=images,
            input_ids=prompt,
            attention_mask=mask,
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=end,
            pad_token_id=pad,
        )
    got = ours.generate(images, prompt, mask, max_new_tokens=6, end_token=end).tokens
    assert got.tolist() == expected[:, : got.shape[1]].tolist()
    assert (expected[:, got.shape[1] :] == pad).all()


def test_beam_search_tokens_equal_huggingface_generate_num_beams(saved):
    """transformers' beam search over the LM, token for token (OPT and LLaMA): end tokens
    taken from an unended run so rows end at different steps, several length penalties, a
    left-padded row."""
    hf, folder = saved
    ours = mmcl.load(folder)[0]
    images = batch()[0]
    pad, bos = 58, hf.config.text_config.bos_token_id  # 58: no token the prompts hold
    prompt = torch.tensor(
        [[pad] + [IMAGE_TOKEN] * QUERIES + [bos, 5], [IMAGE_TOKEN] * QUERIES + [bos, 7, 8]]
    )
    mask = (prompt != pad).long()

    def hf_beams(end, length_penalty):
        with torch.no_grad():
            return hf.generate(
                pixel_values=images,
                input_ids=prompt,
                attention_mask=mask,
                max_new_tokens=6,
                num_beams=3,
                length_penalty=length_penalty,
                do_sample=False,
                eos_token_id=end,
                pad_token_id=pad,
            )[:, prompt.shape[1] :]

    free = hf_beams(-1, 1.0)
    ended_early = 0
    for end in {int(free[0, 1]), int(free[1, 2]), int(free[0, 3])}:
        for length_penalty in (1.0, 0.0, 2.0):
            expected = hf_beams(end, length_penalty)
            got = ours.generate(
                images,
                prompt,
                mask,
                max_new_tokens=6,
                end_token=end,
                beams=3,
                length_penalty=length_penalty,
                pad_token=pad,
            ).tokens[:, prompt.shape[1] :]
            assert got.tolist() == expected[:, : got.shape[1]].tolist(), (end, length_penalty)
            ended_early += int((expected == pad).any())
    assert ended_early > 0  # some searches ended before max_new_tokens
