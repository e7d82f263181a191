"""Peak memory of one LLaVA training step: frozen LM, LoRA, full LM, each with and without
gradient checkpointing.

    python benchmarks/bridge_memory.py               # a ~40M-parameter LLaVA, on the CPU
    python benchmarks/bridge_memory.py --quick       # tiny, a smoke run
    python benchmarks/bridge_memory.py --device cuda

Each option runs in a fresh Python process, so that no allocation of another option (or of
the allocator's caches) counts. The model is a random `Llava` (mmcl ViT, 2-layer GELU
projector, a LLaMA built from a config); the image tower is frozen in every option, as in
LLaVA's recipes:
- frozen LM: only the projector trains (LLaVA stage 1);
- LoRA: the projector and LoRA (r 8, q_proj and v_proj) on the frozen LM;
- full LM: the projector and the whole LM (LLaVA stage 2).

One step is AdamW on the trainable parameters after the forward and backward passes of one
batch, with the loss on the text tokens. On the CPU, "step peak" is the process's peak
resident memory (`getrusage`'s ru_maxrss) less its resident memory just before the step (the
model, the batch and Python); on a GPU it is `torch.cuda.max_memory_allocated` less the
memory allocated before. "trainable" is what a checkpoint holds with `checkpoint_frozen:
false` (fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import torch
from _common import print_table

OPTIONS = ("frozen LM", "LoRA", "full LM")
SIZES = {
    "default": {
        "lm": {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8},
        "heads": 8,
        "vocab": 8000,
        "vision": {"image_size": 112, "patch_size": 14, "width": 384, "layers": 6},
        "batch": 8,
        "text": 96,
    },
    "quick": {
        "lm": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2},
        "heads": 2,
        "vocab": 500,
        "vision": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 2},
        "batch": 2,
        "text": 16,
    },
}


def build(size: dict):
    from mmcl.models.bridges.llava import Llava, LlavaConfig

    heads = size["heads"]
    lm = {
        "model_type": "llama",
        "vocab_size": size["vocab"],
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "max_position_embeddings": 1024,
        **size["lm"],
    }
    vision = {**size["vision"], "head_width": 64 if size["vision"]["width"] >= 64 else 16}
    config = LlavaConfig.from_dict(
        {"llava_vision": vision, "language_model": lm, "image_token_id": size["vocab"] - 1}
    )
    return Llava(config)


def one_step(option: str, size: dict, grad_checkpointing: bool, device: str) -> dict:
    """Runs in the child process: one training step, its memory in MiB."""
    import psutil

    from mmcl.nn.lora import LoraSpec, add_lora

    torch.manual_seed(0)
    model = build(size).to(device).train()
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    if option == "LoRA":
        add_lora(model, LoraSpec(target="language_model", modules=["q_proj", "v_proj"], r=8))
    elif option == "full LM":
        model.language_model.requires_grad_(True)
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    image_tokens = model.tokens_per_image
    text = torch.randint(1, size["vocab"] - 1, (size["batch"], size["text"]))
    placeholders = torch.full((size["batch"], image_tokens), model.image_token_id)
    ids = torch.cat([text[:, :1], placeholders, text[:, 1:]], dim=1).to(device)
    labels = ids.masked_fill(ids == model.image_token_id, -100)
    pixels = torch.randn(size["batch"], 3, model.image_size, model.image_size, device=device)

    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = psutil.Process().memory_info().rss
    loss = model(ids, pixels, labels=labels).loss
    loss.backward()
    optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    mib = 2**20
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in trainable),
        "before_mib": before / mib,
        "step_mib": (peak - before) / mib,
        "loss": float(loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # "option|checkpointing"
    args = parser.parse_args()
    size = SIZES["quick" if args.quick else "default"]
    if args.child:
        option, checkpointing = args.child.split("|")
        print(json.dumps(one_step(option, size, checkpointing == "1", args.device)))
        return
    rows = []
    for option in OPTIONS:
        for checkpointing in (False, True):
            command = [sys.executable, __file__, "--device", args.device]
            command += ["--child", f"{option}|{int(checkpointing)}"] + ["--quick"] * args.quick
            env = {**os.environ, "PYTHONWARNINGS": "ignore"}
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if done.returncode:
                raise SystemExit(f"{option}: the child process failed:\n{done.stderr[-2000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(
                [
                    option,
                    "yes" if checkpointing else "no",
                    f"{result['trainable'] / 1e6:.2f}M of {result['params'] / 1e6:.1f}M",
                    f"{result['trainable'] * 4 / 2**20:.1f}",
                    f"{result['before_mib']:.0f}",
                    f"{result['step_mib']:.0f}",
                ]
            )
    where = "GPU allocated" if args.device == "cuda" else "CPU resident"
    print(f"one LLaVA training step, batch {size['batch']}, {where} memory (MiB)")
    print_table(
        [
            "trains",
            "grad checkpointing",
            "trainable params",
            "trainable MiB",
            "before step",
            "step peak",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
