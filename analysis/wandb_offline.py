"""Runs read back from W&B's offline folders: no API key, no network.

`python -m analysis source=wandb_offline` (or `source=wandb project=<a local folder>`) reads every
offline run under the folder (`project=`, default `runs=`): the `.wandb` transaction logs that
training writes beside each record (`<runs>/<sweep>/<run-id>/wandb/offline-run-*/run-*.wandb`),
or any `offline-run-*` folder below a folder of W&B runs (a `./wandb`). The earlier segments of a
relaunched run, which bench moves to `wandb/partial/`, are left out, as `wandb sync` leaves them.

wandb 0.31 has no Python reader of these logs (its `datastore` module is gone); the reader is
W&B's own, the wandb-core binary that `wandb leet inspect --json` runs (`wandb.util.
get_core_path`), called directly with observability off, so nothing is sent anywhere. It prints
one JSON object per record: `run` (id, display name, group, the config at init), `config`
(later updates), `history` (one logged row), `summary` (updates) and `exit` (the exit code).
Those become the same plain dicts that the API path builds (analysis.wandb_source.fetch), so the
tables and figures follow the same code.
"""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import pandas as pd

from analysis.records import NoRunsError
from analysis.wandb_source import WandbUnavailableError, frames

PARTIAL = "partial"  # bench/tracking/wandb.py moves a relaunched run's earlier segments here


def offline_logs(folder: str | Path) -> list[Path]:
    """The `.wandb` logs of the offline runs under `folder`, one per W&B run id (the newest
    folder where a run has several), segments under `wandb/partial/` left out."""
    folder = Path(folder)
    logs = sorted(p for p in folder.rglob("offline-run-*/run-*.wandb")
                  if PARTIAL not in p.relative_to(folder).parts)
    newest: dict[str, Path] = {}
    for log in logs:  # offline-run-<yyyymmdd_hhmmss>-<id>: sorted by time within an id
        newest[log.stem.removeprefix("run-")] = log
    return sorted(newest.values())


def core() -> str:
    """The wandb-core binary, W&B's reader of `.wandb` logs."""
    try:
        from wandb.util import get_core_path

        return get_core_path()
    except Exception as error:  # noqa: BLE001 - no wandb, or no binary for this platform
        raise WandbUnavailableError(f"cannot read offline W&B runs: wandb-core is not available "
                                    f"({type(error).__name__}: {error})") from error


def decode(log: Path, timeout: float = 60, binary: str | None = None) -> list[dict]:
    """Every record of one `.wandb` log as a dict (`wandb leet inspect --json`'s lines)."""
    command = [binary or core(), "leet", "inspect", "--no-observability", "--json",
               "--run-file", str(log), str(log.parent.parent)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise ValueError(message)
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def raw_run(records: list[dict]) -> dict:
    """One run's records -> {id, name, group, state, config, summary, history}, the dict
    analysis.wandb_source.fetch makes of an API run."""
    run = next((r["run"] for r in records if r.get("type") == "run"), {})
    config = dict((run.get("config") or {}).get("update") or {})
    summary: dict = {}
    history, state = [], "running"
    for record in records:
        kind = record.get("type")
        if kind == "config":
            config.update((record["config"] or {}).get("update") or {})
        elif kind == "summary":
            summary.update((record["summary"] or {}).get("update") or {})
        elif kind == "history":
            history.append((record["history"] or {}).get("item") or {})
        elif kind == "exit":
            state = "finished" if (record["exit"] or {}).get("exit_code", 0) == 0 else "failed"
    return {"id": run.get("run_id"), "name": run.get("display_name"),
            "group": run.get("run_group"), "state": state, "config": config,
            "summary": summary, "history": history}


def load_offline(folder: str | Path, sweep: str | None = None, timeout: float = 60
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) as ``load_runs``/``load_curves`` give them, from the offline W&B runs
    under `folder` (module docstring); a log that cannot be decoded is skipped with a warning."""
    logs = offline_logs(folder)
    if not logs:
        raise NoRunsError(f"no offline W&B runs under {folder} (expected "
                          "<runs>/<sweep>/<run-id>/wandb/offline-run-*/run-*.wandb; training "
                          "writes them with the default logger=wandb_offline)")
    binary = core()
    raw = []
    for log in logs:
        try:
            run = raw_run(decode(log, max(timeout, 1), binary))
        except (ValueError, OSError, subprocess.TimeoutExpired) as error:
            warnings.warn(f"skipped {log}: W&B's reader failed ({error})", stacklevel=2)
            continue
        if run["id"]:
            raw.append(run)
    return frames(raw, f"wandb-offline:{folder}", sweep)
