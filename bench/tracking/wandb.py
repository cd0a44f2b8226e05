"""Weights & Biases as a mirror of the run record: offline by default, never in training's way.

Every call is guarded: if W&B cannot start or log (no network, a broken install, a full disk),
training goes on and a single warning says why. Publish offline runs with `wandb sync`.

One complete W&B run per record. A process logs its rows into its own offline folder
`<run>/wandb/offline-run-<time>-<run id>`; a run killed and relaunched leaves one folder per
process, all with the run id as W&B id, each holding only the rows its process logged, and W&B
does not merge offline folders of one id. So when a run ends (`finish`) and the rows this process
logged are not all of metrics.jsonl from its first row on, or another folder of this id is there,
the whole record (every metrics.jsonl row, in order, and the summary) is replayed into a fresh
offline run, and every earlier folder of this id, this process's included, is moved to
`<run>/wandb/partial/`: `wandb sync runs/*/*/wandb/offline-run-*` then publishes exactly one
complete run per record. Rows the record holds after the last one logged (the row of a
diverged step) are appended to this process's run instead. Online runs are not replayed (W&B
cannot rewrite an online history): a relaunched online run continues the same W&B run.
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from bench.errors import choice
from bench.record import METRICS_FILE, leaves, read_rows

LOGGERS = ("wandb_offline", "wandb_online", "none")
MODES = ("offline", "online", "disabled")


@dataclass
class LoggerConfig:
    """The `logger` config group (conf/logger/*.yaml)."""

    name: str = "wandb_offline"
    project: str = "lowrank-bench"
    entity: str | None = None
    mode: str = "offline"  # offline | online | disabled


def check_logger(cfg) -> None:
    choice("logger.name", cfg.logger.name, LOGGERS)
    choice("logger.mode", cfg.logger.mode, MODES)


# W&B run-table summaries of every loss: the best (lowest) and the last value.
LOSS_SUMMARIES = ("train/loss", "eval/loss", "eval/loss_*", "test/loss")
# The study keys analysis reads back from a W&B run (analysis/wandb_source.py); the runner's own
# (stages, variants, smoke, ...) stay in the local record.
STUDY_KEYS = ("name", "baseline", "rows", "tuning_seeds", "reporting_seeds", "stage")


def dashboard_config(resolved: dict, owned: dict[str, set[str]], swept: list[str]) -> dict:
    """The run's config as W&B shows it: flat dotted keys (searchable, groupable at a glance),
    only those that apply to the run: of the `adapter` and `optimizer` groups the chosen
    choice's own keys (`owned`), `toy.*` only for the toy task, of `study.*` what analysis reads
    back; `swept`: the keys the run's launch swept, each also a top-level key."""
    out = {}
    for key, value in leaves(resolved).items():
        group, _, rest = key.partition(".")
        knob = rest.split(".")[0]
        if ((group in owned and knob not in owned[group])
                or (group == "toy" and resolved.get("task") != "toy")
                or (group == "study" and knob not in STUDY_KEYS)):
            continue
        out[key] = value
    out["swept"] = ",".join(swept)
    return out


def _loggable(row: dict) -> dict:
    return {k: v for k, v in row.items() if v is not None}  # metrics.jsonl's null: not logged


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
        job_type: str | None = None,
    ):
        self.run = None
        self.run_dir, self.run_id = Path(run_dir), run_id
        self.logged_steps: list = []  # the `step` of every row this process logged
        if mode == "disabled":  # logger=none: no W&B files at all
            return
        # W&B's own switch wins over the config (`WANDB_MODE=disabled` in the test suite).
        mode = os.environ.get("WANDB_MODE") or mode
        if mode == "disabled":
            return
        self.mode = mode
        self._init = dict(mode=mode, project=project, entity=entity, dir=str(run_dir), name=name,
                          group=group, tags=tags, config=config, id=run_id, resume="allow",
                          job_type=job_type)
        try:
            self.run = self._start()
        except Exception as e:  # noqa: BLE001 - W&B must never stop training
            self._fail("start", e)

    def _start(self):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        run = wandb.init(**self._init,
                         settings=wandb.Settings(console="off", x_disable_stats=True))
        # Steps and tokens are both x axes on the dashboard.
        run.define_metric("step")
        run.define_metric("tokens")
        run.define_metric("*", step_metric="step")
        for key in LOSS_SUMMARIES:
            run.define_metric(key, step_metric="step", summary="min,last")
        return run

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
            self.run.log(_loggable(row))
            self.logged_steps.append(row.get("step"))
        except Exception as e:  # noqa: BLE001
            self._fail("log", e)

    def finish(self, summary: dict) -> None:
        if self.run is None:
            return
        try:
            rows = self._record_rows()
            steps = [r.get("step") for r in rows]
            logged = len(self.logged_steps)
            prefix = steps[:logged] == self.logged_steps  # this process logged rows 0..logged-1
            replay = self.mode == "offline" and (not prefix or bool(self._segments()))
            if prefix and not replay:  # the record's rows after the last one logged (the row
                for row in rows[logged:]:  # of a diverged step; a toy run's curve)
                    self.run.log(_loggable(row))
            self._end(self.run, summary)
            if replay:
                self._replay(rows, summary)
        except Exception as e:  # noqa: BLE001
            self._fail("finish", e)

    @staticmethod
    def _end(run, summary: dict) -> None:
        for key, value in summary.items():
            if value is not None:
                run.summary[key] = value
        run.finish(exit_code=0 if summary.get("status") == "completed" else 1)

    def _record_rows(self) -> list[dict]:
        """The record's metric rows (bench.record.read_rows: unreadable lines left out)."""
        return read_rows(self.run_dir / METRICS_FILE)[0]

    def _segments(self) -> list[Path]:
        """Offline folders of this W&B id in <run>/wandb other than this process's run."""
        own = Path(self.run.dir).parent.resolve()
        return sorted(p for p in (self.run_dir / "wandb").glob(f"offline-run-*-{self.run_id}")
                      if p.is_dir() and p.resolve() != own)

    def _replay(self, rows: list[dict], summary: dict) -> None:
        """Every earlier folder of this id to wandb/partial/, then the whole record into a
        fresh offline run."""
        own = Path(self.run.dir).parent
        partial = self.run_dir / "wandb" / "partial"
        partial.mkdir(parents=True, exist_ok=True)
        for segment in [*self._segments(), own]:
            target, n = partial / segment.name, 1
            while target.exists():  # two processes started in the same second
                target, n = partial / f"{segment.name}.{n}", n + 1
            shutil.move(str(segment), str(target))
        self.run = run = self._start()
        for row in rows:
            run.log(_loggable(row))
        self._end(run, summary)
