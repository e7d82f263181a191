"""Walk a task stream: per task, method hooks + the training engine, then evaluate every task.

The accuracy matrix A[i, j] (accuracy on task j after training task i) is filled row by row,
including j > i (zero-shot on tasks not trained yet), with the initial model's accuracies as a
row before training. After every task the run writes its progress atomically; `resume=True`
continues at the task where it stopped, and inside that task at the engine's last checkpoint
(`checkpoint_every` in the training settings), which holds the model, optimiser, RNG, sampler
position and the method's own state (buffers, Fisher). Teachers are never saved: the initial
weights are written once (`initial_model.pt`), and a teacher taken from the model at a task's
start is taken again when that task resumes. A resume must ask for the settings the run
recorded when it started (`mmcl.continual.settings`).

Under `torchrun` every rank runs this same function: the engine trains with DDP, every rank
evaluates the same test sets, the method's state is broadcast from rank 0 after each task, and
only rank 0 writes files.

An instruction stream (`mmcl.continual.instructions`) trains a LLaVA-style bridge, given with
its `tokenizer`, with the LM loss on the answers; its rows hold the tasks' scores, and beside
them the share of answers in the format asked, CIDEr-D of caption tasks and the general sets'
scores (``progress.json``'s "generative", the report's retention columns). A captioned
stream with held-out sets records their zero-shot accuracy beside each row
(``progress.json``'s "held_out", `mmcl.continual.held_out`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmcl.continual import classes
from mmcl.continual.captioned import is_captioned_stream, retrieval_recall_at_1
from mmcl.continual.evaluation import task_accuracy
from mmcl.continual.generative import (
    INSTRUCTION_MEASURE,
    check_bridge,
    conversation_encoder,
    training_parts,
)
from mmcl.continual.heads import classification_objective, is_classifier
from mmcl.continual.held_out import evaluate_held_out
from mmcl.continual.instructions import evaluate_stream, is_instruction_stream
from mmcl.continual.report import write_report
from mmcl.continual.settings import differences, run_settings
from mmcl.io.atomic import atomic_path
from mmcl.train import TrainConfig, Trainer, distributed
from mmcl.train.objectives import ContrastiveObjective

PROGRESS_FILE = "progress.json"
STATE_FILE = "state_after_task.pt"
INITIAL_FILE = "initial_model.pt"
RETRIEVAL_MEASURE = "retrieval R@1, the mean of image -> text and text -> image"


@dataclass
class ContinualRun:
    """What hooks may consult while a run is in progress."""

    scenario: Any
    method: Any
    config: TrainConfig
    output_dir: Path
    initial_state: dict[str, torch.Tensor]
    task_index: int = 0
    encoder: Any = None  # an instruction stream's `ConversationEncoder` (the bridge's tokenizer)

    @property
    def captioned(self) -> bool:
        """Whether the stream is captioned pairs (`mmcl.continual.captioned`), not classes."""
        return is_captioned_stream(self.scenario)

    @property
    def instructions(self) -> bool:
        """Whether the stream is instruction tasks for a bridge (`mmcl.continual.instructions`)."""
        return is_instruction_stream(self.scenario)

    def stream_data(self, index: int, split: str = "train"):
        """Task `index`'s data with stream labels (what the engine trains on); a captioned
        stream's pairs as they are, an instruction stream's ``(image, Conversation)`` items."""
        if self.captioned or self.instructions:
            task = self.scenario.tasks[index]
            return task.train if split == "train" else task.test
        return classes.stream_data(self.scenario, index, split)

    def training_space(self, index: int | None = None) -> classes.ClassSpace:
        """The classes the objective of task `index` (default: the current one) chooses from."""
        if self.captioned or self.instructions:
            raise ValueError(f"a {self.scenario.kind} stream has no classes to choose from")
        index = self.task_index if index is None else index
        return classes.training_space(self.scenario, index, self.method.mixes_past_data)

    def evaluation_space(self, index: int, evaluated_after: int) -> classes.ClassSpace:
        return classes.evaluation_space(self.scenario, index, evaluated_after)

    def initial_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """A frozen copy of `model` holding the weights the run started from (a teacher)."""
        teacher = copy.deepcopy(model)
        teacher.load_state_dict(self.initial_state)
        teacher.requires_grad_(False)
        return teacher.eval()


@dataclass
class ContinualResult:
    method: str
    task_names: list[str]
    matrix: list[list[float]]  # rows: after task i; columns: task j
    initial: list[float]  # before any training
    seconds_per_task: list[float]
    peak_memory_mib: list[float]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        return self.report.get("metrics", {})


def run_continual(
    model: torch.nn.Module,
    scenario,
    method,
    config: TrainConfig,
    output_dir: str | Path,
    resume: bool = False,
    eval_batch_size: int = 256,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
    tokenizer: Any = None,
) -> ContinualResult:
    """Train `method` on every task of `scenario` in turn; write the report into `output_dir`.

    `config` is the engine's per-task setting (steps or epochs, batch, lr, precision, ...);
    each task trains in `output_dir/task_XX_name` with its own checkpoints. `tokenizer`: the
    bridge's, for an instruction stream.
    """
    output_dir = Path(output_dir)
    info = distributed.init_from_env()
    is_main = info.is_main
    model.to(info.device)
    tasks = scenario.tasks
    names = [task.name for task in tasks]
    if not resume and (output_dir / PROGRESS_FILE).exists():
        raise ValueError(
            f"{output_dir} already holds a continual run: resume it (resume=True / --resume) "
            f"or choose a new output folder"
        )
    if resume and not (output_dir / PROGRESS_FILE).exists():
        raise FileNotFoundError(
            f"{output_dir}: nothing to resume (no {PROGRESS_FILE} there); start the run "
            f"without --resume, or give the folder of the run to continue"
        )
    if is_captioned_stream(scenario):  # the report says what its matrix holds
        extra = {**(extra or {}), "measure": RETRIEVAL_MEASURE}
    if is_instruction_stream(scenario):
        check_bridge(model, method, scenario, tokenizer)
        extra = {**(extra or {}), "measure": INSTRUCTION_MEASURE}
    settings = run_settings(method, config, extra)
    per_step = config.batch_size * config.accumulation_steps * info.world_size
    small = [f"{t.name} ({len(t.train)})" for t in tasks if len(t.train) < per_step]
    if method.trains and small:
        raise ValueError(
            f"tasks with fewer training items than one step takes ({config.batch_size} x "
            f"{config.accumulation_steps} accumulation x {info.world_size} rank(s)): "
            f"{', '.join(small)}; lower the batch size or give the tasks more data"
        )
    _check_model_fits(model, method, scenario)
    saved = _load_progress(output_dir, names, method.name, settings) if resume else None
    output_dir.mkdir(parents=True, exist_ok=True)
    _barrier()

    run = ContinualRun(scenario, method, config, output_dir, {})
    if run.instructions:
        run.encoder = conversation_encoder(model, tokenizer)
    # What the method adds (adapters, prompts, heads) starts from the run's seed, not from
    # whatever the process drew before (an earlier run of `compare`, say).
    torch.manual_seed(config.seed)
    method.setup(model, run)  # adapters/prompts first, so the snapshot below includes them
    if saved is None:
        run.initial_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if is_main:
            with atomic_path(output_dir / INITIAL_FILE) as tmp:
                torch.save(run.initial_state, tmp)
        saved = {
            "method": method.name,
            "settings": settings,
            "tasks": names,
            "completed": 0,
            "matrix": [],
            "initial": None,
            "seconds": [],
            "peak_memory_mib": [],
        }
        if run.instructions:  # the rows' extras: formats, CIDEr-D, general ability
            saved["generative"] = {"initial": None, "rows": []}
        if run.captioned and scenario.held_out:  # zero-shot on the held-out sets
            saved["held_out"] = {"initial": None, "rows": []}
    else:
        run.initial_state = torch.load(output_dir / INITIAL_FILE, weights_only=True)
    if resume and (output_dir / STATE_FILE).exists():
        state = torch.load(output_dir / STATE_FILE, weights_only=True)
        model.load_state_dict(state["model"])
        method.load_state_dict(state["method"])
        if state["completed"] == saved["completed"] + 1:
            # Stopped after a task's weights were saved but before its row was: evaluate it
            # now rather than train (and apply after_task to) that task a second time.
            run.task_index = state["completed"] - 1
            row = _evaluate_all(model, method, scenario, run.task_index, run, eval_batch_size)
            _record(saved, row, state["seconds"], state["peak_memory_mib"])
            _save_progress(output_dir, saved, is_main)

    if saved["initial"] is None:
        row = _evaluate_all(model, method, scenario, -1, run, eval_batch_size)
        if run.instructions:
            saved["generative"]["initial"] = row
            row = row["scores"]
        elif isinstance(row, dict):
            saved["held_out"]["initial"] = row["held_out"]
            row = row["scores"]
        saved["initial"] = row
        _save_progress(output_dir, saved, is_main)

    for index in range(saved["completed"], len(tasks)):
        task = tasks[index]
        run.task_index = index
        started = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        method.before_task(task, model, run)
        if method.trains:
            task_config = dataclasses.replace(
                copy.deepcopy(config),
                output_dir=str(output_dir / f"task_{index:02d}_{task.name}"),
                resume="latest-if-any" if resume else None,  # a task may have no checkpoint yet
                progress=progress and config.progress,
            )
            data, collate = method.train_data(task, run), None
            if run.instructions:
                data, collate, objective = training_parts(data, run.encoder)
            elif run.captioned:
                objective = ContrastiveObjective(config.loss)
            else:
                objective = classification_objective(model, run.training_space(index), method)
            Trainer(
                model,
                data,
                task_config,
                collate_fn=collate,
                objective=objective,
                plugins=[method],
            ).fit()
        method.after_task(task, model, run)
        if distributed.is_distributed():
            method.load_state_dict(_broadcast(method.state_dict()))
        seconds = time.perf_counter() - started
        peak = _peak_memory_mib()
        if is_main:
            with atomic_path(output_dir / STATE_FILE) as tmp:
                state = {
                    "model": model.state_dict(),
                    "method": method.state_dict(),
                    "completed": index + 1,
                    "seconds": seconds,
                    "peak_memory_mib": peak,
                }
                torch.save(state, tmp)
        row = _evaluate_all(model, method, scenario, index, run, eval_batch_size)
        _record(saved, row, seconds, peak)
        _save_progress(output_dir, saved, is_main)
        if is_main:  # the task is done: its mid-task checkpoints are superseded by STATE_FILE
            shutil.rmtree(
                output_dir / f"task_{index:02d}_{task.name}" / "checkpoints", ignore_errors=True
            )
        if progress and is_main:
            shown = " ".join(f"{100 * a:5.1f}" for a in saved["matrix"][-1])
            print(f"after task {index} ({task.name}): {shown}  [{seconds:.0f}s]", flush=True)

    report = (
        write_report(
            output_dir,
            saved["matrix"],
            names,
            method.name,
            extra=saved["settings"],  # the same for every task: resume refuses a change
            times=saved["seconds"],
            peak_memory=saved["peak_memory_mib"],
            initial=saved["initial"],
            generative=saved.get("generative"),
            held_out=saved.get("held_out"),
        )
        if is_main
        else {}
    )
    _barrier()
    return ContinualResult(
        method.name,
        names,
        saved["matrix"],
        saved["initial"],
        saved["seconds"],
        saved["peak_memory_mib"],
        report,
    )


def _check_model_fits(model, method, scenario) -> None:
    """A plain classifier needs a head column per stream label and a method without text; a
    captioned stream needs a CLIP model and methods that train on captions."""
    parts = getattr(method, "parts", [method])
    if is_captioned_stream(scenario):
        refused = [part.name for part in parts if not part.takes_captions]
        if refused:
            raise ValueError(
                f"method(s) {refused} need class prompts, which the captioned stream "
                f"{scenario.name!r} does not have; choose among the methods that train on "
                f"captions (finetune, frozen, er, lwf, zscl, wise_ft, mod_x, kdr)"
            )
        if is_classifier(model):
            raise ValueError(
                f"a captioned stream trains image-text pairs: this model is a plain image "
                f"classifier ({type(model).__name__}); choose a CLIP model"
            )
        return
    if not is_classifier(model):
        return
    textual = [part.name for part in parts if part.needs_text_tower]
    if textual:
        raise ValueError(
            f"method(s) {textual} work on a CLIP model's text tower; this model is a plain "
            f"image classifier ({type(model).__name__})"
        )
    last = classes.training_space(scenario, len(scenario) - 1, True)
    needed = max(last.labels) + 1
    if model.num_classes < needed:
        raise ValueError(
            f"the classifier's head has {model.num_classes} outputs but the stream has "
            f"{needed} classes (stream labels 0..{needed - 1})"
        )


def _evaluate_all(model, method, scenario, after: int, run, batch_size: int):
    """A row of the matrix; for an instruction stream, the row with its extras (a dict)."""
    if run.instructions:
        return evaluate_stream(model, run.encoder, scenario, min(batch_size, 64), method)
    if run.captioned:  # the matrix holds retrieval R@1
        scores = [retrieval_recall_at_1(model, task.test, batch_size) for task in scenario.tasks]
        if not scenario.held_out:
            return scores
        return {"scores": scores, "held_out": evaluate_held_out(model, scenario.held_out)}
    return [
        task_accuracy(model, method, scenario, j, after, run, batch_size)
        for j in range(len(scenario))
    ]


def _record(saved: dict, row, seconds: float, peak: float) -> None:
    if isinstance(row, dict) and "held_out" in row:  # a captioned row with held-out sets
        saved["held_out"]["rows"].append(row["held_out"])
        row = row["scores"]
    elif isinstance(row, dict):  # an instruction stream's row with its extras
        saved["generative"]["rows"].append(row)
        row = row["scores"]
    saved["matrix"].append(row)
    saved["seconds"].append(seconds)
    saved["peak_memory_mib"].append(peak)
    saved["completed"] += 1


def _peak_memory_mib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _barrier() -> None:
    if distributed.is_distributed():
        torch.distributed.barrier()


def _broadcast(state: Any) -> Any:
    holder = [state]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def _save_progress(output_dir: Path, saved: dict, is_main: bool) -> None:
    if is_main:
        with atomic_path(output_dir / PROGRESS_FILE) as tmp:
            tmp.write_text(json.dumps(saved, indent=2))
    _barrier()


def _load_progress(output_dir: Path, names: list[str], method_name: str, settings: dict) -> dict:
    path = output_dir / PROGRESS_FILE
    saved = json.loads(path.read_text())
    if saved["tasks"] != names or saved["method"] != method_name:
        raise ValueError(
            f"{path}: it belongs to another run (method {saved['method']!r}, tasks "
            f"{saved['tasks']}); use a fresh output folder"
        )
    if "settings" not in saved:
        raise ValueError(
            f"{path}: the run records no settings (an older mmcl wrote it), so a resume "
            f"cannot be checked against them; start again in a new --output-dir"
        )
    changed = differences(saved["settings"], settings)
    if changed:
        raise ValueError(
            f"{output_dir}: the run was started with other settings ({'; '.join(changed)}); "
            f"resume with the same settings, or start a new run in a new --output-dir"
        )
    return saved
