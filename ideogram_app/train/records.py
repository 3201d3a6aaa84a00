"""What the Train tab reads while a run goes on: `run.json` (settings and status) and `metrics.jsonl`.

`run.json` is rewritten atomically on every change of status (running → finished | failed | stopped)
and after each checkpoint, so a reader never sees a half-written file. `metrics.jsonl` gets one line
per optimiser step (step, epoch, loss, lr, grad_norm, s_per_step, peak_mem_gib), flushed at once; a
resumed run first drops the lines after its checkpoint, so the file never repeats a step. Only the
main process writes.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

STATUSES = ("running", "finished", "failed", "stopped")


def write_json_atomic(path: Path, data: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, path)


class RunRecord:
    def __init__(self, folder: Path, config: dict[str, Any], enabled: bool):
        self.folder = Path(folder)
        self.enabled = enabled
        self.data: dict[str, Any] = {"status": "running", "message": None, "config": config, "started": time.time()}

    @property
    def run_file(self) -> Path:
        return self.folder / "run.json"

    @property
    def metrics_file(self) -> Path:
        return self.folder / "metrics.jsonl"

    def update(self, status: str | None = None, **fields: Any) -> None:
        if status is not None:
            if status not in STATUSES:
                raise ValueError(f"unknown run status {status!r}")
            self.data["status"] = status
        self.data.update(fields, updated=time.time())
        if self.enabled:
            write_json_atomic(self.run_file, self.data)

    def log(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.metrics_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")

    def drop_metrics_after(self, step: int) -> None:
        """Keep only the rows up to `step` (what the checkpoint being resumed had seen)."""
        if not self.enabled or not self.metrics_file.is_file():
            return
        kept = [line for line in self.metrics_file.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        temporary = self.metrics_file.with_name(f".{self.metrics_file.name}.tmp")
        temporary.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(temporary, self.metrics_file)


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    path = Path(folder) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
