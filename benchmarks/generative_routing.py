"""Where the LoRA-expert methods send the general sets: read back finished runs of
`continual_generative.py` and measure, on the final model, what each method's routing does
with the general sets (held-out scene captioning, general scene VQA) and with each task's
test items.

    python benchmarks/generative_routing.py --runs runs/bench-generative/instructions \
        --data-root DATA [--methods task_lora,moe_lora,o_lora] [--json FILE]

* task_lora: which task the selector chooses for each set's items (or the base model), and
  the general scores under the routing, under the base model and under each task's LoRA
  forced on every item.
* moe_lora: the router's mean weight per expert (over every adapted layer and every token
  the model reads or writes) on each set; the general scores with the experts on and off.
* o_lora: the general scores with the adapters of tasks 0..k summed, for every k (k = -1:
  the base model), which shows which tasks' adapters cost the general ability.

Every run also shows the general scores after each task, from its ``progress.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from _common import print_table

from mmcl.continual.experiments import build_scenario
from mmcl.continual.generative import conversation_encoder, starting_bridge
from mmcl.continual.instructions import evaluate_task, prompt_of
from mmcl.continual.methods import build_method
from mmcl.continual.methods.task_keys import input_keys, instruction_tokens
from mmcl.continual.runner import PROGRESS_FILE, STATE_FILE
from mmcl.data.chat_template import left_pad
from mmcl.nn.lora_experts import LoraExpertsLinear
from mmcl.nn.task_loras import task_adapter, task_loras

METHODS = ("task_lora", "moe_lora", "o_lora")


def load_run(folder: Path, data_root: str | None, bridge: str | None = None):
    """The finished run in `folder` as it ended: `(model, encoder, method, stream, progress)`."""
    progress_file, state_file = folder / PROGRESS_FILE, folder / STATE_FILE
    for path in (progress_file, state_file):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; give the folder of a finished run")
    progress = json.loads(progress_file.read_text())
    settings = progress["settings"]
    model, tokenizer = starting_bridge(bridge or settings["model"])
    parts = settings["method_args"]  # {part: {key: value}}, as `method_arguments` records
    arguments = {
        (f"{part}.{key}" if len(parts) > 1 else key): value
        for part, given in parts.items()
        for key, value in given.items()
    }
    method = build_method(settings["method"], **arguments)
    stream = build_scenario(
        settings["scenario"],
        **settings["scenario_args"],
        data_root=data_root,
        image_size=model.image_size,
    )
    method.setup(model, SimpleNamespace(scenario=stream))
    state = torch.load(state_file, weights_only=True)
    model.load_state_dict(state["model"])
    method.load_state_dict(state["method"])
    model.eval()
    return model, conversation_encoder(model, tokenizer), method, stream, progress


def sets_of(stream) -> dict:
    """The general sets, then each task's test set, by name."""
    general = {f"general {name}": task for name, task in (stream.general or {}).items()}
    return general | {f"task {task.index} {task.name}": task for task in stream}


def inputs_of(task, encoder):
    """A set's test items as `generate_answers` hands them to a method's `routes`: images,
    left-padded prompt ids and their mask."""
    prompts = [
        encoder.encode_prompt([], prompt_of(task.test.instruction(i).question))
        for i in range(len(task.test))
    ]
    ids, mask = left_pad(prompts, encoder.tokenizer.pad_token_id)
    return torch.stack([task.test[i][0] for i in range(len(task.test))]), ids, mask


def general_scores(model, encoder, stream, method=None) -> dict[str, float]:
    return {
        name: evaluate_task(model, encoder, task, method=method).score
        for name, task in (stream.general or {}).items()
    }


def task_lora_routing(model, encoder, method, stream) -> dict:
    """The selector's choices per set (task index, or "base"), the similarity of the items to
    their nearest key (min, median), and the general scores under the routing, the base model
    and each task's LoRA on every item."""
    choices, similarity = {}, {}
    fallback = method.base_quantile is not None
    for name, task in sets_of(stream).items():
        images, ids, mask = inputs_of(task, encoder)
        features = input_keys(model, images, ids, instruction_tokens(model, ids, mask))
        chosen = method.keys.choose(features, fallback=fallback).tolist()
        labels = ["base" if t < 0 else str(t) for t in chosen]
        choices[name] = {t: labels.count(t) for t in sorted(set(labels))}
        nearest = (features @ method.keys.keys().T).max(dim=1).values
        similarity[name] = [nearest.min().item(), nearest.median().item()]
    scores = {"routed": general_scores(model, encoder, stream, method)}
    with task_loras(model, []):
        scores["base"] = general_scores(model, encoder, stream)
    for t in method.keys.tasks:
        with task_loras(model, [task_adapter(t)]):
            scores[f"LoRA {t}"] = general_scores(model, encoder, stream)
    return {"choices": choices, "nearest_similarity": similarity, "scores": scores}


@contextlib.contextmanager
def experts_off(layers):
    """The LoRA experts add nothing inside (their scaling 0): the base model."""
    before = [layer.scaling for layer in layers]
    for layer in layers:
        layer.scaling = 0.0
    try:
        yield
    finally:
        for layer, scaling in zip(layers, before, strict=True):
            layer.scaling = scaling


def moe_lora_routing(model, encoder, method, stream) -> dict:
    """Mean router weight per expert on each set (every layer, every token), and the general
    scores with the experts on and off."""
    layers = [m for m in model.modules() if isinstance(m, LoraExpertsLinear)]
    totals = {}

    def record(module, inputs, output):
        gates = module.gates(inputs[0]).reshape(-1, module.experts)
        totals["sum"] = totals.get("sum", 0) + gates.sum(dim=0)
        totals["count"] = totals.get("count", 0) + len(gates)

    gates = {}
    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        for name, task in sets_of(stream).items():
            totals.clear()
            evaluate_task(model, encoder, task)
            gates[name] = (totals["sum"] / totals["count"]).tolist()
    finally:
        for handle in handles:
            handle.remove()
    scores = {"experts on": general_scores(model, encoder, stream)}
    with experts_off(layers):
        scores["experts off"] = general_scores(model, encoder, stream)
    return {"gates": gates, "scores": scores}


def o_lora_routing(model, encoder, method, stream) -> dict:
    """The general scores with the adapters of tasks 0..k summed, k = -1 .. last task."""
    scores = {}
    for last in range(-1, method.trained):
        with task_loras(model, [task_adapter(t) for t in range(last + 1)]):
            label = "base" if last < 0 else f"LoRA 0..{last}"
            scores[label] = general_scores(model, encoder, stream)
    return {"scores": scores}


ANALYSES = {"task_lora": task_lora_routing, "moe_lora": moe_lora_routing, "o_lora": o_lora_routing}


def analyse(folder: Path, data_root: str | None, bridge: str | None = None) -> dict:
    model, encoder, method, stream, progress = load_run(folder, data_root, bridge)
    generative = progress["generative"]
    after = [generative["initial"]["general"], *(row["general"] for row in generative["rows"])]
    result = {"method": method.name, "general_after_task": after}
    result.update(ANALYSES[method.name](model, encoder, method, stream))
    return result


def print_result(result: dict) -> None:
    print(f"\n== {result['method']}")
    sets = list(result["general_after_task"][0])
    rows = [
        ["start" if i == 0 else f"after task {i - 1}", *(f"{100 * g[s]:.1f}" for s in sets)]
        for i, g in enumerate(result["general_after_task"])
    ]
    print_table(["general sets (progress.json)", *sets], rows)
    if "choices" in result:
        rows = [
            [name, ", ".join(f"{t}: {n}" for t, n in chosen.items())]
            + [f"{v:.3f}" for v in result["nearest_similarity"][name]]
            for name, chosen in result["choices"].items()
        ]
        print_table(["set", "selector's choice (task: items)", "min sim", "median sim"], rows)
    if "gates" in result:
        rows = [[n, *(f"{g:.3f}" for g in gs)] for n, gs in result["gates"].items()]
        width = len(next(iter(result["gates"].values())))
        print_table(["set", *(f"expert {e}" for e in range(width))], rows)
    rows = [
        [label, *(f"{100 * s[n]:.1f}" for n in sets), f"{100 * sum(s.values()) / len(s):.1f}"]
        for label, s in result["scores"].items()
    ]
    print_table(["final model", *sets, "mean"], rows)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="a stream's folder of runs")
    parser.add_argument("--data-root", default=None, help="folder holding CIFAR-10 and MNIST")
    parser.add_argument("--bridge", default=None, help="default: the bridge the runs recorded")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        parser.error(f"--methods: {unknown} not analysed; valid: {', '.join(METHODS)}")
    results = {}
    for name in names:
        results[name] = analyse(args.runs / name, args.data_root, args.bridge)
        print_result(results[name])
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    torch.manual_seed(0)
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"generative_routing.py: error: {error}")
