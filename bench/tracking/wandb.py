"""Weights & Biases as a mirror of the run record: offline by default, never in training's way.

Every call is guarded: if W&B cannot start or log (no network, a broken install, a full disk),
training goes on and a single warning says why. Publish offline runs with `wandb sync`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path


class WandbLogger:
    def __init__(
        self,
        mode: str,
        project: str,
        entity: str | None,
        run_dir: Path,
        name: str,
        group: str,
        tags: list[str],
        config: dict,
        run_id: str,
    ):
        self.run = None
        if mode == "disabled":  # logger=none: no W&B files at all
            return
        # W&B's own switch wins over the config (`WANDB_MODE=disabled` in the test suite).
        mode = os.environ.get("WANDB_MODE") or mode
        if mode == "disabled":
            return
        try:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(
                mode=mode,
                project=project,
                entity=entity,
                dir=str(run_dir),
                name=name,
                group=group,
                tags=tags,
                config=config,
                id=run_id,
                resume="allow",
                settings=wandb.Settings(console="off", x_disable_stats=True),
            )
            # Steps and tokens are both x axes on the dashboard.
            self.run.define_metric("step")
            self.run.define_metric("tokens")
            self.run.define_metric("*", step_metric="step")
        except Exception as e:  # noqa: BLE001 - W&B must never stop training
            self._fail("start", e)

    def _fail(self, what: str, e: Exception) -> None:
        warnings.warn(
            f"W&B could not {what} ({type(e).__name__}: {e}); training goes on "
            "without it, the local run record is complete",
            stacklevel=3,
        )
        self.run = None

    def log(self, row: dict) -> None:
        if self.run is None:
            return
        try:
            self.run.log({k: v for k, v in row.items() if v is not None})
        except Exception as e:  # noqa: BLE001
            self._fail("log", e)

    def finish(self, summary: dict) -> None:
        if self.run is None:
            return
        try:
            for key, value in summary.items():
                if value is not None:
                    self.run.summary[key] = value
            self.run.finish(exit_code=0 if summary.get("status") == "completed" else 1)
        except Exception as e:  # noqa: BLE001
            self._fail("finish", e)
