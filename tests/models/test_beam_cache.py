"""Beam search keeps one copy of each image's cross-attention keys and values, which the image's
beams attend to (`KVCache.repeat_rows`), on tiny BLIP and CoCa captioners.

The reference is the old path, run by the same loop: a cache that copies every constant entry
to each beam (``KVCache(share_constants=False)``), so that each beam attends to its own copy."""

import itertools

import pytest
import torch

from benchmark_scripts import import_benchmark
from conftest import tiny_blip_config, tiny_coca_config
from mmcl.models import CoCa, CoCaConfig
from mmcl.models.blip import Blip
from mmcl.models.blip_config import BlipConfig
from mmcl.nn import KVCache, MultiheadAttention, accelerate
from mmcl.nn.generation import generate

BEAMS, MAX_NEW = 3, 9  # CoCa's tiny context: 10 tokens, the start's included


def tiny_blip(dtype: torch.dtype = torch.float32, fast: bool = False) -> Blip:
    """Weights under which the 4 images' searches end at different steps (inputs drop out)."""
    torch.manual_seed(0)
    model = Blip(BlipConfig.from_dict(tiny_blip_config(sep_id=3)))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    model = model.to(dtype).eval().requires_grad_(False)
    return accelerate(model, pack_fp32=True) if fast else model


def tiny_coca() -> CoCa:
    torch.manual_seed(1)
    model = CoCa(CoCaConfig.from_dict(tiny_coca_config()))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.2)
    return model.eval().requires_grad_(False)


def images(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(dtype)


def beam_search(model, pixels, cache: KVCache):
    """The model's beam-3 captions through `cache`, and per step after the first: the rows
    decoded, and each cross-attention cache entry's rows and storage."""
    options = {"start_token": 48, "end_token": 49} if isinstance(model, CoCa) else {}
    prompt, end_token, pad_token = model.caption_prompt(pixels, **options)
    cache.put(model, model.caption_context(pixels))
    cross = []
    steps = []

    def step(tokens, cache):
        logits = model.caption_step(tokens, cache)
        if not cross:  # the layers whose keys and values are constant: the cross-attention
            layers = (m for m in model.modules() if isinstance(m, MultiheadAttention))
            cross.extend(m for m in layers if cache.has(m) and cache.length(m) == 0)
        else:
            entries = [cache.constant(m, lambda: None) for m in cross]
            steps.append(
                (len(tokens), [(len(k), k.data_ptr(), k.nbytes + v.nbytes) for k, v in entries])
            )
        return logits

    out = generate(step, prompt, cache, MAX_NEW, end_token, pad_token, BEAMS)
    assert cross, "the captioner cached no cross-attention keys"
    return out, steps


@pytest.mark.parametrize(
    "name, build, dtype",
    [
        ("blip", lambda: tiny_blip(), torch.float32),
        ("blip accelerated fp32", lambda: tiny_blip(fast=True), torch.float32),
        ("blip accelerated bf16", lambda: tiny_blip(torch.bfloat16, fast=True), torch.bfloat16),
        ("coca", tiny_coca, torch.float32),
    ],
)
def test_beams_share_one_copy_of_their_images_keys_and_find_the_copied_paths_captions(
    name, build, dtype
):
    model, pixels = build(), images(dtype)
    with torch.no_grad():
        shared, shared_steps = beam_search(model, pixels, KVCache())
        copied, copied_steps = beam_search(model, pixels, KVCache(share_constants=False))
    assert torch.equal(shared.tokens, copied.tokens), name
    assert torch.equal(shared.lengths, copied.lengths), name
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(shared.scores, copied.scores, atol=tolerance, rtol=0)
    # the same steps with the same rows decoded; the shared cache one copy per image searching
    assert [rows for rows, _ in shared_steps] == [rows for rows, _ in copied_steps]
    for (rows, entries), (_, copies) in zip(shared_steps, copied_steps, strict=True):
        for (key_rows, _, nbytes), (copy_rows, _, copy_nbytes) in zip(entries, copies, strict=True):
            assert key_rows * BEAMS == rows == copy_rows
            assert nbytes * BEAMS == copy_nbytes
    # a beam reorder leaves it where it is: it changes only when an image's search ends
    for (rows, entries), (next_rows, next_entries) in itertools.pairwise(shared_steps):
        if rows == next_rows:
            assert [e[1] for e in entries] == [e[1] for e in next_entries]
    if name.startswith("blip"):  # the images' searches end at different steps
        assert len({rows for rows, _ in shared_steps}) >= 3


def test_captioner_generate_gives_the_copied_paths_beams_and_greedy_is_unchanged():
    model, pixels = tiny_blip(), images()
    prompt, end_token, pad_token = model.caption_prompt(pixels)
    with torch.no_grad():
        beam = model.generate(pixels, max_new_tokens=MAX_NEW, beams=BEAMS)
        greedy = model.generate(pixels, max_new_tokens=MAX_NEW)
        copied, copied_greedy = (
            generate(
                model.caption_step,
                prompt,
                copying_cache(model, pixels),
                MAX_NEW,
                end_token,
                pad_token,
                beams,
            )
            for beams in (BEAMS, 1)
        )
    assert torch.equal(beam.tokens, copied.tokens)
    assert torch.equal(greedy.tokens, copied_greedy.tokens)
    assert torch.equal(greedy.scores, copied_greedy.scores)  # one beam: the same computation


def copying_cache(model, pixels) -> KVCache:
    cache = KVCache(share_constants=False)
    cache.put(model, model.caption_context(pixels))
    return cache


def test_quick_beam_cache_benchmark_runs_and_the_shared_cache_is_a_third(capsys):
    import_benchmark("beam_cache").main(["--quick"])  # exits if the two paths' captions differ
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    per_step = {(r[0], r[1]): float(r[4]) for r in rows if r[:1] in (["fp32"], ["bf16"])}
    for precision in ("fp32", "bf16"):
        copied, shared = per_step[(precision, "copied")], per_step[(precision, "shared")]
        assert copied == pytest.approx(3 * shared, rel=0.01)  # 3 beams, one copy an image
