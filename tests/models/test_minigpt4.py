"""MiniGPT-4 (a BLIP-2 assembly whose one linear layer trains) against independent references:
Hugging Face's `Blip2ForConditionalGeneration` on the same weights (the same computation:
tower, Q-Former, one linear projection, LLaMA), a hand-worked loss mask, and its own folder."""

from __future__ import annotations

import doctest

import pytest
import torch
import transformers

import mmcl
from blip2_configs import IMAGE_TOKEN, LMS, QFORMER, QUERIES, VISION, randomised
from mmcl.data.chat_template import IGNORE_INDEX, ChatTemplate, ConversationEncoder
from mmcl.data.conversations import Conversation
from mmcl.io.checkpoints import load_checkpoint, save_huggingface
from mmcl.io.checkpoints.minigpt4 import save_minigpt4_folder
from mmcl.models.bridges import minigpt4 as minigpt4_module
from mmcl.models.bridges.blip2 import query_prompt_logits
from mmcl.models.bridges.minigpt4 import MiniGPT4, MiniGPT4Config
from mmcl.train.lm_objective import CausalLMObjective
from word_tokenizer import word_tokenizer


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(Hugging Face BLIP-2 with a LLaMA, a MiniGPT-4 holding the same weights)."""
    torch.manual_seed(0)
    config = transformers.Blip2Config(
        vision_config=VISION,
        qformer_config=QFORMER,
        text_config=LMS["llama"]().to_dict(),
        num_query_tokens=QUERIES,
        image_token_index=IMAGE_TOKEN,
    )
    hf = randomised(transformers.Blip2ForConditionalGeneration(config))
    folder = tmp_path_factory.mktemp("blip2") / "hf"
    hf.save_pretrained(folder)
    checkpoint = load_checkpoint(folder)
    ours = MiniGPT4(MiniGPT4Config.from_dict({**checkpoint.config, "architecture": "minigpt4"}))
    ours.load_state_dict(checkpoint.state_dict)
    return hf, ours.eval()


def prompt_batch():
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    image = [IMAGE_TOKEN] * QUERIES
    ids = torch.tensor([[1, *image, 5, 6, 7, 8], [1, *image, 9, 10, 11, 0]])  # row 1 padded
    mask = (ids != 0).long()
    return images, ids, mask


def test_logits_equal_huggingface_blip2_on_the_same_weights(pair):
    hf, ours = pair
    images, ids, mask = prompt_batch()
    with torch.no_grad():
        expected = hf(pixel_values=images, input_ids=ids, attention_mask=mask).logits
        got = ours(images, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)


def test_greedy_tokens_equal_huggingface_generate(pair):
    hf, ours = pair
    images, ids, _ = prompt_batch()
    ids, mask = ids[:, :-1], torch.ones_like(ids[:, :-1])  # both rows real: no padding
    with torch.no_grad():
        expected = hf.generate(
            pixel_values=images,
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=5,
            do_sample=False,
            eos_token_id=-1,  # never ends: every row gives its 5 tokens
        )
    got = ours.generate(images, ids, mask, max_new_tokens=5, end_token=-1).tokens
    assert got.tolist() == expected.tolist()


def test_only_the_projection_trains():
    config = {
        "blip_vision": {"image_size": 32, "patch_size": 16, "width": 16, "layers": 1},
        "qformer": {"width": 16, "layers": 1, "heads": 2, "mlp_width": 32, "queries": 2},
        "text_config": LMS["llama"]().to_dict(),
        "image_token_id": IMAGE_TOKEN,
    }
    model = MiniGPT4(
        MiniGPT4Config.from_dict(
            {**config, "blip_vision": {**config["blip_vision"], "heads": 2, "mlp_width": 32}}
        )
    )
    images, ids, mask = prompt_batch()
    ids = torch.cat([ids[:, :1], ids[:, 2:]], 1)  # 2 placeholders: one per query
    model(images, ids, mask[:, 1:]).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {"language_projection.weight", "language_projection.bias"}
    assert {id(p) for p in model.trainable_parameters()} == {
        id(model.language_projection.weight),
        id(model.language_projection.bias),
    }


def test_loss_mask_by_hand_and_the_loss_equals_huggingface(pair):
    hf, ours = pair
    words = word_tokenizer(["sys", "USER:", "ASSISTANT:", "how", "many?", "two"])
    encoder = ConversationEncoder(words, IMAGE_TOKEN, QUERIES, ChatTemplate(system="sys"))
    sample = encoder.encode(Conversation("0", "x.png", (("<image>\nhow many?", "two"),)))
    # <s> sys USER: [3 image tokens] how many? ASSISTANT: two </s>; loss on "two </s>" only
    image = [IMAGE_TOKEN] * QUERIES
    assert sample.input_ids == [1, 4, 5, *image, 7, 8, 6, 9, 2]
    ignored = [IGNORE_INDEX] * (6 + QUERIES)
    assert sample.labels == [*ignored, 9, 2]

    images = prompt_batch()[0][:1]
    ids, labels = torch.tensor([sample.input_ids]), torch.tensor([sample.labels])
    mask = torch.ones_like(ids)
    targets = torch.stack([ids, labels, mask], dim=1)
    terms, _ = CausalLMObjective(query_prompt_logits)(ours, images, targets)
    with torch.no_grad():
        expected = hf(pixel_values=images, input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(terms["lm"].detach(), expected, atol=1e-5, rtol=0)


def test_folder_round_trip_gives_the_same_model_and_tokenizer(pair, tmp_path):
    _, ours = pair
    words = word_tokenizer(["how", "many?"])
    folder = save_minigpt4_folder(ours, words, tmp_path / "minigpt4")
    loaded = mmcl.load(folder)[0]
    assert type(loaded) is MiniGPT4
    images, ids, mask = prompt_batch()
    with torch.no_grad():
        assert torch.equal(loaded(images, ids, mask), ours(images, ids, mask))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert tokenizer.encode("how many?", add_special_tokens=False) == [4, 5]


def test_hugging_face_export_is_a_blip2_folder_with_the_same_logits(pair, tmp_path):
    _, ours = pair
    save_huggingface(ours, tmp_path / "hf")
    exported = transformers.Blip2ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    images, ids, mask = prompt_batch()
    with torch.no_grad():
        expected = exported(pixel_values=images, input_ids=ids, attention_mask=mask).logits
        got = ours(images, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)


def test_module_example_runs():
    assert doctest.testmod(minigpt4_module).failed == 0
