"""`make demo`: train a tiny CLIP from scratch on built-in scenes, then test it zero-shot.

Everything comes from the `demo` recipe (`mmcl train --config demo --show`): procedurally
generated captioned scenes, a small ModifiedResNet + text transformer, one pass over them.
At the end it prints zero-shot accuracy on held-out scenes for each classification view and a
few retrieval examples. Target: >= 90% on the shape view within 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

import mmcl
from mmcl.data.scenes import SceneCaptions
from mmcl.recipe import load_recipe, run_recipe
from mmcl.train.run_folder import MODEL_FILE, list_checkpoints


def retrieval_examples(model, count: int = 5, pool: int = 200) -> None:
    """For a few held-out scenes, the caption the model ranks first among `pool` captions."""
    scenes = SceneCaptions("test", pool, image_size=model.image_size, seed=1)
    captions = [scenes.caption(i) for i in range(pool)]
    with torch.no_grad():
        texts = model.encode_text(mmcl.tokenize(captions), normalize=True)
        images = torch.stack([scenes[i][0] for i in range(count)])
        ranked = (model.encode_image(images, normalize=True) @ texts.T).argsort(
            dim=1, descending=True
        )
    print(f"\nretrieval: the best of {pool} held-out captions for each image")
    for index in range(count):
        best = int(ranked[index, 0])
        mark = "correct" if best == index else f"true: {captions[index]!r}"
        print(f"  image {index}: {captions[best]!r}  ({mark})")


def clear_previous_demo(folder: Path) -> None:
    """The demo starts afresh each time: remove what an earlier demo run wrote into its own
    folder (by name; nothing else there is touched), which a new run would refuse to mix with."""
    for path in [
        *list_checkpoints(folder / "checkpoints"),
        folder / MODEL_FILE,
        folder / "metrics.jsonl",
        *(folder / "tensorboard").glob("events.out.tfevents.*"),
    ]:
        path.unlink(missing_ok=True)


def main() -> None:
    start = time.perf_counter()
    recipe = load_recipe("demo")
    clear_previous_demo(Path(recipe.train.output_dir))
    print(
        f"training a tiny CLIP from scratch on built-in scenes ({recipe.train.steps} steps of "
        f"{recipe.train.batch_size}); logs and checkpoints in {recipe.train.output_dir}/"
    )
    result = run_recipe(recipe)
    print(f"\ntrained in {result.seconds:.0f}s, final loss {result.final_loss:.3f}")
    print("\nzero-shot accuracy on held-out scenes")
    for key, value in sorted(result.metrics.items()):
        if key.startswith("zeroshot/"):
            print(f"  {key.removeprefix('zeroshot/scenes-'):<10} {100 * value:6.1f}%")
    recalls = {k.rsplit("/", 1)[1]: v for k, v in result.metrics.items() if "retrieval" in k}
    print(
        "retrieval recall@1: image->text {:.1f}%, text->image {:.1f}%".format(
            100 * recalls["image_to_text_R@1"], 100 * recalls["text_to_image_R@1"]
        )
    )
    model, _ = mmcl.load(Path(recipe.train.output_dir) / "model.safetensors")
    retrieval_examples(model)
    shape = result.metrics["zeroshot/scenes-shape"]
    elapsed = time.perf_counter() - start
    verdict = "met" if shape >= 0.9 and elapsed <= 300 else "NOT met"
    print(
        f"\ntarget (shape >= 90% within 5 minutes): {verdict} "
        f"({100 * shape:.1f}% in {elapsed:.0f}s)"
    )


if __name__ == "__main__":
    main()
