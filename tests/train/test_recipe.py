"""Recipes (YAML) and `mmcl train`: every shipped recipe parses; each data kind trains."""

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import mmcl
from mmcl.cli import main
from mmcl.data.shards import ShardStream, write_shards
from mmcl.io.transforms import get_preprocess
from mmcl.recipe import load_recipe, shipped_recipes
from mmcl.train import TrainConfig, Trainer, TrainingPlugin
from mmcl.train.bridges import BRIDGES

TINY_TRAIN = (
    "  steps: 3\n  batch_size: 4\n  progress: false\n  tensorboard: false\n  log_every: 1\n"
)


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", shipped_recipes())
def test_shipped_recipes_parse(name):
    recipe = load_recipe(name)
    if recipe.model.get("kind") in (
        *BRIDGES,
        "cogvlm",
    ):  # into an LM: tests/train/test_*_recipe(s).py
        assert recipe.data["kind"] in ("scene_conversations", "llava_json")
        return
    if recipe.model.get("kind") == "blip_vqa":  # tests/train/test_blip_vqa_recipe.py
        assert recipe.data["kind"] == "scene_conversations" and recipe.data["max_turns"] == 1
        return
    assert recipe.model["name"] in mmcl.available_models()
    assert recipe.data["kind"] in ("scenes", "csv", "folder", "dataset", "shards")


def test_overrides_and_bad_recipes(tmp_path):
    recipe = load_recipe("demo", ["train.lr=0.01", "train.precision=fp32", "eval.size=10"])
    assert recipe.train.lr == 0.01 and recipe.eval["size"] == 10
    with pytest.raises(ValueError, match="expected section.key=value"):
        load_recipe("demo", ["lr=0.01"])
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['optimiser'\]"):
        load_recipe(write(tmp_path / "a.yaml", "model: {name: tiny-vit}\noptimiser: {}\n"))
    with pytest.raises(ValueError, match="'data' section is missing"):
        load_recipe(write(tmp_path / "b.yaml", "model: {name: tiny-vit}\n"))
    with pytest.raises(ValueError, match="invalid YAML"):
        load_recipe(write(tmp_path / "c.yaml", "model: [unclosed\n"))
    with pytest.raises(ValueError, match=r"train: unknown setting\(s\) \['learning_rate'\]; valid"):
        load_recipe("demo", ["train.learning_rate=1"])
    with pytest.raises(FileNotFoundError, match="not a shipped recipe"):
        load_recipe("no-such-recipe")


def test_cli_lists_and_shows_recipes(capsys):
    assert main(["train", "--list"]) == 0
    assert "demo" in capsys.readouterr().out.split()
    assert main(["train", "--config", "demo", "--show"]) == 0
    assert "kind: scenes" in capsys.readouterr().out


def test_cli_trains_on_scenes_and_evaluates(tmp_path, capsys):
    recipe = write(
        tmp_path / "scenes.yaml",
        "model: {name: tiny-vit}\ndata: {kind: scenes, size: 64}\n"
        "eval: {scene_views: [shape], size: 16, retrieval_size: 12}\ntrain:\n" + TINY_TRAIN,
    )
    assert main(["train", "--config", str(recipe), "--output-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "zeroshot/scenes-shape" in out and "retrieval/scenes/image_to_text_R@1" in out
    model, _ = mmcl.load(tmp_path / "run" / "model.safetensors")
    assert model.image_size == 32


def test_cli_trains_on_a_caption_table_and_a_class_folder(tmp_path):
    root = tmp_path / "images"
    rows = ["image,caption"]
    for colour in ("red", "green"):
        (root / colour).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 36), colour).save(root / colour / f"{i}.png")
            rows.append(f"{colour}/{i}.png,a {colour} square number {i}")
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    csv_recipe = write(
        tmp_path / "csv.yaml",
        f"model: {{name: tiny-vit}}\ndata: {{kind: csv, path: {root / 'captions.csv'}}}\n"
        "train:\n" + TINY_TRAIN,
    )
    folder_recipe = write(
        tmp_path / "folder.yaml",
        f"model: {{name: tiny-vit}}\ndata: {{kind: folder, root: {root}}}\n"
        f"eval: {{folder: {root}}}\ntrain:\n" + TINY_TRAIN,
    )
    for recipe in (csv_recipe, folder_recipe):
        out = tmp_path / recipe.stem
        assert main(["train", "--config", str(recipe), "--output-dir", str(out)]) == 0
        assert (out / "model.safetensors").is_file()


SHARED_CIFAR10 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10"


@pytest.mark.slow
@pytest.mark.skipif(
    not SHARED_CIFAR10.is_dir(), reason=f"real data not present at {SHARED_CIFAR10} (CI has it)"
)
def test_shipped_cifar10_recipe_runs_on_the_shared_images(tmp_path, capsys):
    overrides = [
        "eval.max_images=100",
        "train.steps=3",
        "train.batch_size=16",
        "train.workers=0",
        "train.warmup_steps=1",
        "train.eval_every=null",
        "train.checkpoint_every=null",
        "train.tensorboard=false",
    ]
    args = ["train", "--config", "cifar10-captions", "--output-dir", str(tmp_path), "--quiet"]
    args += ["--data-root", str(SHARED_CIFAR10.parent)]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0
    assert "zeroshot/cifar10" in capsys.readouterr().out


def test_missing_caption_column_fails_before_training(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("image,text\na.png,hello\n")
    recipe = write(
        tmp_path / "r.yaml",
        f"model: {{name: tiny-vit}}\ndata: {{kind: csv, path: {tmp_path / 't.csv'}}}\n"
        "train:\n" + TINY_TRAIN,
    )
    assert main(["train", "--config", str(recipe), "--output-dir", str(tmp_path / "o")]) == 2
    assert "caption" in capsys.readouterr().err
    assert not (tmp_path / "o" / "metrics.jsonl").exists()


def png_bytes(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def make_shards(tmp_path, count=48):
    samples = [
        {
            "__key__": f"{i:04d}",
            "png": png_bytes((i * 5 % 256, 80, 160)),
            "txt": f"sample {i} of a shard",
        }
        for i in range(count)
    ]
    return write_shards(samples, tmp_path / "shards", samples_per_shard=12)


def stream_run(tmp_path, shards, name, **overrides):
    stream = ShardStream(
        [str(p) for p in shards], get_preprocess(32), mmcl.tokenize, batch_size=4, num_workers=0
    )
    config = TrainConfig(
        steps=8,
        batch_size=4,
        lr=1e-4,
        progress=False,
        tensorboard=False,
        log_every=1,
        output_dir=str(tmp_path / name),
        **overrides,
    )
    torch.manual_seed(0)
    return Trainer(mmcl.create_model("tiny-vit"), stream, config)


def curve(folder):
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


def test_stream_training_resumes_at_the_exact_sample(tmp_path):
    shards = make_shards(tmp_path)  # 48 samples: one epoch is 12 steps of 4, runs take 8
    stream_run(tmp_path, shards, "whole").fit()

    class Stop(Exception):
        pass

    class StopAt(TrainingPlugin):
        def __init__(self, step=None):
            self.stop_step = step

        def after_optimizer_step(self, trainer):
            if trainer.step == self.stop_step:
                raise Stop

    trainer = stream_run(tmp_path, shards, "cut", checkpoint_every=5)
    trainer.plugins.append(StopAt(6))
    with pytest.raises(Stop):
        trainer.fit()
    resumed = stream_run(tmp_path, shards, "cut", checkpoint_every=5, resume="latest")
    resumed.plugins.append(StopAt())  # the same plugins as the run it continues
    resumed.fit()
    assert curve(tmp_path / "cut") == curve(tmp_path / "whole")


def test_stream_needs_steps_and_matching_batch(tmp_path):
    shards = make_shards(tmp_path, count=24)
    stream = ShardStream(
        [str(p) for p in shards], get_preprocess(32), mmcl.tokenize, batch_size=4, num_workers=0
    )
    model = mmcl.create_model("tiny-vit")
    with pytest.raises(ValueError, match="set the run's `steps`"):
        Trainer(model, stream, TrainConfig(batch_size=4))
    with pytest.raises(ValueError, match="must equal the run's batch_size"):
        Trainer(model, stream, TrainConfig(steps=2, batch_size=8))
