"""ALBEF's model: the split of BERT into text-only and fusion layers, one-call forward equal
to the parts, padding that changes nothing, and a saved model that loads back."""

from __future__ import annotations

import doctest

import torch

import mmcl
import mmcl.data.scene_wordpiece
import mmcl.models.albef
from mmcl.data.scene_wordpiece import scene_wordpiece
from mmcl.io.checkpoints import save_safetensors
from mmcl.models.albef import Albef
from mmcl.models.albef_config import AlbefConfig

CONFIG = {
    "vision_cfg": {
        "image_size": 16,
        "patch_size": 8,
        "width": 16,
        "layers": 1,
        "heads": 2,
        "mlp_width": 32,
    },
    "albef_text": {
        "vocab_size": 30,
        "width": 16,
        "text_layers": 1,
        "fusion_layers": 2,
        "heads": 2,
        "mlp_width": 32,
        "max_positions": 10,
        "cls_id": 2,
        "sep_id": 3,
        "mask_id": 4,
    },
    "embed_dim": 8,
}
TOKENS = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0], [2, 9, 10, 3, 0]])


def tiny(seed: int = 0) -> Albef:
    torch.manual_seed(seed)
    return Albef(AlbefConfig.from_dict(CONFIG)).eval()


def test_doctests():
    assert doctest.testmod(mmcl.models.albef).failed == 0
    assert doctest.testmod(mmcl.data.scene_wordpiece).failed == 0


def test_text_layers_have_no_cross_attention_and_fusion_layers_do():
    model = tiny()
    assert [b.cross_attn is None for b in model.text_encoder.blocks] == [True]
    assert [b.cross_attn is not None for b in model.fusion_encoder.blocks] == [True, True]


def test_itc_text_features_ignore_the_image_and_fused_outputs_do_not():
    model = tiny()
    images = torch.randn(3, 3, 16, 16)
    first = model(images, TOKENS, masked_texts=TOKENS)
    second = model(torch.randn(3, 3, 16, 16), TOKENS, masked_texts=TOKENS)
    torch.testing.assert_close(first["text_features"], second["text_features"], rtol=0, atol=0)
    assert not torch.allclose(first["mlm_logits"], second["mlm_logits"])


def test_one_forward_equals_the_separate_parts():
    model = tiny()
    images = torch.randn(3, 3, 16, 16)
    image_index, text_index = torch.tensor([0, 1, 2, 2, 0]), torch.tensor([0, 1, 2, 0, 1])
    seen = []

    def pick(image_features, text_features):
        seen.append((image_features, text_features))
        return image_index, text_index

    out = model(images, TOKENS, masked_texts=TOKENS.flip(0), pick_pairs=pick)
    torch.testing.assert_close(out["image_features"], model.encode_image(images, normalize=True))
    torch.testing.assert_close(out["text_features"], model.encode_text(TOKENS, normalize=True))
    # The picker sees the features, detached: sampling is not part of the gradient.
    assert not seen[0][0].requires_grad or seen[0][0].grad_fn is None
    torch.testing.assert_close(seen[0][1], out["text_features"])
    image_tokens = model.encode_image_tokens(images)
    expected_itm = model.itm_logits(image_tokens[image_index], TOKENS[text_index])
    torch.testing.assert_close(out["itm_logits"], expected_itm)
    torch.testing.assert_close(out["mlm_logits"], model.mlm_logits(image_tokens, TOKENS.flip(0)))


def test_padding_changes_no_feature_of_the_real_tokens():
    model = tiny()
    images = torch.randn(1, 3, 16, 16)
    short, padded = TOKENS[1:2, :3], TOKENS[1:2]
    image_tokens = model.encode_image_tokens(images)
    torch.testing.assert_close(model.encode_text(short), model.encode_text(padded))
    torch.testing.assert_close(
        model.itm_logits(image_tokens, short), model.itm_logits(image_tokens, padded)
    )
    torch.testing.assert_close(
        model.mlm_logits(image_tokens, short), model.mlm_logits(image_tokens, padded)[:, :3]
    )


def test_saved_model_loads_back_as_the_same_albef(tmp_path):
    model = tiny()
    save_safetensors(model, tmp_path / "albef.safetensors")
    loaded, _ = mmcl.load(tmp_path / "albef.safetensors")
    assert isinstance(loaded, Albef)
    images, tokens = torch.randn(2, 3, 16, 16), TOKENS[:2]
    torch.testing.assert_close(loaded.encode_image(images), model.encode_image(images))
    torch.testing.assert_close(
        loaded.mlm_logits(loaded.encode_image_tokens(images), tokens),
        model.mlm_logits(model.encode_image_tokens(images), tokens),
    )


def test_tiny_albef_reads_the_scene_vocabulary():
    text = mmcl.create_model("tiny-albef").config.albef_text
    tok = scene_wordpiece()
    assert text.vocab_size == tok.vocab_size
    assert (text.pad_id, text.cls_id, text.sep_id, text.mask_id) == (
        tok.pad_token_id,
        tok.cls_token_id,
        tok.sep_token_id,
        tok.mask_token_id,
    )
    assert text.max_positions >= tok.context_length
