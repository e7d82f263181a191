"""The continual runner on an instruction stream with a tiny LLaVA-style bridge: finetune,
joint and frozen, the LM objective, and what the run records."""

import copy
import json
import math

import pytest
import torch

from mmcl.cli import main
from mmcl.continual.instruction_streams import vqa_functions
from mmcl.continual.methods import build_method
from mmcl.continual.runner import ContinualRun, run_continual
from mmcl.train import TrainConfig
from tiny_bridge import tiny_bridge, tiny_bridge_folder


@pytest.fixture(scope="module")
def bridge():
    return tiny_bridge()


@pytest.fixture(scope="module")
def stream():
    return vqa_functions(["shape", "count"], train_size=8, test_size=4, general_size=2)


def run(bridge, stream, method, output, steps=2):
    model, tokenizer = bridge
    model = copy.deepcopy(model)  # every test starts from the same weights
    config = TrainConfig(
        steps=steps, batch_size=4, lr=1e-3, progress=False, tensorboard=False, output_dir=output
    )
    result = run_continual(
        model, stream, build_method(method), config, output, progress=False, tokenizer=tokenizer
    )
    return model, result


def test_finetune_trains_the_language_model_on_answers_and_leaves_the_frozen_tower(
    bridge, stream, tmp_path
):
    model, result = run(bridge, stream, "finetune", tmp_path)
    start = bridge[0].state_dict()
    after = model.state_dict()
    assert all(torch.equal(after[k], start[k]) for k in start if k.startswith("visual."))
    changed = [k for k in start if k.startswith("language_model.")]
    assert any(not torch.equal(after[k], start[k]) for k in changed)
    # The LM loss of a near-uniform random LM: about ln(vocabulary) a token.
    first = json.loads((tmp_path / "task_00_shape" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(math.log(len(bridge[1])), abs=0.3)
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert len(progress["generative"]["rows"]) == 2
    assert set(progress["generative"]["rows"][0]["general"]) == {"captioning", "vqa"}
    report = result.report
    assert len(report["generative"]["format_matrix"]) == 2
    for key in ("general_retained", "format_retained", "format_bwt"):
        assert key in report["metrics"]
    assert report["extra"]["measure"].startswith("VQA accuracy")


def test_joint_trains_each_task_on_the_union_of_the_tasks_so_far(stream, tmp_path):
    method = build_method("joint")
    run_state = ContinualRun(stream, method, None, tmp_path, {})
    union = [conversation for _, conversation in method.train_data(stream[1], run_state)]
    own = [stream[t].train[i][1] for t in (0, 1) for i in range(len(stream[t].train))]
    assert union == own


def test_compare_runs_frozen_and_joint_on_a_bridge_folder_from_the_cli(tmp_path, capsys):
    folder = tiny_bridge_folder(tmp_path / "bridge")
    output = tmp_path / "compare"
    arguments = ["continual", "compare", "--scenario", "vqa-functions", "--tasks", "shape,count"]
    arguments += ["--model", str(folder), "--methods", "frozen,joint", "--train-size", "8"]
    arguments += ["--test-size", "2", "--general-size", "2", "--steps", "1", "--batch-size", "4"]
    assert main([*arguments, "--output-dir", str(output), "--quiet"]) == 0
    table = (output / "comparison.md").read_text().splitlines()
    assert table[0].endswith("| General retained | Format retained | Time |")
    assert [line.split(" | ")[0] for line in table[2:]] == ["| frozen", "| joint"]
    # Frozen never changes: every row repeats the initial evaluation, extras included.
    frozen = json.loads((output / "frozen" / "progress.json").read_text())
    initial = frozen["generative"]["initial"]
    assert frozen["matrix"] == [frozen["initial"]] * 2
    assert frozen["generative"]["rows"] == [initial] * 2


@pytest.mark.parametrize("name", ["moe_lora", "o_lora", "task_lora", "modal_prompt"])
def test_lora_expert_methods_run_a_stream_and_answer_through_their_routes(
    bridge, stream, tmp_path, monkeypatch, name
):
    # The methods that route rows (a task's LoRA picked by the selector, a task's prompts)
    # must be asked where each test row runs: an answer from the bare model would be wrong
    # without an error. Every evaluation batch goes through `routes`.
    method = build_method(name)
    asked = []
    routes = method.routes
    monkeypatch.setattr(
        method,
        "routes",
        lambda m, images, ids, mask: asked.append(len(images)) or routes(m, images, ids, mask),
    )
    model, tokenizer = bridge
    config = TrainConfig(
        steps=2, batch_size=4, lr=1e-3, progress=False, tensorboard=False, output_dir=tmp_path
    )
    result = run_continual(
        copy.deepcopy(model), stream, method, config, tmp_path, progress=False,
        tokenizer=tokenizer,
    )  # fmt: skip
    assert len(result.report["generative"]["format_matrix"]) == 2
    # Before training and after each of 2 tasks: 2 tasks of 4 answers and 2 general sets of 2.
    assert sum(asked) == 3 * (2 * 4 + 2 * 2)
