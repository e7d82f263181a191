"""`make demo`: an honest end-to-end run of the CLIP pipeline on built-in data, no downloads.

It builds a tiny CLIP (random weights: the training engine will replace this demo with one that
trains it), draws a few captioned shapes, runs them through preprocessing, the tokenizer and
both towers, round-trips the weights through every checkpoint format, and prints the
image-text similarity table.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

import mmcl
from mmcl.io.checkpoints import save_huggingface, save_open_clip, save_safetensors

SCENES = [
    ("a red circle", (220, 40, 40), "circle"),
    ("a green square", (40, 180, 60), "square"),
    ("a blue triangle", (40, 70, 220), "triangle"),
    ("a yellow circle", (230, 210, 40), "circle"),
]


def draw(colour: tuple[int, int, int], shape: str, size: int = 96) -> Image.Image:
    image = Image.new("RGB", (size, size), (245, 245, 245))
    pen = ImageDraw.Draw(image)
    box = (size * 0.2, size * 0.2, size * 0.8, size * 0.8)
    if shape == "circle":
        pen.ellipse(box, fill=colour)
    elif shape == "square":
        pen.rectangle(box, fill=colour)
    else:
        pen.polygon(
            [(size / 2, size * 0.15), (size * 0.85, size * 0.85), (size * 0.15, size * 0.85)],
            fill=colour,
        )
    return image


def main() -> None:
    start = time.perf_counter()
    torch.manual_seed(0)
    model = mmcl.create_model("tiny-vit")
    preprocess = mmcl.get_preprocess(model)
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"model tiny-vit: {parameters / 1e6:.1f}M parameters (random weights), "
        f"{len(mmcl.available_models())} architectures available"
    )

    captions = [caption for caption, _, _ in SCENES]
    images = torch.stack([preprocess(draw(colour, shape)) for _, colour, shape in SCENES])
    tokens = mmcl.tokenize(captions)
    print(f"tokens for {captions[0]!r}: {tokens[0, :6].tolist()} ...")

    with torch.no_grad():
        image_features, text_features, logit_scale = model(images, tokens)
        similarity = (logit_scale * image_features @ text_features.T).softmax(dim=-1)

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        save_safetensors(model, folder / "tiny.safetensors")
        save_open_clip(model, folder / "tiny-open_clip.pt")
        save_huggingface(model, folder / "tiny-hf")
        for path in (folder / "tiny.safetensors", folder / "tiny-open_clip.pt", folder / "tiny-hf"):
            name = "tiny-vit" if path.suffix == ".pt" else None
            reloaded = mmcl.create_model(name, pretrained=path)
            with torch.no_grad():
                same = torch.equal(reloaded.encode_text(tokens), model.encode_text(tokens))
            print(f"round trip through {path.name:<18} identical outputs: {same}")

    print("\nimage-text probabilities (rows: images, columns: captions)")
    print(" " * 18 + "".join(f"{c:>18}" for c in captions))
    for caption, row in zip(captions, similarity, strict=True):
        print(f"{caption:>18}" + "".join(f"{float(p):>18.3f}" for p in row))
    print(
        f"\nThe weights are random, so these probabilities mean nothing yet; `make demo` will "
        f"train this model once the training engine lands. Done in {time.perf_counter() - start:.1f}s."
    )


if __name__ == "__main__":
    main()
