"""A run's output folder: which checkpoints are the run's, which one to resume, what to prune.

A training run owns its output folder. The engine writes its checkpoints there as
`checkpoints/step_NNNNNNNN.pt` (eight digits) and its final weights as `model.safetensors`; only
files named exactly so are the run's, so a user's `checkpoints/step_best.pt` or `notes.txt` is
never listed, resumed or deleted.

A folder *holds a run* when it has one of those checkpoints or a `model.safetensors`. A fresh
run into such a folder is refused rather than mixed with the other run: mixing is how a new
run's checkpoints were pruned as they were written, and how `--resume latest` later continued
the other run. A folder with only a log (a run stopped before its first checkpoint, which
cannot be resumed) may be reused.
"""

from __future__ import annotations

import re
from pathlib import Path

LATEST = "latest"
# The continual runner's per-task setting: resume the task's latest checkpoint if it has one,
# else start the task fresh (a run killed before the task's first checkpoint).
LATEST_IF_ANY = "latest-if-any"

CHECKPOINT_NAME = re.compile(r"step_(\d{8,})\.pt")  # :08d, and more digits past 10⁸ steps
MODEL_FILE = "model.safetensors"


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def list_checkpoints(folder: str | Path) -> list[Path]:
    """The run's checkpoints in `folder`, oldest step first; other files are not listed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = CHECKPOINT_NAME.fullmatch(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def prune_checkpoints(folder: str | Path, keep: int) -> list[Path]:
    """Deletes all but the `keep` newest checkpoints (by step); returns what it deleted."""
    old = list_checkpoints(folder)[:-keep] if keep > 0 else list_checkpoints(folder)
    for path in old:
        path.unlink(missing_ok=True)
    return old


def run_in(output_dir: str | Path) -> str | None:
    """What shows that `output_dir` holds a run ("3 checkpoints (...)"), or None."""
    output_dir = Path(output_dir)
    checkpoints = list_checkpoints(output_dir / "checkpoints")
    if checkpoints:
        return f"{len(checkpoints)} checkpoint(s), the latest {checkpoints[-1].name}"
    if (output_dir / MODEL_FILE).is_file():
        return f"a trained {MODEL_FILE}"
    return None


def resume_checkpoint(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint a run with these settings starts from (None: a fresh start).

    Raises FileNotFoundError for `latest` with nothing to resume, and ValueError for a fresh
    start (or a start from another folder's checkpoint) into a folder that holds a run.
    """
    output_dir = Path(output_dir)
    checkpoints = output_dir / "checkpoints"
    if resume in (LATEST, LATEST_IF_ANY):
        found = list_checkpoints(checkpoints)
        if found:
            return found[-1]
        if resume == LATEST:
            raise FileNotFoundError(
                f"resume 'latest': {checkpoints} holds no checkpoint (step_NNNNNNNN.pt) to "
                f"resume; start a fresh run without --resume"
            )
        resume = None
    start = Path(resume) if resume else None
    if start is not None and start.resolve().parent == checkpoints.resolve():
        return start  # this folder's own run, continued from one of its checkpoints
    held = run_in(output_dir)
    if held is not None:
        ways_out = (
            "resume it with --resume latest (resume='latest' in Python) or choose a new "
            "--output-dir"
            if "checkpoint" in held
            else "choose a new --output-dir, or move that file away first"
        )
        raise ValueError(f"{output_dir} already holds a training run ({held}): {ways_out}")
    return start
