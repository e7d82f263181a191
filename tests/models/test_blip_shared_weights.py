"""BLIP's encoder/decoder weight sharing (`BlipConfig.share_text_weights`, Li et al. 2022,
section 3.1): one tensor where shared, two where not, one update per step, and Hugging Face's
two-copy layout on export."""

from __future__ import annotations

import torch
import transformers

import mmcl
from mmcl.io.checkpoints import save_huggingface
from mmcl.models.blip import Blip
from mmcl.models.blip_config import BlipConfig

W, C, M, V, P, LAYERS = 16, 16, 32, 30, 12, 2  # text width, image width, MLP, vocab, positions
DEC, ENC, SEP = 28, 29, 3


def tiny(parts=("text_encoder", "text_decoder", "itc", "itm"), shared=True, seed=0) -> Blip:
    torch.manual_seed(seed)
    config = BlipConfig.from_dict(
        {
            "blip_vision": {
                "image_size": 16, "patch_size": 8, "width": C, "layers": 1, "heads": 2,
                "mlp_width": 32,
            },
            "blip_text": {
                "vocab_size": V, "width": W, "layers": LAYERS, "heads": 2, "mlp_width": M,
                "max_positions": P, "sep_id": SEP, "dec_id": DEC, "enc_id": ENC,
            },
            "embed_dim": 8,
            "parts": list(parts),
            "share_text_weights": shared,
        }
    )  # fmt: skip
    model = Blip(config)
    with torch.no_grad():  # LayerNorms and biases start constant: randomise every tensor
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def test_shared_parts_are_the_same_tensors_and_self_attention_is_not():
    model = tiny()
    encoder, decoder = model.text_encoder, model.text_decoder
    assert decoder.embeddings.word_embeddings.weight is encoder.embeddings.word_embeddings.weight
    for ours, theirs in zip(encoder.encoder.blocks, decoder.encoder.blocks, strict=True):
        for name in ("cross_attn", "cross_norm", "mlp", "mlp_norm"):
            for a, b in zip(
                getattr(ours, name).parameters(), getattr(theirs, name).parameters(), strict=True
            ):
                assert a is b
        for name in ("attn", "attn_norm"):
            for a, b in zip(
                getattr(ours, name).parameters(), getattr(theirs, name).parameters(), strict=True
            ):
                assert a is not b and a.data_ptr() != b.data_ptr()
    assert decoder.lm_head is not None


def test_sharing_saves_exactly_the_embeddings_cross_attention_and_feed_forward_parameters():
    shared = sum(p.numel() for p in tiny().parameters())
    separate = sum(p.numel() for p in tiny(shared=False).parameters())
    embeddings = V * W + P * W + 2 * W  # words, positions, LayerNorm
    cross_attention = W * W + 2 * W * C + 3 * W + (W * W + W)  # q, k and v from C, biases, out
    feed_forward = (W * M + M) + (M * W + W)
    norms = 2 * (2 * W)  # after the cross-attention and after the feed-forward
    assert separate - shared == embeddings + LAYERS * (cross_attention + feed_forward + norms)
    assert separate - shared == 5152  # 704 + 2 * (1088 + 1072 + 64)


def test_one_step_moves_a_shared_weight_once_by_the_sum_of_both_uses():
    shared = tiny()
    separate = tiny(shared=False)
    separate.load_state_dict(shared.state_dict())  # two equal copies of every shared tensor
    torch.manual_seed(1)
    images = torch.randn(2, 3, 16, 16)
    tokens = torch.tensor([[2, 5, 6, SEP], [2, 7, SEP, 0]])
    weights = torch.randn(2, 4, V)

    def loss(model):
        outputs = model(images, tokens, caption_texts=tokens)
        return outputs["itm_logits"][:, 1].sum() + (outputs["caption_logits"] * weights).sum()

    loss(separate).backward()
    optimizer = torch.optim.SGD(shared.parameters(), lr=0.1)
    loss(shared).backward()
    before = {n: p.detach().clone() for n, p in shared.named_parameters()}
    optimizer.step()
    ours = separate.text_encoder.encoder.blocks[0].mlp.c_fc.weight
    theirs = separate.text_decoder.encoder.blocks[0].mlp.c_fc.weight
    name = "text_encoder.encoder.blocks.0.mlp.c_fc.weight"
    moved = shared.get_parameter(name) - before[name]
    torch.testing.assert_close(moved, -0.1 * (ours.grad + theirs.grad))
    name = "text_decoder.encoder.blocks.0.attn.in_proj_weight"  # not shared: its own gradient
    moved = shared.get_parameter(name) - before[name]
    torch.testing.assert_close(moved, -0.1 * separate.get_parameter(name).grad)


def test_export_writes_tied_weights_into_both_hugging_face_places(tmp_path):
    model = tiny(parts=("text_encoder", "text_decoder")).eval()
    save_huggingface(model, tmp_path / "hf")
    hf = transformers.BlipForQuestionAnswering.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(
        hf.text_encoder.encoder.layer[1].crossattention.self.key.weight,
        hf.text_decoder.bert.encoder.layer[1].crossattention.self.key.weight,
        atol=0,
        rtol=0,
    )
    images = torch.randn(2, 3, 16, 16)
    question = torch.tensor([[2, 5, 6], [2, 7, 8]])
    answer = torch.tensor([[DEC, 9, 10, SEP], [DEC, 11, SEP, 0]])
    loaded = mmcl.load(tmp_path / "hf")[0]
    assert not loaded.config.share_text_weights  # Hugging Face's folders keep two copies
    with torch.no_grad():
        image_embeds = hf.vision_model(pixel_values=images).last_hidden_state
        states = hf.text_encoder(input_ids=question, encoder_hidden_states=image_embeds)
        expected = hf.text_decoder(
            input_ids=answer,
            attention_mask=(answer != 0).long(),
            encoder_hidden_states=states.last_hidden_state,
        ).logits
        got = model.answer_logits(model.encode_image_tokens(images), question, answer)
        again = loaded.answer_logits(loaded.encode_image_tokens(images), question, answer)
    real = answer != 0
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(again, got, atol=1e-6, rtol=0)


def test_a_saved_shared_model_loads_back_shared_with_equal_outputs(tmp_path):
    from mmcl.io.checkpoints import save_safetensors

    model = tiny().eval()
    save_safetensors(model, tmp_path / "blip.safetensors")
    loaded = mmcl.load(tmp_path / "blip.safetensors")[0]
    encoder, decoder = loaded.text_encoder.encoder.blocks[1], loaded.text_decoder.encoder.blocks[1]
    assert encoder.mlp.c_fc.weight is decoder.mlp.c_fc.weight
    assert encoder.attn.in_proj_weight is not decoder.attn.in_proj_weight
    images, tokens = torch.randn(2, 3, 16, 16), torch.tensor([[2, 5, 6, SEP], [2, 7, SEP, 0]])
    with torch.no_grad():
        expected = model(images, tokens, caption_texts=tokens)
        got = loaded(images, tokens, caption_texts=tokens)
    for name in ("itm_logits", "caption_logits", "image_features"):
        torch.testing.assert_close(got[name], expected[name], atol=0, rtol=0)
