"""`mmcl.models.bridges.lm_cache`: a transformers LM cache whose layers write in place.

The reference is transformers' own `DynamicCache` driven through the same calls: prompt, steps,
a beam reorder, a crop (a chat's next turn), steps past the reserved room. The logits must be
the same at every step, and the keys must stay in one buffer while there is room.
"""

import inspect

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
from transformers.cache_utils import DynamicCache

import mmcl
from greedy_decoding import greedy_by_full_forwards
from mmcl.models.bridges.lm_cache import ReservedLayer, reserve, reserved_cache
from tiny_llava import llava_folder

TINY = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TINY)).eval()


def cache_argument(model) -> str:
    # transformers 5 names it `cache`; earlier versions `past_key_values`.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def run(model, cache, calls):
    """Feed `calls` (token ids, or ("reorder", rows) / ("crop", n)) through `model` with
    `cache`; returns the last-position logits of every forward."""
    logits = []
    for call in calls:
        if isinstance(call, tuple):
            kind, argument = call
            if kind == "reorder":
                cache.reorder_cache(argument)
            else:
                cache.crop(argument)
            continue
        seen = cache.get_seq_length()
        positions = torch.arange(seen, seen + call.shape[1]).expand(call.shape[0], -1)
        with torch.no_grad():
            out = model(input_ids=call, position_ids=positions, **{cache_argument(model): cache})
        logits.append(out.logits[:, -1])
    return logits


def test_reserved_cache_gives_dynamic_cache_logits_through_reorders_and_crops():
    model = tiny_llama()
    generator = torch.Generator().manual_seed(1)

    def ids(length):
        return torch.randint(0, 64, (3, length), generator=generator)

    calls = [ids(5), ids(1), ids(1), ("reorder", torch.tensor([2, 0, 0])), ids(1)]
    calls += [("crop", -2), ids(3), ids(1), ids(1), ids(1)]  # past the room of 9
    reserved = reserved_cache(model)
    assert all(type(layer) is ReservedLayer for layer in reserved.layers)
    reserve(reserved, 9)
    wanted = run(model, DynamicCache(config=model.config), calls)
    got = run(model, reserved, calls)
    for step, (a, b) in enumerate(zip(got, wanted, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"forward {step}")
    assert reserved.get_seq_length() == 5 + 1 + 1 + 1 - 2 + 3 + 1 + 1 + 1


def test_keys_and_values_stay_in_one_buffer_while_there_is_room():
    model = tiny_llama()
    cache = reserved_cache(model)
    reserve(cache, 8)
    tokens = torch.tensor([[1, 2, 3, 4]])
    run(model, cache, [tokens])
    layer = cache.layers[0]
    start = layer.keys.data_ptr(), layer.values.data_ptr()
    run(model, cache, [torch.tensor([[5]]), torch.tensor([[6]]), torch.tensor([[7]])])
    assert (layer.keys.data_ptr(), layer.values.data_ptr()) == start
    assert layer.keys.shape[2] == 7 and layer._buffers[0].shape[2] == 8
    # The views hold exactly what a fresh forward over the whole sequence caches.
    whole = DynamicCache(config=model.config)
    run(model, whole, [torch.tensor([[1, 2, 3, 4, 5, 6, 7]])])
    torch.testing.assert_close(layer.keys, whole.layers[0].keys, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.values, whole.layers[0].values, rtol=1e-5, atol=1e-6)


def test_sliding_window_layers_keep_transformers_own_cache():
    config = MistralConfig(**TINY, sliding_window=4)
    assert reserved_cache(MistralForCausalLM(config)) is None


@pytest.mark.parametrize("rows", [1, 2])
def test_llava_generation_uses_the_reserved_cache_and_matches_full_forwards(
    tmp_path, monkeypatch, rows
):
    folder, hf, _ = llava_folder(tmp_path / "llava")
    model = mmcl.load(folder)[0].eval()
    config = hf.config
    image = [config.image_token_id] * 4
    ids = torch.tensor([[config.text_config.bos_token_id, *image, 7, 8, 9]] * rows)
    pixels = torch.randn(rows, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    seen = []
    real = ReservedLayer.update

    def counted(self, *args, **kwargs):
        seen.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ReservedLayer, "update", counted)
    got = model.generate(ids, pixels, max_new_tokens=6, end_token=-1)
    assert seen, "the LM's cache was not a reserved one"
    wanted = greedy_by_full_forwards(hf, ids[:1], pixels[:1], end=-1, steps=6)
    assert got[0].tolist() == wanted


def test_a_cache_used_with_gradients_copies_instead_of_writing_in_place():
    # Autograd keeps the keys it attended over: writing the next step into the same buffer
    # would spoil them. The gradients must be DynamicCache's.
    model = tiny_llama()
    calls = [torch.tensor([[1, 2, 3]]), torch.tensor([[4]]), torch.tensor([[5]])]
    gradients = []
    for cache in (DynamicCache(config=model.config), reserved_cache(model)):
        reserve(cache, 8)  # (nothing to reserve in transformers' own)
        model.zero_grad()
        seen, total = 0, 0
        for call in calls:
            positions = torch.arange(seen, seen + call.shape[1])[None]
            out = model(input_ids=call, position_ids=positions, **{cache_argument(model): cache})
            total = total + out.logits[:, -1].square().sum()
            seen += call.shape[1]
        total.backward()
        gradients.append(model.model.layers[0].self_attn.k_proj.weight.grad.clone())
    torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-5, atol=1e-7)
