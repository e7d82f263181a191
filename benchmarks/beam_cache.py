"""Beam search's image cache: the beams of an image sharing one copy of its cross-attention keys
and values (`mmcl.nn.KVCache`'s default) against a copy for every beam (``share_constants=False``,
mmcl's path before), in one process, at `captioning.py`'s model size.

    python benchmarks/beam_cache.py --threads 1 --clock cpu              # every caption 20 tokens
    python benchmarks/beam_cache.py --threads 1 --clock cpu --end-bias 2.3  # mixed lengths
    python benchmarks/beam_cache.py --quick                              # tiny model, smoke run

The model is `captioning.py`'s default ("mmcl": its random weights saved in Hugging Face's
layout, loaded with `mmcl.load`, then `mmcl.nn.accelerate(model, pack_fp32=True)`), in fp32 and
bf16. Both paths run the same loop on the same model, taking turns repeat by repeat; the
captions must be equal (the run fails otherwise).
"Cross cache" is what the decoding steps read of the image's keys and values: their bytes summed
over the cross-attention layers at each step after the first, and over all those steps.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
import transformers
from _common import machine_line, print_table, timed
from captioning import CLOCKS, DTYPES, blip_config, build_models

from mmcl.nn import KVCache
from mmcl.nn.generation import generate

PATHS = {"copied": False, "shared": True}  # share_constants


def caption_call(model, images: torch.Tensor, beams: int, new_tokens: int, share: bool):
    """Beam search through a cache that shares (or copies) the image's keys and values; returns
    the tokens and the cross cache's bytes at each step after the first."""
    prompt, end_token, pad_token = model.caption_prompt(images)
    cross = [block.cross_attn for block in model.text_decoder.encoder.blocks]

    def run():
        cache = KVCache(share_constants=share)
        cache.put(model, model.caption_context(images))
        read = []

        def step(tokens, cache):
            if cache.seen:  # a decoding step: what it reads of the cached images
                entries = [cache.constant(m, _not_cached) for m in cross]
                read.append(sum(t.nbytes for entry in entries for t in entry))
            return model.caption_step(tokens, cache)

        out = generate(step, prompt, cache, new_tokens, end_token, pad_token, beams)
        return out.tokens, read

    return run


def _not_cached():
    raise RuntimeError("the cross-attention keys and values were not cached at the first step")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, one repeat")
    parser.add_argument("--batch", type=int, help="images a call (default 8; quick 4)")
    parser.add_argument("--beams", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, help="default 20 (quick 8)")
    parser.add_argument("--repeats", type=int, help="timed repeats per path (default 5)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--end-bias", type=float, default=0.0, help="as captioning.py's")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall")
    args = parser.parse_args(argv)
    quick = args.quick
    batch = args.batch or (4 if quick else 8)
    new_tokens = args.max_new_tokens or (8 if quick else 20)
    repeats = args.repeats or (1 if quick else 5)
    config = blip_config(quick, 2 if quick else 4, 32 if quick else 224)
    size = config.vision_config.image_size
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    print(f"machine: {machine_line()}")
    print(f"clock: {args.clock}; [SEP] logit bias: {args.end_bias}; batch {batch}, ", end="")
    print(f"beams {args.beams}, up to {new_tokens} new tokens, {size} px images")
    torch.manual_seed(1)
    images = torch.randn(batch, 3, size, size)
    with tempfile.TemporaryDirectory() as scratch:
        built = build_models(config, Path(scratch), args.end_bias)
    models = {precision: built[("mmcl", precision)] for precision in DTYPES}
    del built  # Hugging Face's models and the plain ones: not timed here
    calls = {
        (precision, path): caption_call(
            model, images.to(DTYPES[precision]), args.beams, new_tokens, share
        )
        for precision, model in models.items()
        for path, share in PATHS.items()
    }
    with torch.inference_mode():
        results = timed(calls, 1, repeats, CLOCKS[args.clock])
    header = ["precision", "path", "images/s", "vs copied", "cross cache a step", "all steps"]
    rows = []
    for (precision, path), (seconds, (tokens, read)) in results.items():
        copied_seconds, (copied_tokens, _) = results[(precision, "copied")]
        if not torch.equal(tokens, copied_tokens):
            raise SystemExit(f"{precision}: the shared cache's captions differ from the copied")
        first = f"{read[0] / 1e6:.4g} MB" if read else "-"
        rows.append(
            [
                precision,
                path,
                f"{batch / seconds:.2f}",
                f"{copied_seconds / seconds:.3f}x",
                first,
                f"{sum(read) / 1e6:.4g} MB / {len(read)} steps",
            ]
        )
    print()
    print_table(header, rows)
    lengths = (results[("fp32", "shared")][1][0] != 0).sum(1) - 1
    print(f"\ncaption lengths (fp32): mean {statistics.mean(lengths.tolist()):.1f}")


if __name__ == "__main__":
    main()
