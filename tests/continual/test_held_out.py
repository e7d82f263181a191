"""Zero-shot accuracy on held-out sets after every task of a captioned stream: against a
brute-force computation, recorded in progress.json (and resumed exactly), in the report."""

import json

import pytest
import torch
import torch.nn.functional as F
from continual_helpers import small_config, tiny_clip
from torch.utils.data import TensorDataset

from mmcl.continual.captioned import scene_styles_stream
from mmcl.continual.held_out import HeldOutSet, held_out_accuracy, scene_held_out_sets
from mmcl.continual.methods import build_method
from mmcl.continual.report import compare_table, read_report
from mmcl.continual.runner import run_continual
from mmcl.io.tokenizer import tokenize


@torch.no_grad()
def brute_force_predictions(model, images, classnames, templates):
    """One image and one prompt at a time: the class whose templates' mean embedding (each
    normalised, the mean normalised again) has the largest cosine with the image."""
    model.eval()
    classes = []
    for name in classnames:
        prompts = [
            F.normalize(model.encode_text(tokenize([t.format(name)])).float(), dim=-1)
            for t in templates
        ]
        classes.append(F.normalize(torch.cat(prompts).mean(dim=0), dim=0))
    predictions = []
    for image in images:
        feature = F.normalize(model.encode_image(image[None]).float(), dim=-1)[0]
        predictions.append(max(range(len(classes)), key=lambda c: float(feature @ classes[c])))
    return predictions


def test_held_out_accuracy_matches_a_brute_force_zero_shot_classifier():
    model = tiny_clip()
    shapes = scene_held_out_sets(["shape"], size=8)[0]
    images = torch.stack([shapes.data[i][0] for i in range(8)])
    predicted = brute_force_predictions(model, images, shapes.classnames, shapes.templates)
    # Labels right on the first 6 images and wrong on the last 2: accuracy exactly 6 / 8.
    wrong = [(p + 1) % len(shapes.classnames) for p in predicted[6:]]
    labels = torch.tensor(predicted[:6] + wrong)
    rigged = HeldOutSet("shape", TensorDataset(images, labels), shapes.classnames, shapes.templates)
    assert held_out_accuracy(model, rigged, batch_size=3) == pytest.approx(6 / 8)


def test_a_captioned_run_records_held_out_accuracy_after_every_task_and_resumes_it(tmp_path):
    stream = scene_styles_stream(["upright", "rotated-90"], 8, 8, held_out=["shape", "colour"])
    initial_model = tiny_clip()
    expected_initial = {}
    for held_out in stream.held_out:
        images = torch.stack([held_out.data[i][0] for i in range(8)])
        labels = [held_out.data[i][1] for i in range(8)]
        predicted = brute_force_predictions(
            initial_model, images, held_out.classnames, held_out.templates
        )
        expected_initial[held_out.name] = (
            sum(p == y for p, y in zip(predicted, labels, strict=True)) / 8
        )

    config = small_config(tmp_path, steps=1)
    output = tmp_path / "run"
    run_continual(tiny_clip(), stream, build_method("finetune"), config, output, progress=False)
    progress = json.loads((output / "progress.json").read_text())
    record = progress["held_out"]
    assert record["initial"] == pytest.approx(expected_initial)
    assert len(record["rows"]) == 2 and all(set(r) == {"shape", "colour"} for r in record["rows"])

    report = read_report(output)
    assert report["metrics"]["held_out_shape"] == record["rows"][-1]["shape"]
    assert report["held_out"]["after_task"] == record["rows"]
    assert "## Held-out zero-shot" in (output / "report.md").read_text()
    assert "| Held-out shape | Held-out colour |" in compare_table({"finetune": report})

    # Stopped after task 2's weights were saved, before its row was: resume evaluates it
    # again from those weights, the same numbers, and trains nothing.
    cut = {**progress, "completed": 1, "matrix": progress["matrix"][:1]}
    cut |= {"seconds": progress["seconds"][:1], "peak_memory_mib": progress["peak_memory_mib"][:1]}
    cut["held_out"] = {"initial": record["initial"], "rows": record["rows"][:1]}
    (output / "progress.json").write_text(json.dumps(cut))
    run_continual(
        tiny_clip(), stream, build_method("finetune"), config, output, resume=True, progress=False
    )
    assert json.loads((output / "progress.json").read_text())["held_out"] == record


def test_held_out_sets_must_be_scene_views():
    with pytest.raises(ValueError, match="choose among shape, colour, count, position"):
        scene_held_out_sets(["texture"], size=4)
