"""Training throughput: mmcl's training step vs open_clip's, same model, batch and data.

    python benchmarks/train_throughput.py            # tiny-vit and ViT-B-32, batch 32
    python benchmarks/train_throughput.py --quick    # smaller, for a smoke test

Every figure is measured in this run on this machine (machines here differ: AMX or not), and
reported as a ratio to open_clip's fp32 step. It also checks that, from identical weights and
batches, mmcl's fp32 loss curve equals open_clip's over the first 50 steps.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import open_clip
import torch
from _common import machine_line, matmul_peak_gflops, print_table

import mmcl
from mmcl.io.checkpoints.openai import from_openai_layout
from mmcl.train import TrainConfig, Trainer

CAPTION_WORDS = (
    "a photo of small red blue green circle square star on white black background".split()
)


def random_batch(count: int, image_size: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, image_size, image_size, generator=generator)
    # COCO-like caption lengths (8-16 words), not 77-token ones.
    lengths = torch.randint(8, 17, (count,), generator=generator).tolist()
    picks = [torch.randint(len(CAPTION_WORDS), (n,), generator=generator).tolist() for n in lengths]
    captions = [" ".join(CAPTION_WORDS[i] for i in row) for row in picks]
    return images, mmcl.tokenize(captions)


def twin_models(name: str, seed: int = 0):
    torch.manual_seed(seed)
    reference = open_clip.model.CLIP(**mmcl.models.get_model_config(name))
    ours = mmcl.create_model(name)
    ours.load_state_dict(from_openai_layout(reference.state_dict()))
    return reference.train(), ours.train()


def open_clip_steps(model, images, tokens, batch_size, steps, precision, lr=1e-4):
    """open_clip's own training step: forward, its ClipLoss, backward, AdamW."""
    loss_fn = open_clip.loss.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    losses, times = [], []
    for step in range(steps):
        start = (step * batch_size) % (len(images) - batch_size + 1)
        batch = slice(start, start + batch_size)
        began = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            image_features, text_features, logit_scale = model(images[batch], tokens[batch])
            loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - began)
        losses.append(loss.item())
    return losses, times


class FixedPairs(torch.utils.data.Dataset):
    def __init__(self, images, tokens):
        self.images, self.tokens = images, tokens

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], self.tokens[index]


def mmcl_steps(model, images, tokens, batch_size, steps, precision, lr=1e-4):
    """mmcl's Trainer (the real loop: logging, scheduling and all), reading its own timings."""
    with tempfile.TemporaryDirectory() as folder:
        config = TrainConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            weight_decay=0.0,
            schedule="step",  # no decay points: a constant rate, like the reference loop
            shuffle=False,  # the reference loop's batches, in its order
            precision=precision,
            progress=False,
            tensorboard=False,
            log_every=1,
            output_dir=folder,
        )
        trainer = Trainer(model, FixedPairs(images, tokens), config)
        trainer.fit()
        records = [json.loads(line) for line in open(Path(folder) / "metrics.jsonl")]
    train = [r for r in records if r["kind"] == "train"]
    return [r["loss"] for r in train], [batch_size / r["samples_per_s"] for r in train]


def memory_probe(mode: str, name: str, batch_size: int, chunk: int) -> None:
    """One training step in this fresh process; prints the peak memory it added (MiB)."""
    from mmcl.train.grad_cache import grad_cache_step
    from mmcl.train.losses import ClipLoss

    torch.manual_seed(0)
    model = mmcl.create_model(name).train()
    images, tokens = random_batch(batch_size, model.image_size)
    loss_fn = ClipLoss()
    sampler = RssSampler()
    with sampler:
        if mode == "cache":
            grad_cache_step(model, images, tokens, loss_fn, chunk)
        else:
            image_features, text_features, scale = model(images, tokens)
            loss_fn(image_features, text_features, scale).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    print(json.dumps({"added_mib": sampler.added_mib, "grad_norm": float(grads.norm())}))


class RssSampler:
    """Peak resident memory above the starting point, sampled every millisecond (Linux)."""

    def __enter__(self):
        import threading

        self.page = resource.getpagesize()
        self.start = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self._rss())

    def _rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self.page

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    @property
    def added_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def gradient_cache_memory(name: str, batch_size: int, chunk: int) -> list[list[str]]:
    rows = []
    for mode in ("plain", "cache"):
        command = [
            sys.executable,
            __file__,
            "--memory-probe",
            mode,
            "--probe-model",
            name,
            "--batch-size",
            str(batch_size),
            "--chunk",
            str(chunk),
        ]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        label = "plain backward" if mode == "plain" else f"gradient cache, chunks of {chunk}"
        rows.append(
            [
                name,
                str(batch_size),
                label,
                f"{result['added_mib']:.0f}",
                f"{result['grad_norm']:.6f}",
            ]
        )
    return rows


def throughput(times: list[float], batch_size: int, warmup: int) -> float:
    return batch_size / statistics.median(times[warmup:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, smaller models")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--memory-probe", choices=["plain", "cache"], help=argparse.SUPPRESS)
    parser.add_argument("--probe-model", default="tiny-vit", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=32, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe, args.probe_model, args.batch_size, args.chunk)
        return
    models = ["tiny-vit"] if args.quick else ["tiny-vit", "ViT-B-32"]
    steps, warmup = (6, 2) if args.quick else (12, 4)

    print(f"machine: {machine_line()}")
    fp32_peak, bf16_peak = matmul_peak_gflops(torch.float32), matmul_peak_gflops(torch.bfloat16)
    print(f"matmul peak: fp32 {fp32_peak:.0f} GFLOP/s, bf16 {bf16_peak:.0f} GFLOP/s\n")

    rows = []
    for name in models:
        size = mmcl.models.get_model_config(name)["vision_cfg"]["image_size"]
        images, tokens = random_batch(args.batch_size * steps, size)
        results = {}
        for library, run in (("open_clip", open_clip_steps), ("mmcl", mmcl_steps)):
            for precision in ("fp32", "bf16"):
                reference, ours = twin_models(name)
                model = reference if library == "open_clip" else ours
                _, times = run(model, images, tokens, args.batch_size, steps, precision)
                results[(library, precision)] = throughput(times, args.batch_size, warmup)
        base = results[("open_clip", "fp32")]
        for (library, precision), rate in results.items():
            rows.append([name, library, precision, f"{rate:.1f}", f"{rate / base:.2f}x"])
    print(f"training samples/s (batch {args.batch_size}, COCO-like caption lengths)")
    print_table(["model", "library", "precision", "samples/s", "vs open_clip fp32"], rows)

    # Same loss curve: identical weights and batches, fp32, 50 steps (fewer with --quick).
    curve_steps = 10 if args.quick else 50
    images, tokens = random_batch(16 * curve_steps, 32, seed=1)
    reference, ours = twin_models("tiny-vit", seed=1)
    theirs, _ = open_clip_steps(reference, images, tokens, 16, curve_steps, "fp32")
    mine, _ = mmcl_steps(ours, images, tokens, 16, curve_steps, "fp32")
    gap = max(abs(a - b) for a, b in zip(theirs, mine, strict=True))
    # Gradient caching: one step's peak memory, and the same gradient (norm) as plain backward.
    name, batch = ("tiny-vit", 256) if args.quick else ("ViT-B-32", 128)
    print("\ngradient caching: peak memory added by one training step (fresh process each)")
    print_table(
        ["model", "batch", "method", "peak MiB", "gradient norm"],
        gradient_cache_memory(name, batch, 16),
    )
    print(
        f"\nloss curve, tiny-vit fp32, {curve_steps} steps: max |mmcl - open_clip| = {gap:.2e} "
        f"(first {theirs[0]:.4f} / {mine[0]:.4f}, last {theirs[-1]:.4f} / {mine[-1]:.4f})"
    )


if __name__ == "__main__":
    main()
