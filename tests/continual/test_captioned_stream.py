"""The captioned (contrastive) stream: retrieval R@1 against a brute-force count, the runner's
matrix of R@1, and the methods that train on captions."""

import copy

import pytest
import torch
from continual_helpers import small_config, tiny_clip
from torch import nn

import mmcl
from mmcl.continual.captioned import (
    CaptionedPairs,
    CaptionedStream,
    CaptionedTask,
    retrieval_recall_at_1,
    scene_styles_stream,
    style_transform,
)
from mmcl.continual.methods import build_method
from mmcl.continual.methods.lwf import LwF, frozen_copy
from mmcl.continual.runner import ContinualRun, run_continual


def stream(train_size=8, test_size=6):
    return scene_styles_stream(["upright", "rotated-90"], train_size, test_size)


def brute_force_recall(model, data) -> float:
    """R@1 one pair at a time: every image against every caption, and back; a retrieval
    counts when the caption found is the query's own text (or the image found has it)."""
    pairs = [data[i] for i in range(len(data))]
    with torch.no_grad():
        images = [model.encode_image(image[None], normalize=True)[0] for image, _ in pairs]
        texts = [model.encode_text(tokens[None], normalize=True)[0] for _, tokens in pairs]
    captions = [tuple(tokens.tolist()) for _, tokens in pairs]
    n = len(pairs)
    image_hits = text_hits = 0
    for i in range(n):
        scores = [float(images[i] @ texts[j]) for j in range(n)]
        image_hits += captions[max(range(n), key=scores.__getitem__)] == captions[i]
        scores = [float(images[j] @ texts[i]) for j in range(n)]
        text_hits += captions[max(range(n), key=scores.__getitem__)] == captions[i]
    return (image_hits / n + text_hits / n) / 2


class TableClip(nn.Module):
    """encode_image / encode_text look their rows up in fixed tables (by the first pixel and
    the second token), so similarities can be written by hand."""

    def __init__(self, image_rows, text_rows):
        super().__init__()
        self.image_rows = nn.Parameter(torch.tensor(image_rows))
        self.text_rows = torch.tensor(text_rows)

    def encode_image(self, images, normalize=True):
        return nn.functional.normalize(self.image_rows[images[:, 0, 0, 0].long()], dim=-1)

    def encode_text(self, tokens, normalize=True):
        return nn.functional.normalize(self.text_rows[tokens[:, 1]], dim=-1)


def test_recall_by_hand_counts_repeated_captions_as_matches():
    # Pairs 0 and 2 share a caption (token 7); pair 1 is captioned by token 8.
    images = torch.zeros(3, 3, 2, 2)
    images[:, 0, 0, 0] = torch.tensor([0.0, 1.0, 2.0])
    tokens = torch.tensor([[1, 7, 2], [1, 8, 2], [1, 7, 2]])
    text_rows = [[0.0, 0.0]] * 7 + [[1.0, 0.2], [0.0, 1.0]]
    model = TableClip([[1.0, 0.0], [0.9, 0.8], [1.0, 0.1]], text_rows)
    data = list(zip(images, tokens, strict=True))
    # Cosines, by hand: caption 7 against images 0, 1, 2: 0.981, 0.863, 0.996; caption 8:
    # 0, 0.664, 0.0995. Image -> text: images 0 and 2 find caption 7 (hits), image 1 finds
    # caption 7 too (a miss): 2/3. Text -> image: both caption-7 texts find image 2, captioned
    # 7 (hits, though text 0's own image is image 0); caption 8 finds image 1 (a hit): 3/3.
    assert retrieval_recall_at_1(model, data, batch_size=2) == pytest.approx(5 / 6, abs=1e-6)
    assert brute_force_recall(model, data) == pytest.approx(5 / 6, abs=1e-6)


def test_runner_fills_the_matrix_with_retrieval_recall_of_every_task(tmp_path):
    model, scenes = tiny_clip(), stream()
    start = copy.deepcopy(model)
    method = build_method("finetune")
    result = run_continual(
        model,
        scenes,
        method,
        small_config(tmp_path, lr=1e-3, steps=1),
        tmp_path / "r",
        progress=False,
    )
    assert result.task_names == ["upright", "rotated-90"] and len(result.matrix) == 2
    assert result.initial == pytest.approx(
        [brute_force_recall(start, task.test) for task in scenes], abs=1e-6
    )
    assert result.matrix[-1] == pytest.approx(
        [brute_force_recall(model, task.test) for task in scenes], abs=1e-6
    )
    assert not torch.equal(model.visual.proj, start.visual.proj)  # it trained
    assert "Entries are retrieval R@1" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.parametrize(
    "spec, term",
    [("er", None), ("lwf", "lwf"), ("zscl", "zscl"), ("mod_x", "mod_x"), ("kdr", "kdr")],
)
def test_methods_that_take_captions_train_on_the_stream(tmp_path, spec, term):
    arguments = {"buffer_size": 8} if spec in ("er", "kdr") else {}
    if spec == "zscl":
        arguments = {"reference_pairs": 8}
    method = build_method(spec, **arguments)
    config = small_config(tmp_path, steps=1)
    result = run_continual(tiny_clip(), stream(), method, config, tmp_path / "r", progress=False)
    assert len(result.matrix) == 2
    if term is not None:
        log = (tmp_path / "r" / "task_01_rotated-90" / "metrics.jsonl").read_text()
        assert f'"{term}"' in log


def test_lwf_on_captions_distils_the_batch_similarities_both_ways(tmp_path):
    model, scenes, method = tiny_clip(), stream(), LwF(lambda_=1.0, temperature=2.0)
    run = ContinualRun(scenes, method, small_config(tmp_path), tmp_path, {})
    method.before_task(scenes[1], model, run)
    teacher = frozen_copy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    images, tokens = zip(*(scenes[1].train[i] for i in range(4)), strict=True)
    images, tokens = torch.stack(images), torch.stack(tokens)
    outputs = model(images, tokens, output_dict=True)
    term = method.extra_losses(model, (images, tokens), outputs)["lwf"]
    with torch.no_grad():
        z = [
            net.logit_scale.exp()
            * net.encode_image(images, normalize=True)
            @ net.encode_text(tokens, normalize=True).T
            / 2
            for net in (model, teacher)
        ]

    def kl(t, s):
        p = t.softmax(-1)
        return (p * (p.log() - s.log_softmax(-1))).sum(-1).mean()

    expected = kl(z[1], z[0]) + kl(z[1].T, z[0].T)
    assert expected > 1e-5 and term.item() == pytest.approx(expected.item(), rel=1e-4)


def test_methods_that_need_classes_are_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"\['coop'\] need class prompts"):
        run_continual(tiny_clip(), stream(), build_method("coop"), small_config(tmp_path), tmp_path)
    assert not list(tmp_path.glob("task_*"))
    run = ContinualRun(stream(), build_method("finetune"), small_config(tmp_path), tmp_path, {})
    with pytest.raises(ValueError, match="captioned stream has no classes"):
        run.training_space(0)


def test_the_built_in_stream_styles_its_tasks_and_draws_other_scenes():
    scenes = scene_styles_stream(["upright", "rotated-90", "channels-gbr"], 4, 4)
    upright, turned, recoloured = (task.train[0][0] for task in scenes)
    assert not torch.equal(torch.rot90(upright, 1, (1, 2)), turned)  # another scene, turned
    assert not torch.equal(upright[[1, 2, 0]], recoloured)
    same = CaptionedPairs(scenes[0].train.dataset, style_transform("rotated-90"))
    assert torch.equal(same[0][0], torch.rot90(upright, 1, (1, 2)))
    assert scenes[0].train[0][1].shape == (77,) and scenes[0].train.targets == [0] * 4
    with pytest.raises(ValueError, match="unknown scene style 'sideways'"):
        style_transform("sideways")
    with pytest.raises(ValueError, match="task names repeat"):
        task = scenes[0]
        CaptionedStream([task, CaptionedTask(task.name, 1, task.train, task.test)])
    assert mmcl.tokenize(["x"]).shape == (1, 77)


def test_the_stream_is_a_named_scenario_of_the_command_line():
    from mmcl.continual.experiments import build_scenario, scenario_arguments

    built = build_scenario("scene-styles", train_size=4, test_size=4, styles=["rotated-180"])
    assert built.kind == "captioned" and built.task_names == ["rotated-180"]
    assert scenario_arguments("scene-styles", {})["styles"] is None  # the three default styles
    assert build_scenario("scene-styles", train_size=4, test_size=4).task_names == [
        "upright",
        "rotated-90",
        "channels-gbr",
    ]


@pytest.mark.slow  # two runs of the stream
def test_a_captioned_run_stopped_after_a_task_resumes_to_the_same_matrix(tmp_path):
    config = small_config(tmp_path, steps=1)

    def kdr():
        return build_method("kdr", buffer_size=8)

    whole = run_continual(tiny_clip(), stream(), kdr(), config, tmp_path / "a", progress=False)
    stopped = kdr()
    original = stopped.before_task

    def stop_at_the_second_task(task, model, run):
        if task.index == 1:
            raise KeyboardInterrupt
        original(task, model, run)

    stopped.before_task = stop_at_the_second_task
    with pytest.raises(KeyboardInterrupt):
        run_continual(tiny_clip(), stream(), stopped, config, tmp_path / "b", progress=False)
    other = tiny_clip()
    with torch.no_grad():  # another model: the resumed run must load the saved one
        other.visual.proj.mul_(-1)
    again = run_continual(
        other, stream(), kdr(), config, tmp_path / "b", resume=True, progress=False
    )
    assert again.matrix == whole.matrix and again.initial == whole.initial
