"""BLIP-2 generation: mmcl's loop against Hugging Face's `generate`, on the same weights.

    python benchmarks/generation_blip2.py             # a small OPT BLIP-2, fp32 and bf16
    python benchmarks/generation_blip2.py --quick     # tiny, a smoke run

One `Blip2ForConditionalGeneration` is built from a random config, saved with
`save_pretrained` and loaded by mmcl, so both sides compute the same function. Each row
decodes greedily from the image placeholders and the start token, with no end token, so
every row makes exactly `--new-tokens` tokens. "first token" is the time of a 1-token run
(the image through the tower and Q-Former, the prompt through the LM); "tokens/s" counts the
new tokens of every row over a full run. Figures are medians of `--repeats` runs after a
warm-up; "same tokens" checks that both sides chose identical tokens.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch
import transformers
from _common import machine_line, print_table

import mmcl


def hf_model(quick: bool) -> transformers.Blip2ForConditionalGeneration:
    width, layers = (32, 1) if quick else (256, 4)
    torch.manual_seed(0)
    config = transformers.Blip2Config(
        vision_config=dict(
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=layers,
            num_attention_heads=4,
            image_size=64 if quick else 224,
            patch_size=16,
        ),
        qformer_config=dict(
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=layers,
            num_attention_heads=4,
        ),
        text_config=transformers.OPTConfig(
            vocab_size=1000 if quick else 8000,
            hidden_size=2 * width,
            ffn_dim=8 * width,
            num_hidden_layers=layers,
            num_attention_heads=4,
            word_embed_proj_dim=2 * width,
            max_position_embeddings=256,
            pad_token_id=1,
            bos_token_id=2,
            eos_token_id=2,
        ).to_dict(),
        num_query_tokens=8 if quick else 32,
        image_token_index=(1000 if quick else 8000) - 1,
    )
    return transformers.Blip2ForConditionalGeneration(config).eval()


def hf_generate(model, images: torch.Tensor, tokens: int) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(
            pixel_values=images,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            eos_token_id=-1,
        )


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    transformers.logging.set_verbosity_error()
    hf = hf_model(args.quick)
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        models = {"fp32": (hf, mmcl.load(folder)[0])}
        bf16_hf = transformers.Blip2ForConditionalGeneration.from_pretrained(
            folder, dtype=torch.bfloat16
        ).eval()
        models["bf16"] = (bf16_hf, mmcl.load(folder, precision="bf16")[0])
    size = hf.config.vision_config.image_size
    rows = []
    for precision, (theirs, ours) in models.items():
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        for batch in (1, 8):
            images = torch.randn(batch, 3, size, size, dtype=dtype)

            def hf_run(tokens: int, model=theirs, images=images):
                return hf_generate(model, images, tokens)

            def mmcl_run(tokens: int, model=ours, images=images):
                return model.generate(images, max_new_tokens=tokens, end_token=-1).tokens

            same = torch.equal(hf_run(args.new_tokens), mmcl_run(args.new_tokens))
            for name, run in (("transformers", hf_run), ("mmcl", mmcl_run)):
                first = median_seconds(lambda run=run: run(1), args.repeats)
                full = median_seconds(lambda run=run: run(args.new_tokens), args.repeats)
                rows.append(
                    [
                        precision,
                        batch,
                        name,
                        f"{first * 1000:.0f} ms",
                        f"{batch * args.new_tokens / full:.0f}",
                        "yes" if same else "NO",
                    ]
                )
    print(machine_line())
    print_table(["precision", "batch", "library", "first token", "tokens/s", "same tokens"], rows)


if __name__ == "__main__":
    main()
