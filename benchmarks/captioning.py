"""Captioning speed: mmcl's BLIP against Hugging Face's `BlipForConditionalGeneration`, same weights.

    python benchmarks/captioning.py                 # base widths (768), 4+4 layers, 224 px
    python benchmarks/captioning.py --quick         # tiny model, a correctness smoke run (< 60 s)
    python benchmarks/captioning.py --layers 12 --image-size 384   # BLIP-base itself (slow on CPUs)
    python benchmarks/captioning.py --threads 1 --clock cpu --end-bias 2.3  # CPU time; mixed lengths

One run, one table. A `BlipForConditionalGeneration` is built from a config with random weights
(every parameter moved off its constant initialisation), saved with `save_pretrained`, and both
libraries load that folder: Hugging Face with `from_pretrained`, mmcl with `mmcl.load`. Rows:
captions of a batch of images, greedy and beam 3 (length penalty 1), in fp32 and bf16, in
images/s; and one training step (forward and backward of the captioning LM loss, label smoothing
0.1, no optimiser; float32 weights, "bf16" under autocast) in images/s; and the image
tower alone, whose time bounds what any captioner can gain over another ("greedy ceiling"). "mmcl" is the loaded model after `mmcl.nn.accelerate` (packed
weights, float32 too: ``pack_fp32=True``), "mmcl plain" the loaded model as it is: the same
generation loop (`mmcl.nn.generation`: image tokens and their cross-attention keys/values computed
once per caption, KV cache, finished rows dropped), without the module swaps.

Timings are the median of timed repeats after one warm-up, the calls taking turns, so a change
in the machine's load touches all rows alike. ``--clock cpu`` times this process's CPU time
instead of the wall clock: with one thread on a machine shared with other jobs it leaves out
the time the process waited for a core (memory shared with the other jobs still slows both
libraries alike). After the table, "decoding" splits each caption time into the image tower
and the rest (the cross-attention keys/values of the image tokens and the decoding steps).
The greedy captions in fp32 must equal Hugging Face's token for token (the run fails
otherwise); "same tokens" gives the share of rows that do.

Random weights all but never choose [SEP], so by default every caption runs to
``--max-new-tokens`` and no row finishes early. ``--end-bias 2.3`` raises [SEP]'s logit in the
saved weights (both libraries load them), so captions end at mixed lengths (8 images: 5 to 20
tokens, about 11 on average) and stopping finished rows counts, as with a trained captioner.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from _common import machine_line, matmul_peak_gflops, print_table, timed

import mmcl
from mmcl.io.atomic import atomic_path
from mmcl.nn import accelerate
from mmcl.train.blip_losses import lm_loss, lm_targets

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
DEC, SEP, PAD = 30522, 102, 0  # BERT's vocabulary plus [DEC] and [ENC], as BLIP's


def blip_config(quick: bool, layers: int, image_size: int) -> transformers.BlipConfig:
    """BLIP-base's widths (768, MLP 3072, 12 heads, vocabulary 30524), `layers` in each
    tower; with `quick` a tiny model."""
    width, mlp, heads, vocab = (64, 128, 4, 1000) if quick else (768, 3072, 12, 30524)
    dec = vocab - 2 if quick else DEC
    vision = dict(
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=8 if quick else 16,
    )
    text = dict(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=64 if quick else 512,
        encoder_hidden_size=width,
        bos_token_id=dec,
        label_smoothing=0.1,  # BLIP's (transformers' default is 0)
        sep_token_id=SEP,
        pad_token_id=PAD,
    )
    return transformers.BlipConfig(vision_config=vision, text_config=text)


def build_models(
    config: transformers.BlipConfig, folder: Path, end_bias: float = 0.0
) -> dict[tuple[str, str], object]:
    """(library, precision) -> model, every one loaded from the same saved folder. `end_bias`
    is added to the LM head's bias of [SEP]."""
    torch.manual_seed(0)
    source = transformers.BlipForConditionalGeneration(config).eval()
    with torch.no_grad():  # off HF's constant biases and LayerNorms: every weight matters
        for parameter in source.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
        # Random weights all but never choose [SEP], so every caption runs to the limit; a
        # higher [SEP] logit ends them at mixed lengths, as a trained captioner's end.
        head = source.text_decoder.cls.predictions
        head.decoder.bias[SEP] += end_bias
        if head.bias is not head.decoder.bias:
            head.bias.copy_(head.decoder.bias)
    source.save_pretrained(folder)
    hf = transformers.BlipForConditionalGeneration
    models = {}
    for precision, dtype in DTYPES.items():
        models[("hf", precision)] = hf.from_pretrained(folder, dtype=dtype).eval()
        models[("mmcl plain", precision)] = mmcl.load(folder, precision=precision)[0].eval()
        fast = mmcl.load(folder, precision=precision)[0].eval().requires_grad_(False)
        models[("mmcl", precision)] = accelerate(fast, pack_fp32=True)
    return models


def caption_call(library: str, model, images: torch.Tensor, beams: int, new_tokens: int):
    """A call returning each row's tokens (the start token, the caption, no padding)."""
    if library == "hf":

        def run():
            out = model.generate(
                pixel_values=images, do_sample=False, num_beams=beams, max_new_tokens=new_tokens
            )
            return out
    else:

        def run():
            return model.generate(images, max_new_tokens=new_tokens, beams=beams).tokens

    return lambda: [[t for t in row if t != PAD] for row in run().tolist()]


def train_call(library: str, model, images: torch.Tensor, tokens: torch.Tensor, precision: str):
    """One forward and backward of the LM loss (labels: the tokens, padding ignored)."""
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16")
    mask = (tokens != PAD).long()

    def run():
        model.zero_grad(set_to_none=True)
        with autocast:
            if library == "hf":
                labels = tokens.masked_fill(tokens == PAD, -100)
                loss = model(
                    pixel_values=images, input_ids=tokens, attention_mask=mask, labels=labels
                ).loss
            else:
                logits = model.caption_logits(model.encode_image_tokens(images), tokens)
                loss = lm_loss(logits, lm_targets(tokens, pad_id=PAD))
        loss.backward()
        return float(loss.detach())

    return run


def training_captions(batch: int, length: int, vocab: int) -> torch.Tensor:
    """COCO-like caption token rows: [DEC], words, [SEP] at lengths from `length` / 2 on,
    then padding."""
    tokens = torch.randint(SEP + 1, vocab - 2, (batch, length))
    tokens[:, 0] = vocab - 2  # [DEC]
    ends = torch.randint(length // 2, length, (batch,))
    tokens[torch.arange(batch), ends] = SEP
    tokens[torch.arange(length)[None, :] > ends[:, None]] = PAD
    return tokens


def caption_rows(models, images, beams, new_tokens, warmup, repeats, clock) -> list[dict]:
    calls = {}
    for (library, precision), model in models.items():
        batch = images.to(DTYPES[precision])
        calls[(library, precision)] = caption_call(library, model, batch, beams, new_tokens)
    with torch.inference_mode():
        results = timed(calls, warmup, repeats, clock)
    task = "greedy" if beams == 1 else f"beam {beams}"
    rows = []
    for (library, precision), (seconds, captions) in results.items():
        reference = results[("hf", precision)][1]
        same = sum(a == b for a, b in zip(captions, reference, strict=True)) / len(captions)
        length = statistics.mean(len(c) - 1 for c in captions)
        rows.append(_row(task, library, precision, len(images) / seconds, same, length))
    return rows


def image_rows(models, images, warmup, repeats, clock) -> list[dict]:
    """The image tower alone (what a caption needs before its first token): the most a
    captioner can gain is its share of the captioning time."""
    calls = {}
    for (library, precision), model in models.items():
        if library == "mmcl plain":
            continue
        batch = images.to(DTYPES[precision])
        if library == "hf":
            calls[(library, precision)] = lambda m=model, x=batch: m.vision_model(x)
        else:
            calls[(library, precision)] = lambda m=model, x=batch: m.visual(x)
    with torch.inference_mode():
        results = timed(calls, warmup, repeats, clock)
    return [
        _row("image tower", library, precision, len(images) / seconds, None, None)
        for (library, precision), (seconds, _) in results.items()
    ]


def ceilings(rows: list[dict]) -> list[str]:
    """Per precision: HF's greedy captioning time over mmcl's image tower time alone, the
    ratio mmcl would reach if decoding cost nothing."""
    rate = {(r["task"], r["library"], r["precision"]): r["rate"] for r in rows}
    lines = []
    for precision in DTYPES:
        tower = rate.get(("image tower", "mmcl", precision))
        greedy = rate.get(("greedy", "hf", precision))
        if tower and greedy:
            lines.append(f"{precision} {tower / greedy:.2f}x")
    return lines


def decoding_lines(rows: list[dict], batch: int) -> list[str]:
    """Per captioning row of HF and mmcl: milliseconds a batch in the image tower and in the
    rest (caption time minus tower time: the image tokens' cross-attention keys/values and
    the decoding steps), and mmcl's ratio over HF on the rest alone."""
    seconds = {(r["task"], r["library"], r["precision"]): batch / r["rate"] for r in rows}
    lines = []
    for task in ("greedy", "beam 3"):
        for precision in DTYPES:
            parts = {}
            for library in ("hf", "mmcl"):
                caption = seconds.get((task, library, precision))
                tower = seconds.get(("image tower", library, precision))
                if caption is None or tower is None:
                    break
                parts[library] = (tower, caption - tower)
            if len(parts) < 2:
                continue
            (hf_tower, hf_rest), (tower, rest) = parts["hf"], parts["mmcl"]
            ratio = f"{hf_rest / rest:.2f}x" if rest > 0 else "-"
            lines.append(
                f"{task} {precision}: HF tower {1000 * hf_tower:.0f} + rest {1000 * hf_rest:.0f} "
                f"ms, mmcl tower {1000 * tower:.0f} + rest {1000 * rest:.0f} ms (rest {ratio})"
            )
    return lines


def train_rows(models, images, tokens, warmup, repeats, clock) -> list[dict]:
    # Float32 weights, as one trains: "bf16" is autocast. Accelerate is for inference: the
    # plain mmcl model is the one that trains.
    calls = {}
    for precision in DTYPES:
        for library, name in (("hf", "hf"), ("mmcl plain", "mmcl")):
            model = models[(library, "fp32")].train().requires_grad_(True)
            calls[(name, precision)] = train_call(library, model, images, tokens, precision)
    results = timed(calls, warmup, repeats, clock)
    rows = []
    for (library, precision), (seconds, loss) in results.items():
        row = _row("train step", library, precision, len(images) / seconds, None, None)
        row["loss"] = loss
        rows.append(row)
    return rows


def _row(task, library, precision, rate, same, length) -> dict:
    return dict(
        task=task, library=library, precision=precision, rate=rate, same=same, length=length
    )


def add_ratios(rows: list[dict]) -> None:
    for row in rows:
        for other in rows:
            if (other["task"], other["precision"], other["library"]) == (
                row["task"],
                row["precision"],
                "hf",
            ):
                row["vs_hf"] = row["rate"] / other["rate"]


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["task", "library", "precision", "images/s", "vs HF", "same tokens", "tokens/caption"]
    body = [
        [
            row["task"],
            row["library"],
            row["precision"],
            f"{row['rate']:.2f}",
            f"{row['vs_hf']:.2f}x",
            "-" if row["same"] is None else f"{100 * row['same']:.0f}%",
            "-" if row["length"] is None else f"{row['length']:.1f}",
        ]
        for row in rows
    ]
    return header, body


def check_targets(rows: list[dict]) -> list[tuple[str, bool, str]]:
    """The issue's targets: greedy fp32 captions equal HF's; generation >= 1.5x HF."""
    checks = []
    for row in rows:
        if (row["task"], row["library"], row["precision"]) == ("greedy", "mmcl", "fp32"):
            same = row["same"] == 1.0
            checks.append(("greedy fp32 captions equal HF's", same, f"{100 * row['same']:.0f}%"))
    for row in rows:
        if row["library"] == "mmcl" and row["task"] in ("greedy", "beam 3"):
            what = f"{row['task']} {row['precision']} >= 1.5x HF"
            checks.append((what, row["vs_hf"] >= 1.5, f"{row['vs_hf']:.2f}x"))
    return checks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, one repeat")
    parser.add_argument("--layers", type=int, help="in each tower (default 4; quick 2)")
    parser.add_argument("--image-size", type=int, help="default 224 (quick 32)")
    parser.add_argument("--batch", type=int, help="images a call (default 8; quick 4)")
    parser.add_argument("--max-new-tokens", type=int, help="default 20 (quick 8)")
    parser.add_argument("--repeats", type=int, help="timed repeats per row (default 3; quick 1)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the rows and targets here")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per row first")
    parser.add_argument(
        "--end-bias",
        type=float,
        default=0.0,
        help="added to the [SEP] logit's bias, so captions end at mixed lengths (e.g. 2.3); "
        "default 0: every caption runs to --max-new-tokens",
    )
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared machine "
        "with --threads 1)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    layers = args.layers or (2 if quick else 4)
    image_size = args.image_size or (32 if quick else 224)
    batch = args.batch or (4 if quick else 8)
    new_tokens = args.max_new_tokens or (8 if quick else 20)
    repeats = args.repeats or (1 if quick else 3)
    clock = CLOCKS[args.clock]
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    print(f"machine: {machine_line()}")
    size = 512 if quick else 2048
    peaks = {p: matmul_peak_gflops(DTYPES[p], size) for p in DTYPES}
    print(f"matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    config = blip_config(quick, layers, image_size)
    width = config.vision_config.hidden_size
    print(f"clock: {args.clock}; [SEP] logit bias: {args.end_bias}")
    print(
        f"model: width {width}, {layers}+{layers} layers, {image_size} px images, vocabulary "
        f"{config.text_config.vocab_size}; batch {batch}, up to {new_tokens} new tokens"
    )
    torch.manual_seed(1)
    images = torch.randn(batch, 3, image_size, image_size)
    tokens = training_captions(batch, 12 if quick else 24, config.text_config.vocab_size)

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        models = build_models(config, Path(scratch), args.end_bias)
        for beams in (1, 3):
            rows += caption_rows(models, images, beams, new_tokens, args.warmup, repeats, clock)
        rows += image_rows(models, images, args.warmup, repeats, clock)
        rows += train_rows(models, images, tokens, args.warmup, repeats, clock)
    add_ratios(rows)
    print()
    print_table(*table(rows))
    print(
        "\ngreedy ceiling (HF greedy time / mmcl image tower time: mmcl's ratio if decoding "
        "cost nothing): " + ", ".join(ceilings(rows))
    )
    print("\ndecoding (per batch: image tower + the rest):")
    for line in decoding_lines(rows, batch):
        print("  " + line)
    losses = {r["precision"]: [] for r in rows if r["task"] == "train step"}
    for row in rows:
        if row["task"] == "train step":
            losses[row["precision"]].append(f"{row['library']} {row['loss']:.4f}")
    print("\ntraining-step losses: " + "; ".join(f"{p}: {', '.join(v)}" for p, v in losses.items()))
    checks = check_targets(rows)
    print()
    for what, met, figure in checks:
        print(f"{'met' if met else 'MISSED':6s} {what}: {figure}")
    if args.json:
        payload = {
            "machine": machine_line(),
            "argv": sys.argv[1:],
            "clock": args.clock,
            "end_bias": args.end_bias,
            "peak_gflops": peaks,
            "rows": rows,
            "targets": [{"target": w, "met": m, "measured": f} for w, m, f in checks],
        }
        with atomic_path(args.json) as temporary:
            temporary.write_text(json.dumps(payload, indent=2))
        print(f"\nwrote {args.json}")
    if not checks[0][1]:
        sys.exit("greedy fp32 captions differ from Hugging Face's")


if __name__ == "__main__":
    main()
