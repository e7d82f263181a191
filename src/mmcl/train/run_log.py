"""Metrics of a run: JSON lines (for machines), TensorBoard (for people), one `log` call."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any


class RunLog:
    """Appends one JSON object per record to `metrics.jsonl`; mirrors scalars to TensorBoard.

    On resume, records past the resumed step are dropped first, so the log of an interrupted
    and resumed run reads exactly like an uninterrupted one.
    """

    def __init__(
        self, folder: str | Path, resume_step: int | None = None, tensorboard: bool = True
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "metrics.jsonl"
        if resume_step is not None:
            self._truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()  # a fresh run starts a fresh log
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.folder / "tensorboard"))
            except ImportError:
                warnings.warn(
                    "tensorboard is not installed: logging to JSON lines only", stacklevel=2
                )

    def log(self, step: int, kind: str, values: dict[str, Any]) -> None:
        record = {"step": step, "kind": kind, **values}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(f"{kind}/{key}", value, step)

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        return [r for r in rows if kind is None or r["kind"] == kind]

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError):
                break  # a line cut short by the kill: everything after it is gone too
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)
