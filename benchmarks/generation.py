"""Generation speed: mmcl against Hugging Face's `generate` for LLaVA and BLIP-2, same weights.

    python benchmarks/generation.py            # a small LLaVA (CLIP + LLaMA), a small BLIP-2 (OPT)
    python benchmarks/generation.py --quick    # tiny models, a correctness run (seconds)
    python benchmarks/generation.py --threads 1 --clock cpu --repeats 5   # the README's table

One run, one table. A `LlavaForConditionalGeneration` and a `Blip2ForConditionalGeneration`
are built from random configs (every parameter moved off its constant initialisation), saved
with `save_pretrained`, and both libraries load each folder: Hugging Face with
`from_pretrained`, mmcl with `mmcl.load`, in fp32 and with bf16 weights (no autocast). mmcl's
model is then `mmcl.nn.accelerate`d with ``foreign_linears=True`` (the tower's modules
swapped, and the LM's `nn.Linear` layers packed once for oneDNN), in fp32 with
``pack_fp32=True`` too (float32 calls of 4 rows or more packed; oneDNN's float32 sums are not
PyTorch's bit for bit, so the fp32 check below is what says the tokens stay the same).

Each row decodes greedily from the same prompt (LLaVA: the start token, the image's
placeholders, 12 text tokens; BLIP-2: the placeholders, the start token, 12 text tokens) with
no end token, so every row makes exactly `--new-tokens` tokens. "first token" is the time of
a 1-token call: the image through the tower (once per image, on both sides) and the prompt
through the LM. "tokens/s" counts the new tokens of every row over a full call. Timings are
medians of `--repeats` calls after a warm-up, the libraries taking turns; wall-clock time, or
with ``--clock cpu`` (one thread only) this process's CPU time, which other jobs on a shared
machine disturb less. "same tokens" is the
share of rows whose tokens equal Hugging Face's; in fp32 it must be 100% (the run fails
otherwise). In bf16 the two towers round differently (mmcl's ViT is not transformers' CLIP
code), so tokens may part ways there.

The chat rows time `mmcl ask`'s conversation (`mmcl.eval.chat.ImageChat`, fp32, LLaVA): the
time to the first token of a second question, with the language model's cache kept from the
first turn (only the new tokens run) and without it (the whole conversation runs again; the
image's tokens are still those computed when the chat began), and transformers' `generate`
on the same whole prompt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import transformers
from _common import machine_line, matmul_peak_gflops, print_table, timed

import mmcl
from mmcl.data.chat_template import VICUNA_SYSTEM
from mmcl.data.scene_qa import scene_texts
from mmcl.eval.chat import ImageChat
from mmcl.io.atomic import atomic_path
from mmcl.io.lm_tokenizer import train_lm_tokenizer
from mmcl.nn import accelerate

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PROMPT_TEXT = list(range(5, 17))  # 12 text tokens after the image
QUESTIONS = ("what colour is the circle?", "how many stars are there?")


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Off transformers' constant LayerNorms, biases and queries: every weight matters."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    return model.eval()


def llava_model(quick: bool, tokenizer) -> transformers.LlavaForConditionalGeneration:
    """CLIP ViT (256 wide, 4 layers, 112 px in 14 px patches: 64 image tokens) and LLaMA (512
    wide, 4 layers, vocabulary 8000); quick: 32 wide, 4 image tokens."""
    width, lm_width, layers = (32, 32, 1) if quick else (256, 512, 4)
    vision = transformers.CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers + 1,
        num_attention_heads=4,
        image_size=32 if quick else 112,
        patch_size=16 if quick else 14,
    )
    text = transformers.LlamaConfig(
        vocab_size=max(len(tokenizer), 128 if quick else 8000),
        hidden_size=lm_width,
        intermediate_size=lm_width * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=4 if quick else 8,
        num_key_value_heads=4 if quick else 8,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=image_token
    )
    torch.manual_seed(0)
    return randomised(transformers.LlavaForConditionalGeneration(config))


def blip2_model(quick: bool) -> transformers.Blip2ForConditionalGeneration:
    """ViT and Q-Former 256 wide (4 and 2 layers, 112 px, 32 queries), OPT 512 wide, 4 layers,
    vocabulary 8000; quick: 32 wide, 4 queries."""
    width, lm_width, layers = (32, 32, 1) if quick else (256, 512, 4)
    vocab = 128 if quick else 8000
    common = dict(hidden_size=width, intermediate_size=4 * width, num_attention_heads=4)
    config = transformers.Blip2Config(
        vision_config=dict(
            **common,
            num_hidden_layers=layers,
            image_size=32 if quick else 112,
            patch_size=16 if quick else 14,
        ),
        qformer_config=dict(**common, num_hidden_layers=max(1, layers // 2)),
        text_config=transformers.OPTConfig(
            vocab_size=vocab,
            hidden_size=lm_width,
            ffn_dim=4 * lm_width,
            num_hidden_layers=layers,
            num_attention_heads=4 if quick else 8,
            word_embed_proj_dim=lm_width,
            max_position_embeddings=512,
            pad_token_id=1,
            bos_token_id=2,
            eos_token_id=2,
        ).to_dict(),
        num_query_tokens=4 if quick else 32,
        image_token_index=vocab - 1,
    )
    torch.manual_seed(0)
    return randomised(transformers.Blip2ForConditionalGeneration(config))


def load_pair(kind: str, source, folder: Path, precision: str):
    """(transformers model, mmcl model) from one saved folder, in `precision`."""
    source.save_pretrained(folder)
    theirs = type(source).from_pretrained(folder, dtype=DTYPES[precision]).eval()
    theirs.generation_config.eos_token_id = None  # no end token: every row runs its length
    ours = mmcl.load(folder, precision=precision)[0].eval().requires_grad_(False)
    accelerate(ours, foreign_linears=True, pack_fp32=precision == "fp32")
    return theirs, ours


def prompt_ids(kind: str, model, batch: int) -> torch.Tensor:
    if kind == "llava":
        config = model.config
        start = [config.text_config.bos_token_id]
        image = [config.image_token_id] * (
            (config.vision_config.image_size // config.vision_config.patch_size) ** 2
        )
        row = start + image + PROMPT_TEXT
    else:
        config = model.config
        image = [config.image_token_index] * config.num_query_tokens
        row = image + [config.text_config.bos_token_id] + PROMPT_TEXT
    return torch.tensor([row] * batch)


def generate_calls(kind: str, theirs, ours, images, ids, new_tokens: int):
    """{(library, "first" | "full"): call returning the new tokens ``(batch, new)``}."""

    def hf(tokens):
        pad = theirs.config.text_config.pad_token_id
        out = theirs.generate(
            input_ids=ids,
            pixel_values=images,
            max_new_tokens=tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        return out[:, ids.shape[1] :]

    def ours_call(tokens):
        if kind == "llava":
            return ours.generate(ids, images, max_new_tokens=tokens, end_token=-1)
        out = ours.generate(images, ids, max_new_tokens=tokens, end_token=-1)
        return out.tokens[:, ids.shape[1] :]

    calls = {}
    for library, call in (("transformers", hf), ("mmcl", ours_call)):
        calls[(library, "first")] = lambda call=call: call(1)
        calls[(library, "full")] = lambda call=call: call(new_tokens)
    return calls


def generation_rows(kind, source, precision, batches, args, scratch: Path) -> list[dict]:
    theirs, ours = load_pair(kind, source, scratch / f"{kind}-{precision}", precision)
    size = theirs.config.vision_config.image_size
    rows = []
    for batch in batches:
        torch.manual_seed(batch)
        images = torch.randn(batch, 3, size, size).to(DTYPES[precision])
        ids = prompt_ids(kind, theirs, batch)
        calls = generate_calls(kind, theirs, ours, images, ids, args.new_tokens)
        with torch.inference_mode():
            results = timed(calls, args.warmup, args.repeats, args.clock)
        reference = results[("transformers", "full")][1]
        for library in ("transformers", "mmcl"):
            first, _ = results[(library, "first")]
            full, tokens = results[(library, "full")]
            same = (tokens == reference).all(dim=1).float().mean().item()
            rows.append(
                dict(
                    model=kind,
                    precision=precision,
                    batch=batch,
                    library=library,
                    first_ms=1000 * first,
                    tokens_per_s=batch * args.new_tokens / full,
                    same=same,
                )
            )
    return rows


def chat_rows(source, tokenizer, args, scratch: Path) -> list[dict]:
    """Second-turn time to the first token, with and without the cache kept from turn 1."""
    theirs, ours = load_pair("llava", source, scratch / "llava-chat", "fp32")
    size = theirs.config.vision_config.image_size
    torch.manual_seed(0)
    pixels = torch.randn(1, 3, size, size)

    def second_turn(keep_cache: bool):
        chat = ImageChat(ours, tokenizer, pixels, max_new_tokens=args.new_tokens // 2)
        chat.ask(QUESTIONS[0])
        if not keep_cache:
            chat.lm_cache, chat.cached_ids = None, []
        chat.max_new_tokens = 1
        start = args.clock()
        chat.ask(QUESTIONS[1])
        return args.clock() - start, chat

    def positions_run(keep_cache: bool) -> int:
        """How many positions the second question's first LM call runs."""
        lengths = []
        hook = ours.language_model.register_forward_pre_hook(
            lambda _, args, kwargs: lengths.append(kwargs["inputs_embeds"].shape[1]),
            with_kwargs=True,
        )
        try:
            chat = ImageChat(ours, tokenizer, pixels, max_new_tokens=args.new_tokens // 2)
            chat.ask(QUESTIONS[0])
            if not keep_cache:
                chat.lm_cache, chat.cached_ids = None, []
            lengths.clear()
            chat.max_new_tokens = 1
            chat.ask(QUESTIONS[1])
        finally:
            hook.remove()
        return lengths[0]

    # The whole second prompt, for transformers (as the chat without its cache runs it).
    with torch.inference_mode():
        done = second_turn(keep_cache=True)[1]
        whole = torch.tensor([done.encoder.encode_prompt(done.history[:1], QUESTIONS[1])])
        positions = {
            "mmcl, cache kept": positions_run(True),
            "mmcl, cache dropped": positions_run(False),
            "transformers generate": whole.shape[1],
        }

    def hf_turn():
        start = args.clock()
        theirs.generate(input_ids=whole, pixel_values=pixels, max_new_tokens=1, do_sample=False)
        return args.clock() - start

    calls = {
        "mmcl, cache kept": lambda: second_turn(True)[0],
        "mmcl, cache dropped": lambda: second_turn(False)[0],
        "transformers generate": hf_turn,
    }
    # The calls time themselves (a chat's first turn is not timed), taking turns.
    seconds = {name: [] for name in calls}
    recording = {name: lambda c=c, s=seconds[name]: s.append(c()) for name, c in calls.items()}
    with torch.inference_mode():
        timed(recording, args.warmup, args.repeats)
    return [
        dict(
            chat=name,
            first_ms=1000 * statistics.median(seconds[name][args.warmup :]),
            positions=positions[name],
        )
        for name in calls
    ]


def add_ratios(rows: list[dict]) -> None:
    reference = {
        (r["model"], r["precision"], r["batch"]): r for r in rows if r["library"] == "transformers"
    }
    for row in rows:
        hf = reference[(row["model"], row["precision"], row["batch"])]
        row["speedup"] = row["tokens_per_s"] / hf["tokens_per_s"]
        row["first_speedup"] = hf["first_ms"] / row["first_ms"]


def check_targets(rows: list[dict]) -> list[tuple[str, bool, str]]:
    """The issue's targets: identical greedy tokens (fp32), and >= 1.0x transformers' tokens/s."""
    ours = [r for r in rows if r["library"] == "mmcl"]
    fp32 = [r for r in ours if r["precision"] == "fp32"]
    same = min(r["same"] for r in fp32)
    checks = [("fp32 greedy tokens identical to HF's", same == 1.0, f"{100 * same:.0f}% of rows")]
    for row in ours:
        what = f"{row['model']} {row['precision']} batch {row['batch']} tokens/s >= 1.0x HF"
        checks.append((what, row["speedup"] >= 1.0, f"{row['speedup']:.2f}x"))
    return checks


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = [
        "model",
        "precision",
        "batch",
        "library",
        "first token",
        "tokens/s",
        "tokens/s vs HF",
        "first token vs HF",
        "same tokens",
    ]
    body = [
        [
            row["model"],
            row["precision"],
            str(row["batch"]),
            row["library"],
            f"{row['first_ms']:.1f} ms",
            f"{row['tokens_per_s']:.0f}",
            f"{row['speedup']:.2f}x",
            f"{row['first_speedup']:.2f}x",
            "reference" if row["library"] == "transformers" else f"{100 * row['same']:.0f}%",
        ]
        for row in rows
    ]
    return header, body


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny models, one repeat, batch 1 and 2"
    )
    parser.add_argument("--new-tokens", type=int, help="tokens per row (default 32; quick 6)")
    parser.add_argument("--repeats", type=int, help="timed calls per row (default 3; quick 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per row first")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall-clock time, or this process's CPU time (steadier on a shared machine; needs "
        "--threads 1)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        parser.error("--clock cpu sums the CPU time of every thread: give --threads 1")
    args.clock = time.process_time if args.clock == "cpu" else time.perf_counter
    args.new_tokens = args.new_tokens or (6 if args.quick else 32)
    args.repeats = args.repeats or (1 if args.quick else 3)
    batches = (1, 2) if args.quick else (1, 8)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", "accelerate left")  # the LM: its linear layers packed

    print(f"machine: {machine_line()}")
    size = 256 if args.quick else 2048
    peaks = {p: matmul_peak_gflops(DTYPES[p], size) for p in DTYPES}
    print(f"matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    texts = scene_texts(50 if args.quick else 500) + [VICUNA_SYSTEM, "USER: ASSISTANT:"] * 20
    tokenizer = train_lm_tokenizer(texts, vocab_size=120 if args.quick else 1000)
    sources = {"llava": llava_model(args.quick, tokenizer), "blip2": blip2_model(args.quick)}
    print(
        f"{args.new_tokens} new tokens a row, no end token, greedy; fp32, and bf16 weights (no "
        f"autocast); median of {args.repeats} after {args.warmup} warm-up, "
        f"{'CPU' if args.clock is time.process_time else 'wall-clock'} time"
    )
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for kind, source in sources.items():
            for precision in DTYPES:
                rows += generation_rows(kind, source, precision, batches, args, Path(scratch))
        chats = chat_rows(sources["llava"], tokenizer, args, Path(scratch))
    add_ratios(rows)
    print()
    print_table(*table(rows))
    print()
    print_table(
        ["second question (LLaVA, fp32, batch 1)", "positions run", "first token"],
        [[c["chat"], str(c["positions"]), f"{c['first_ms']:.1f} ms"] for c in chats],
    )
    checks = check_targets(rows)
    print()
    for what, met, figure in checks:
        print(f"{'met' if met else 'MISSED':6s} {what}: {figure}")
    if args.json:
        payload = {
            "machine": machine_line(),
            "peak_gflops": peaks,
            "rows": rows,
            "chat": chats,
            "targets": [{"target": w, "met": m, "measured": f} for w, m, f in checks],
        }
        with atomic_path(args.json) as temporary:
            temporary.write_text(json.dumps(payload, indent=2))
        print(f"\nwrote {args.json}")
    differing = [r for r in rows if r["precision"] == "fp32" and r["same"] < 1.0]
    if differing:
        sys.exit(f"fp32 greedy tokens differ from Hugging Face's: {differing}")
    return rows


if __name__ == "__main__":
    main()
