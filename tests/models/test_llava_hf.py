"""LLaVA: a Hugging Face `LlavaForConditionalGeneration` folder loads with `mmcl.load` and gives
the same logits and greedy tokens; export back to Hugging Face is exact."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

import mmcl
from mmcl.io.checkpoints import save_huggingface, save_safetensors
from mmcl.models.bridges.llava import Llava
from mmcl.models.bridges.llava import LlavaConfig as MmclLlavaConfig

IMAGE_TOKEN, VOCAB = 99, 100
TOKENS_PER_IMAGE = 4  # a 32-pixel image in 16-pixel patches


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
    )
    text = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN)
    model = LlavaForConditionalGeneration(config).eval()
    folder = tmp_path_factory.mktemp("llava") / "hf"
    model.save_pretrained(folder)
    return folder, model


def _inputs():
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 32, 32)
    image = [IMAGE_TOKEN] * TOKENS_PER_IMAGE
    rows = [[0, 0, 1, *image, 5, 6, 7], [1, 8, *image, 9, 10, 11, 12]]  # row 0: left padding
    ids = torch.tensor(rows)
    mask = (ids != 0).long()
    return pixels, ids, mask


def test_hf_llava_folder_loads_with_the_same_logits(hf_folder):
    folder, reference = hf_folder
    model, preprocess = mmcl.load(folder)
    assert isinstance(model, Llava) and model.config.projector == "mlp2x_gelu"
    assert preprocess(Image.new("RGB", (50, 40))).shape == (3, 32, 32)
    pixels, ids, mask = _inputs()
    with torch.no_grad():
        expected = reference(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
        got = model(ids, pixels, mask).logits
    assert (got - expected).abs().max() < 1e-5


def test_patch_tokens_come_from_the_second_to_last_block_without_the_class_token(hf_folder):
    folder, reference = hf_folder
    model, _ = mmcl.load(folder)
    pixels = _inputs()[0]
    with torch.no_grad():
        hidden = reference.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        ours = model.encode_image(pixels)
    # hidden_states[0] are the embeddings: [-2] is block 2 of 3; [:, 1:] drops the class token
    expected = reference.model.multi_modal_projector(hidden[-2][:, 1:])
    assert ours.shape == (2, TOKENS_PER_IMAGE, 32)
    assert (ours - expected).abs().max() < 1e-5
    assert (ours - reference.model.multi_modal_projector(hidden[-1][:, 1:])).abs().max() > 1e-3


def test_export_to_mmcl_then_hf_is_exact(hf_folder, tmp_path):
    folder, reference = hf_folder
    model, _ = mmcl.load(folder)
    save_safetensors(model, tmp_path / "model.safetensors")
    again, _ = mmcl.load(tmp_path / "model.safetensors")
    save_huggingface(again, tmp_path / "hf")
    original = load_file(folder / "model.safetensors")
    exported = load_file(tmp_path / "hf" / "model.safetensors")
    assert sorted(exported) == sorted(original)
    assert all(torch.equal(exported[key], original[key]) for key in original)
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    pixels, ids, mask = _inputs()
    with torch.no_grad():
        expected = reference(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
        got = reloaded(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
    assert torch.equal(got, expected)


def test_greedy_tokens_equal_hf_generate(hf_folder):
    folder, reference = hf_folder
    model, _ = mmcl.load(folder)
    pixels, ids, mask = _inputs()

    def hf_generate(end_token):
        return reference.generate(
            input_ids=ids,
            pixel_values=pixels,
            attention_mask=mask,
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=end_token,
            pad_token_id=0,
        )[:, ids.shape[1] :]

    with torch.no_grad():
        free = hf_generate(end_token=2)
    # End on row 0's third token, so that row 0 stops and the loop drops it from the cache
    # while row 1 goes on.
    end_token = int(free[0, 2])
    assert end_token not in free[1].tolist()
    with torch.no_grad():
        expected = hf_generate(end_token)
    got = model.generate(ids, pixels, mask, max_new_tokens=8, end_token=end_token, pad_token=0)
    assert torch.equal(got, expected)
    assert got[0, 3:].eq(0).all() and got[1, 3:].ne(0).any()
    first = model.generate(ids, pixels, mask, max_new_tokens=8, end_token=2)
    assert torch.equal(first, free[:, : first.shape[1]])


def test_placeholder_count_must_match_the_images(hf_folder):
    model, _ = mmcl.load(hf_folder[0])
    pixels, ids, _ = _inputs()
    with pytest.raises(ValueError, match="8 image placeholders .* 1 image"):
        model(ids, pixels[:1])


def test_a_linear_projector_is_llava_v1_and_cannot_go_to_hf(hf_folder, tmp_path):
    config = mmcl.load(hf_folder[0])[0].config.to_dict()
    config["projector"] = "linear"
    model = Llava(MmclLlavaConfig.from_dict(config))
    assert not hasattr(model.projector, "linear_2")
    with pytest.raises(ValueError, match="only the mlp2x_gelu projector"):
        save_huggingface(model, tmp_path / "hf")


def test_doctests():
    import doctest

    from mmcl.models.bridges import llava

    assert doctest.testmod(llava).failed == 0


def test_a_tied_lm_head_and_the_full_strategy_load_and_export_exactly(tmp_path):
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
    )
    text = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE_TOKEN,
        tie_word_embeddings=True,
        vision_feature_select_strategy="full",  # the class token kept
        vision_feature_layer=-1,
    )
    torch.manual_seed(2)
    reference = LlavaForConditionalGeneration(config).eval()
    reference.save_pretrained(tmp_path / "hf")
    model, _ = mmcl.load(tmp_path / "hf")
    assert model.tokens_per_image == TOKENS_PER_IMAGE + 1
    ids = torch.tensor([[1] + [IMAGE_TOKEN] * (TOKENS_PER_IMAGE + 1) + [3, 4]])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = reference(input_ids=ids, pixel_values=pixels).logits
        assert (model(ids, pixels).logits - expected).abs().max() < 1e-5
    save_huggingface(model, tmp_path / "out")
    original = load_file(tmp_path / "hf" / "model.safetensors")
    exported = load_file(tmp_path / "out" / "model.safetensors")
    assert "language_model.lm_head.weight" not in exported  # tied: left out, as HF leaves it
    assert sorted(exported) == sorted(original)
    assert all(torch.equal(exported[key], original[key]) for key in original)


def test_gradient_checkpointing_gives_the_same_gradients(hf_folder):
    model, _ = mmcl.load(hf_folder[0])
    pixels, ids, mask = _inputs()

    def gradients():
        model.zero_grad()
        model(ids, pixels, mask).logits.square().mean().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    model.train()
    plain = gradients()
    model.set_grad_checkpointing(True)
    checkpointed = gradients()
    model.set_grad_checkpointing(False)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert sorted(plain) == sorted(checkpointed) and any(k.startswith("visual.") for k in plain)
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)


def test_beam_search_tokens_equal_hf_generate_num_beams(hf_folder):
    """transformers' beam search, token for token: rows that end at different steps (end
    tokens taken from an unended run), several length penalties, a left-padded row."""
    PAD = 98  # transformers fills with the end token where the pad id is 0
    folder, reference = hf_folder
    model, _ = mmcl.load(folder)
    pixels, ids, mask = _inputs()

    def hf_beams(end_token, length_penalty):
        with torch.no_grad():
            return reference.generate(
                input_ids=ids,
                pixel_values=pixels,
                attention_mask=mask,
                max_new_tokens=7,
                num_beams=3,
                length_penalty=length_penalty,
                do_sample=False,
                eos_token_id=end_token,
                pad_token_id=PAD,
            )[:, ids.shape[1] :]

    free = hf_beams(-1, 1.0)
    ended_early = 0
    for end_token in {int(free[0, 1]), int(free[1, 3]), int(free[0, 4])}:
        for length_penalty in (1.0, 0.0, 2.0):
            expected = hf_beams(end_token, length_penalty)
            got = model.generate(
                ids,
                pixels,
                mask,
                max_new_tokens=7,
                end_token=end_token,
                pad_token=PAD,
                beams=3,
                length_penalty=length_penalty,
            )
            assert got.tolist() == expected[:, : got.shape[1]].tolist(), (end_token, length_penalty)
            ended_early += int((expected == PAD).any())
    assert ended_early > 0  # some searches ended before max_new_tokens


def test_generate_runs_the_image_tower_once_per_call_even_with_beams(hf_folder):
    folder, _ = hf_folder
    model, _ = mmcl.load(folder)
    pixels, ids, mask = _inputs()
    batches = []
    run_tower = model.visual.forward_intermediates
    model.visual.forward_intermediates = lambda x, **kw: (
        batches.append(len(x)) or run_tower(x, **kw)
    )
    model.generate(ids, pixels, mask, max_new_tokens=4, end_token=2)
    model.generate(ids, pixels, mask, max_new_tokens=4, end_token=2, beams=3)
    assert batches == [2, 2]  # once a call, one row an image (not one a beam)


def test_accelerate_with_foreign_linears_packs_the_bf16_lm_and_leaves_fp32_as_it_is(hf_folder):
    from mmcl.nn import accelerate
    from mmcl.nn.fast_linear import PackedLinear

    folder, _ = hf_folder
    pixels, ids, mask = _inputs()
    plain = mmcl.load(folder)[0].eval()
    with pytest.warns(UserWarning, match="accelerate left"):  # the LM's other modules
        fast = accelerate(mmcl.load(folder)[0].eval().requires_grad_(False), foreign_linears=True)
    assert type(fast.language_model.lm_head) is torch.nn.Linear  # no shortcut for float32
    assert "nn.Linear layers, packed" in fast.acceleration_skipped["language_model"]
    with torch.no_grad():
        assert torch.equal(fast(ids, pixels, mask).logits, plain(ids, pixels, mask).logits)
        plain16 = mmcl.load(folder, precision="bf16")[0].eval().requires_grad_(False)
        expected = plain16(ids, pixels.bfloat16(), mask).logits.float()
        with pytest.warns(UserWarning, match="accelerate left"):
            accelerate(plain16, foreign_linears=True)
        lm = plain16.language_model
        assert type(lm.lm_head) is PackedLinear
        assert type(lm.model.layers[0].self_attn.q_proj) is PackedLinear
        got = plain16(ids, pixels.bfloat16(), mask).logits
    assert (got.float() - expected).abs().max() < 0.05 * expected.abs().max()
