"""The generation loop against full recomputation: greedy against argmax by hand, beam search
against an exhaustive search, nucleus sampling against hand-worked nuclei."""

import doctest
import itertools
import math

import pytest
import torch
from torch import nn

from mmcl.nn import CausalDecoder, KVCache
from mmcl.nn import generation as generation_module
from mmcl.nn.generation import generate, top_p_filter

START = 0


class TinyCaptioner(nn.Module):
    """A token embedding and a cross-attending causal decoder: the shape of every captioner."""

    def __init__(self, vocab: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, 16)
        self.positions = nn.Parameter(torch.randn(16, 16))
        self.decoder = CausalDecoder(16, layers=2, heads=4, mlp_width=32, context_width=8)
        self.decoder.text_projection = nn.Parameter(torch.randn(16, vocab) * 2)
        self.eval()

    def full_logits(self, tokens, image):
        """Every position recomputed from scratch, no cache: (rows, length, vocab)."""
        x = self.embed(tokens) + self.positions[: tokens.shape[1]]
        return self.decoder(x, image)

    def start(self, images):
        cache = KVCache()
        cache.put("image", images)
        prompt = torch.full((len(images), 1), START)
        return prompt, cache

    def step(self, tokens, cache):
        self.calls.append(len(tokens))
        offset = cache.advance(tokens)
        x = self.embed(tokens) + self.positions[offset : offset + tokens.shape[1]]
        image = cache.constant("image", lambda: None)
        return self.decoder(x, image, cache=cache)[:, -1]


def captioner(vocab=7, seed=0):
    model = TinyCaptioner(vocab, seed)
    model.calls = []
    return model


def captioner_and_images():
    """Weights and images whose greedy captions end at different steps (2, 6, 3, 3 tokens)."""
    model = captioner(seed=1)
    torch.manual_seed(101)
    return model, torch.randn(4, 3, 8), 6


def greedy_by_full_recompute(model, image, end, max_new):
    tokens = torch.tensor([[START]])
    for _ in range(max_new):
        token = model.full_logits(tokens, image[None])[0, -1].argmax()
        tokens = torch.cat([tokens, token.view(1, 1)], 1)
        if token == end:
            break
    return tokens[0].tolist()


@torch.no_grad()
def test_greedy_equals_argmax_by_full_recompute_and_finished_rows_stop():
    model, images, end = captioner_and_images()
    prompt, cache = model.start(images)
    out = generate(model.step, prompt, cache, max_new_tokens=8, end_token=end, pad_token=-1)
    expected = [greedy_by_full_recompute(model, image, end, 8) for image in images]
    for row, reference in zip(out.tokens.tolist(), expected, strict=True):
        assert row[: len(reference)] == reference
        assert row[len(reference) :] == [-1] * (len(row) - len(reference))
    lengths = [len(reference) - 1 for reference in expected]
    assert out.lengths.tolist() == lengths
    assert len(set(lengths)) > 1  # rows finish at different steps...
    # ...and each step computed only the rows still generating.
    still_running = [sum(length > step for length in lengths) for step in range(max(lengths))]
    assert model.calls == still_running


@torch.no_grad()
def test_beam_search_with_one_beam_is_greedy():
    model, images, end = captioner_and_images()
    greedy = generate(model.step, *model.start(images), max_new_tokens=8, end_token=end)
    beam = generate(
        model.step, *model.start(images), max_new_tokens=8, end_token=end, beams=1, length_penalty=0
    )
    assert torch.equal(beam.tokens, greedy.tokens)


def exhaustive_search(model, image, vocab, end, max_new, length_penalty):
    """The best caption by enumeration: every sequence that ends at its end token, or is cut
    at max_new tokens, scored log p / length ** length_penalty."""
    every = torch.tensor(list(itertools.product(range(vocab), repeat=max_new)))
    tokens = torch.cat([torch.full((len(every), 1), START), every], 1)
    images = image[None].expand(len(every), -1, -1)
    # Causal: position i's distribution depends on the tokens up to i only, so one forward
    # over every full-length sequence gives the log-probability of every prefix.
    log_probs = model.full_logits(tokens, images).log_softmax(-1)
    per_token = log_probs[:, :-1].gather(2, every[:, :, None]).squeeze(2)
    best = (-math.inf, None)
    for row, caption in enumerate(every.tolist()):
        for length in range(1, max_new + 1):
            ended = caption[length - 1] == end
            if end in caption[: length - 1] or (length < max_new and not ended):
                continue
            score = float(per_token[row, :length].sum()) / length**length_penalty
            best = max(best, (score, caption[:length]))
    return best


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.5, -0.5])
@torch.no_grad()
def test_beam_search_equals_exhaustive_search_with_length_penalty(length_penalty):
    vocab, end, max_new = 4, 3, 3
    model = captioner(vocab=vocab, seed=5)
    images = torch.randn(3, 2, 8)
    out = generate(
        model.step,
        *model.start(images),
        max_new_tokens=max_new,
        end_token=end,
        beams=vocab ** (max_new - 1),  # enough to keep every prefix: the search is exhaustive
        length_penalty=length_penalty,
        pad_token=-1,
    )
    for index, image in enumerate(images):
        score, caption = exhaustive_search(model, image, vocab, end, max_new, length_penalty)
        row = [t for t in out.tokens[index, 1:].tolist() if t != -1]
        assert row == caption
        assert out.scores[index].item() == pytest.approx(score, abs=1e-5)
        assert out.lengths[index].item() == len(caption)


@torch.no_grad()
def test_small_beams_keep_the_best_beam_found_and_drop_finished_inputs():
    vocab, end = 5, 4
    model = captioner(vocab=vocab, seed=8)
    images = torch.randn(3, 2, 8)
    out = generate(model.step, *model.start(images), max_new_tokens=6, end_token=end, beams=2)
    # Each returned caption's score is its own log-probability under the model, normalised.
    for index, image in enumerate(images):
        length = out.lengths[index].item()
        caption = out.tokens[index, : 1 + length]
        log_probs = model.full_logits(caption[None], image[None]).log_softmax(-1)[0]
        total = sum(log_probs[i, token] for i, token in enumerate(caption[1:].tolist()))
        assert out.scores[index].item() == pytest.approx(float(total) / length, abs=1e-5)
    # The prompt is decoded once per input (its beams start equal); then two rows an input,
    # and the batch shrinks (by whole inputs) as inputs finish, and never grows.
    assert model.calls[:2] == [3, 6]
    assert all(a >= b and b % 2 == 0 for a, b in itertools.pairwise(model.calls[1:]))


def test_top_p_filter_keeps_the_nucleus_by_hand():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    # 0.5 < 0.7 -> the next is in; 0.5 + 0.3 >= 0.7 -> the rest are out.
    kept = top_p_filter(logits, 0.7).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    assert top_p_filter(logits, 0.5).isfinite().tolist() == [[True, False, False, False]]
    assert top_p_filter(logits, 0.81).isfinite().tolist() == [[True, True, True, False]]
    assert torch.equal(top_p_filter(logits, 1.0), logits)


@torch.no_grad()
def test_nucleus_with_tiny_top_p_is_greedy_and_seeds_make_sampling_reproducible():
    model, images, end = captioner_and_images()
    greedy = generate(model.step, *model.start(images), max_new_tokens=8, end_token=end)
    tiny = generate(model.step, *model.start(images), max_new_tokens=8, end_token=end, top_p=1e-6)
    assert torch.equal(tiny.tokens, greedy.tokens)

    def sampled(seed):
        generator = torch.Generator().manual_seed(seed)
        return generate(
            model.step,
            *model.start(images),
            max_new_tokens=8,
            end_token=end,
            top_p=0.9,
            temperature=1.5,
            generator=generator,
        ).tokens

    assert torch.equal(sampled(1), sampled(1))
    assert not all(torch.equal(sampled(1), sampled(seed)) for seed in (2, 3, 4))


@torch.no_grad()
def test_min_new_tokens_holds_the_end_back():
    model, images, end = captioner_and_images()
    free = generate(model.step, *model.start(images), max_new_tokens=8, end_token=end)
    held = generate(
        model.step, *model.start(images), max_new_tokens=8, end_token=end, min_new_tokens=5
    )
    assert free.lengths.min() < 5 <= held.lengths.min()
    assert not torch.isin(held.tokens[:, 1:6], torch.tensor(end)).any()


def test_doctests():
    assert doctest.testmod(generation_module).failed == 0


def test_tracked_entries_follow_every_select_beam_reorders_included():
    from mmcl.nn.kv_cache import KVCache

    cache = KVCache()
    cache.put("image", torch.tensor([10, 20]))
    cache.repeat_rows(2)  # two beams an input
    cache.track("rows", torch.arange(4), torch.tensor([[5], [6], [7], [8]]))
    cache.select(torch.tensor([1, 0, 3, 3]))  # a beam reorder
    rows, values = cache.tracked("rows")
    assert rows.tolist() == [1, 0, 3, 3] and values.tolist() == [[6], [5], [8], [8]]
    assert cache.constant("image", lambda: None).tolist() == [10, 20]  # one an input, as is
    cache.select(torch.tensor([2, 3]))  # input 0 done: its rows dropped
    assert cache.tracked("rows")[0].tolist() == [3, 3]
    assert cache.constant("image", lambda: None).tolist() == [20]


def test_beams_share_their_inputs_constants_unless_the_cache_copies_them():
    shared, copied = KVCache(), KVCache(share_constants=False)
    for cache in (shared, copied):
        cache.put("image", torch.tensor([10, 20, 30]))
        cache.advance(torch.tensor([[1], [2], [3]]))
        cache.repeat_rows(2)
        assert cache.tokens.view(-1).tolist() == [1, 1, 2, 2, 3, 3]
        before = cache.constant("image", lambda: None)
        cache.select(torch.tensor([1, 1, 3, 2, 4, 4]))  # a beam reorder: constants untouched
        assert cache.constant("image", lambda: None) is before
        cache.select(torch.tensor([1, 1, 4, 5]))  # input 1 done
        assert cache.tokens.view(-1).tolist() == [1, 1, 3, 3]
    assert shared.rows_per_constant == 2 and copied.rows_per_constant == 1
    assert shared.constant("image", lambda: None).tolist() == [10, 30]
    assert copied.constant("image", lambda: None).tolist() == [10, 10, 30, 30]
    with pytest.raises(ValueError, match="beams must stay with their input"):
        shared.select(torch.tensor([1, 2, 0, 3]))  # a group mixing inputs 0 and 1
    with pytest.raises(ValueError, match="whole inputs of 2 rows"):
        shared.select(torch.tensor([0, 1, 2]))


def test_greedy_takes_the_first_of_equal_maxima_as_argmax_does():
    # Hugging Face's greedy search is argmax (the first of equal maxima); bf16 logits tie often.
    def step(tokens, cache):
        cache.advance(tokens)
        logits = torch.zeros(len(tokens), 7)
        logits[:, [5, 2, 4]] = torch.tensor([1.0, 3.0, 3.0])  # 2 and 4 tie
        logits[1, 6] = 3.0  # row 1: 2, 4 and 6 tie
        return logits

    out = generate(step, torch.zeros(2, 1, dtype=torch.long), KVCache(), 3, end_token=9)
    assert out.tokens[:, 1:].tolist() == [[2, 2, 2], [2, 2, 2]]
