"""InstructBLIP against Hugging Face's `InstructBlipForConditionalGeneration` on the same tiny
random weights (fp32, a LLaMA LM): the instruction goes through the Q-Former too."""

from __future__ import annotations

import pytest
import torch
import transformers

import mmcl
from blip2_configs import IMAGE_TOKEN, LMS, QFORMER, QUERIES, VISION, randomised
from mmcl.cli import main as cli_main


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.InstructBlipConfig(
        vision_config=VISION,
        qformer_config=dict(QFORMER, vocab_size=50, max_position_embeddings=20),
        text_config=LMS["llama"]().to_dict(),
        num_query_tokens=QUERIES,
        image_token_index=IMAGE_TOKEN,
    )
    model = randomised(transformers.InstructBlipForConditionalGeneration(config))
    folder = tmp_path_factory.mktemp("instructblip") / "hf"
    model.save_pretrained(folder)
    return model, folder


def inputs():
    torch.manual_seed(1)
    images = torch.randn(2, 3, 32, 32)
    prompt = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 0]])
    prompt = torch.cat([torch.full((2, QUERIES), IMAGE_TOKEN), prompt], 1)
    mask = (prompt != 0).long()
    instruction = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0]])  # the Q-Former's own ids, padded
    return images, prompt, mask, instruction, (instruction != 0).long()


def hf_inputs(images, prompt, mask, instruction, instruction_mask):
    return dict(
        pixel_values=images,
        input_ids=prompt,
        attention_mask=mask,
        qformer_input_ids=instruction,
        qformer_attention_mask=instruction_mask,
    )


def test_loaded_folder_gives_huggingface_logits_and_the_instruction_matters(saved):
    hf, folder = saved
    ours = mmcl.load(folder)[0]
    images, prompt, mask, instruction, instruction_mask = inputs()
    with torch.no_grad():
        expected = hf(**hf_inputs(images, prompt, mask, instruction, instruction_mask)).logits
        logits = ours(images, prompt, mask, instruction, instruction_mask)
        other = ours(images, prompt, mask, instruction.flip(1), instruction_mask.flip(1))
    real = mask.bool()
    torch.testing.assert_close(logits[real], expected[real], atol=1e-5, rtol=0)
    assert (other - logits).abs().max() > 1e-4


def test_convert_round_trip_and_greedy_tokens_equal_huggingface(saved, tmp_path):
    hf, folder = saved
    file, back = tmp_path / "instructblip.safetensors", tmp_path / "back"
    assert cli_main(["convert", str(folder), str(file), "--to", "mmcl"]) == 0
    assert cli_main(["convert", str(file), str(back), "--to", "hf"]) == 0
    reloaded = transformers.InstructBlipForConditionalGeneration.from_pretrained(back).eval()
    images, prompt, mask, instruction, instruction_mask = inputs()
    given = hf_inputs(images, prompt, mask, instruction, instruction_mask)
    with torch.no_grad():
        assert torch.equal(reloaded(**given).logits, hf(**given).logits)
        del given["input_ids"], given["attention_mask"]  # from the placeholders and the start
        expected = hf.generate(**given, max_new_tokens=5, do_sample=False, eos_token_id=-1)
    ours = mmcl.load(file)[0]
    got = ours.generate(
        images,
        max_new_tokens=5,
        end_token=-1,
        instruction=instruction,
        instruction_mask=instruction_mask,
    )
    assert got.tokens.tolist() == expected.tolist()
