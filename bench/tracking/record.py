"""The run record: the one contract between training and analysis (DESIGN.md §3).

`<out_dir>/<sweep>/<run-id>/` holds `config.yaml` (resolved config + versions + data hash),
`metrics.jsonl` (one JSON object per logged step, appended and flushed), `summary.json` (written
atomically; `status` is `running` while the run goes on) and `checkpoint.pt` (atomic).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

STATUSES = ("running", "completed", "diverged", "failed")


def atomic_write(path: Path, write) -> None:
    """Write through a temp file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    """Floats that JSON cannot hold (nan, inf) become null; tensors become numbers."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunRecord:
    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.config_path = self.dir / "config.yaml"
        self.metrics_path = self.dir / "metrics.jsonl"
        self.summary_path = self.dir / "summary.json"
        self.checkpoint_path = self.dir / "checkpoint.pt"
        self._metrics = None

    # -- files -----------------------------------------------------------------------------
    def create(self, config: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(config, sort_keys=False).encode()
        atomic_write(self.config_path, lambda f: f.write(text))

    def log(self, row: dict) -> None:
        if self._metrics is None:
            self._metrics = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115
        self._metrics.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
        self._metrics.flush()

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # the half line of a killed run
                break
        return rows

    def truncate_metrics(self, step: int) -> None:
        """On resume, keep the lines up to the checkpoint's step (later ones are redone)."""
        keep = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        text = "".join(json.dumps(r) + "\n" for r in keep).encode()
        atomic_write(self.metrics_path, lambda f: f.write(text))

    def write_summary(self, summary: dict) -> None:
        if summary.get("status") not in STATUSES:
            raise ValueError(f"summary status {summary.get('status')!r} not in {STATUSES}")
        text = json.dumps({k: _jsonable(v) for k, v in summary.items()}, indent=2).encode()
        atomic_write(self.summary_path, lambda f: f.write(text))

    def read_summary(self) -> dict | None:
        if not self.summary_path.exists():
            return None
        return json.loads(self.summary_path.read_text())

    def is_complete(self) -> bool:
        summary = self.read_summary()
        return bool(summary) and summary.get("status") in ("completed", "diverged")

    def save_checkpoint(self, state: dict) -> None:
        atomic_write(self.checkpoint_path, lambda f: torch.save(state, f))

    def load_checkpoint(self) -> dict | None:
        if not self.checkpoint_path.exists():
            return None
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
