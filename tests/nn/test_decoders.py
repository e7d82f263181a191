"""KV-cached decoding against the full forward; the decoder, the cross-attention block and the
attentional pooler against open_clip's modules on the same weights; the BERT-style stack
against Hugging Face's BLIP text model on the same weights."""

import doctest

import open_clip.transformer as oc
import pytest
import torch
from transformers import BlipTextConfig
from transformers.models.blip.modeling_blip_text import BlipTextLMHeadModel, BlipTextModel

from mmcl.io.checkpoints.bert import bert_from_huggingface, bert_to_huggingface
from mmcl.nn import (
    AttentionalPooler,
    BertEmbeddings,
    BertEncoder,
    BertLMHead,
    CausalDecoder,
    CrossAttentionBlock,
    KVCache,
    LearnedQueries,
    Transformer,
    bert,
    decoder,
    key_padding_mask,
    kv_cache,
    pooling,
)


def test_cached_incremental_decode_equals_the_full_causal_forward():
    torch.manual_seed(0)
    stack = Transformer(16, layers=2, heads=4, mlp_width=32).eval()
    x = torch.randn(3, 6, 16)
    full = stack(x, causal=True)
    cache = KVCache()
    # A prompt of two tokens, then one token at a time.
    pieces = [stack(x[:, :2], causal=True, cache=cache)]
    pieces += [stack(x[:, i : i + 1], causal=True, cache=cache) for i in range(2, 6)]
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-5)


def test_cached_decoder_with_cross_attention_equals_full_forward_and_projects_context_once():
    torch.manual_seed(1)
    model = CausalDecoder(16, layers=2, heads=4, mlp_width=32, context_width=12, output_dim=9)
    model.eval()
    x, image = torch.randn(2, 5, 16), torch.randn(2, 4, 12)
    full = model(x, image)
    cache, calls = KVCache(), []
    handle = model.cross_attn[0].ln_1_kv.register_forward_hook(lambda *args: calls.append(1))
    steps = [model(x[:, i : i + 1], image, cache=cache) for i in range(5)]
    handle.remove()
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    assert len(calls) == 1  # the image's keys and values were computed at the first step only


def test_cache_select_drops_and_reorders_rows_in_every_entry():
    torch.manual_seed(2)
    model = CausalDecoder(8, layers=1, heads=2, mlp_width=16, context_width=8).eval()
    x, image = torch.randn(3, 3, 8), torch.randn(3, 2, 8)
    cache = KVCache()
    model(x[:, :2], image, cache=cache)
    cache.select(torch.tensor([2, 0]))  # keep rows 2 and 0, in that order
    last = model(x[[2, 0], 2:], image[[2, 0]], cache=cache)
    assert torch.allclose(last, model(x[[2, 0]], image[[2, 0]])[:, 2:], atol=1e-5)


def test_decoder_matches_open_clip_multimodal_transformer():
    torch.manual_seed(3)
    reference = oc.MultimodalTransformer(
        width=16, layers=2, heads=4, context_length=8, output_dim=11
    ).eval()
    for parameter in reference.parameters():  # open_clip leaves some of them uninitialised
        torch.nn.init.normal_(parameter, std=0.2)
    ours = CausalDecoder(16, layers=2, heads=4, mlp_width=64, context_width=16, output_dim=11)
    ours.load_state_dict(reference.state_dict())
    text, image = torch.randn(2, 6, 16), torch.randn(2, 5, 16)
    assert torch.allclose(ours.eval()(text, image), reference(image, text), atol=1e-5)


def test_cross_attention_block_matches_open_clip():
    torch.manual_seed(4)
    reference = oc.ResidualAttentionBlock(16, 4, is_cross_attention=True).eval()
    ours = CrossAttentionBlock(16, 4, 64)
    ours.load_state_dict(reference.state_dict())
    x, context = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    expected = reference(x, k_x=context, v_x=context)
    assert torch.allclose(ours(x, context), expected, atol=1e-5)


@pytest.mark.parametrize("context_width", [16, 24])  # fused projection, and separate ones
def test_attentional_pooler_matches_open_clip(context_width):
    torch.manual_seed(5)
    reference = oc.AttentionalPooler(16, context_width, n_head=4, n_queries=3).eval()
    ours = AttentionalPooler(16, context_width, heads=4, queries=3)
    ours.load_state_dict(reference.state_dict())
    tokens = torch.randn(2, 7, context_width)
    assert torch.allclose(ours(tokens), reference(tokens), atol=1e-5)


def test_learned_queries_are_shared_by_the_batch():
    queries = LearnedQueries(3, 4)
    out = queries(batch=2)
    assert out.shape == (2, 3, 4) and torch.equal(out[0], out[1])
    assert torch.equal(out[0], queries.query)


def _blip_text_config(**overrides):
    values = dict(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        encoder_hidden_size=12,
        max_position_embeddings=20,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        sep_token_id=2,
    )
    values.update(overrides)
    return BlipTextConfig(**values)


def _randomised(model):
    torch.manual_seed(6)
    with torch.no_grad():
        for parameter in model.parameters():  # LayerNorms too: a swapped pair would show
            parameter.normal_(std=0.3)
    return model.eval()


def test_bert_encoder_matches_blip_text_model_bidirectional_with_padding():
    reference = _randomised(BlipTextModel(_blip_text_config(), add_pooling_layer=False))
    tensors = bert_from_huggingface(reference.state_dict())
    embeddings, encoder = BertEmbeddings(40, 16, 20), BertEncoder(16, 2, 4, 32, context_width=12)
    embeddings.load_state_dict(_under(tensors, "embeddings."))
    encoder.load_state_dict(_under(tensors, "encoder."))
    tokens = torch.tensor([[1, 5, 7, 9, 2], [1, 8, 2, 0, 0]])
    padding = tokens == 0
    image = torch.randn(2, 3, 12)
    expected = reference(
        input_ids=tokens, attention_mask=(~padding).long(), encoder_hidden_states=image
    ).last_hidden_state
    ours = encoder(embeddings(tokens), mask=key_padding_mask(padding), context=image)
    keep = ~padding  # padded positions' own outputs are not used by anyone
    assert torch.allclose(ours[keep], expected[keep], atol=1e-5)
    # Text-only (no cross-attention), as BLIP's unimodal text encoder runs.
    text_only = reference(input_ids=tokens, attention_mask=(~padding).long()).last_hidden_state
    ours = encoder(embeddings(tokens), mask=key_padding_mask(padding))
    assert torch.allclose(ours[keep], text_only[keep], atol=1e-5)


def test_bert_decoder_matches_blip_lm_head_model_causal_and_cached():
    reference = _randomised(BlipTextLMHeadModel(_blip_text_config()))
    original = {k.removeprefix("bert."): v for k, v in reference.state_dict().items()}
    tensors = bert_from_huggingface(original)  # the model's own prefix is the caller's to strip
    embeddings, encoder = BertEmbeddings(40, 16, 20), BertEncoder(16, 2, 4, 32, context_width=12)
    head = BertLMHead(16, 40)
    embeddings.load_state_dict(_under(tensors, "embeddings."))
    encoder.load_state_dict(_under(tensors, "encoder."))
    head.load_state_dict(_under(tensors, "lm_head."))
    tokens = torch.tensor([[1, 5, 7, 9, 3], [1, 8, 6, 4, 4]])
    image = torch.randn(2, 3, 12)
    expected = reference(input_ids=tokens, encoder_hidden_states=image).logits
    logits = head(encoder(embeddings(tokens), causal=True, context=image))
    assert torch.allclose(logits, expected, atol=1e-5)
    cache = KVCache()
    steps = []
    for i in range(5):
        offset = cache.advance(tokens[:, i : i + 1])
        x = embeddings(tokens[:, i : i + 1], offset=offset)
        steps.append(head(encoder(x, causal=True, context=image, cache=cache)))
    assert torch.allclose(torch.cat(steps, 1), expected, atol=1e-5)
    # Back to Hugging Face's names: every tensor as it was.
    back = bert_to_huggingface(tensors)
    assert set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original)


def _under(tensors, prefix):
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


@pytest.mark.parametrize("module", [kv_cache, decoder, bert, pooling])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0
