"""Rebuild the run table and curves from a W&B project, for users who only have the dashboard.

The training logger mirrors the run record into W&B (docs/design.md §3): the resolved config as the
run's config, the metrics.jsonl keys as history, the summary.json keys in the run summary, the
sweep as the run's group. The run record stays the source of truth; this is a fallback.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.records import (
    CURVE_INDEX,
    INCOMPLETE,
    SUMMARY_KEYS,
    AnalysisError,
    NoRunsError,
    curves_from_records,
    frame_from_rows,
    make_row,
)

# W&B run states -> run-record statuses, used when the summary has no `status`.
_STATES = {"finished": "completed", "crashed": "failed", "failed": "failed",
           "killed": INCOMPLETE, "running": "running"}


class WandbUnavailableError(AnalysisError):
    pass


def fetch(project: str, sweep: str | None = None, timeout: float = 10, api=None) -> list[dict]:
    """Plain dicts (id, name, group, state, config, summary, history) of the project's runs.

    Every network call happens here, so that any failure (no credentials, no server) becomes one
    WandbUnavailableError.
    """
    try:
        if api is None:
            import wandb

            api = wandb.Api(timeout=max(1, round(timeout)))
        filters = {"group": sweep} if sweep else None
        raw = []
        for run in api.runs(project, filters=filters):
            summary = getattr(run, "summary_metrics", None)
            raw.append({
                "id": run.id,
                "name": getattr(run, "name", run.id),
                "group": getattr(run, "group", None),
                "state": getattr(run, "state", None),
                "config": dict(run.config),
                "summary": dict(summary if summary is not None else run.summary),
                "history": list(run.scan_history()),
            })
    except Exception as error:  # noqa: BLE001 - any client/network failure means "unreachable"
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise WandbUnavailableError(
            f"cannot reach W&B ({type(error).__name__}: {message})") from error
    return raw


def _unwrap(config: dict) -> dict:
    """Older clients return {"key": {"value": v, "desc": ...}}; drop W&B's own keys."""
    out = {}
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if isinstance(value, dict) and set(value) <= {"value", "desc"} and "value" in value:
            value = value["value"]
        out[key] = value
    return out


def _summary(raw: dict) -> dict:
    summary = {}
    for key in SUMMARY_KEYS:
        for name in (key, f"summary/{key}"):
            if raw["summary"].get(name) is not None:
                summary[key] = raw["summary"][name]
                break
    summary.setdefault("status", _STATES.get(raw["state"], INCOMPLETE))
    if summary.get("final_eval_loss") is None:
        losses = [h["eval/loss"] for h in raw["history"]
                  if isinstance(h.get("eval/loss"), int | float)]
        if losses and summary["status"] == "completed":
            summary["final_eval_loss"] = losses[-1]
            summary["best_eval_loss"] = min(v for v in losses if not math.isnan(v))
    return summary


def _history(raw: dict) -> list[dict]:
    records = []
    for entry in raw["history"]:
        entry = dict(entry)
        if entry.get("step") is None:
            entry["step"] = entry.get("_step")
        if entry["step"] is not None:
            records.append(entry)
    return records


def load_wandb(project: str, sweep: str | None = None, timeout: float = 10,
               api=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) as ``load_runs``/``load_curves`` give them, read from W&B."""
    try:
        return frames(fetch(project, sweep, timeout, api), f"wandb:{project}", sweep)
    except NoRunsError:
        where = f"{project} (group {sweep})" if sweep else project
        raise NoRunsError(f"no runs in W&B project {where}; log some with `make run` "
                          "(logger=wandb_online) or `wandb sync`") from None


def frames(raw_runs: list[dict], where: str, sweep: str | None = None
           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, curves) of W&B runs as plain dicts (`fetch`'s, or analysis.wandb_offline's);
    `where` prefixes each run's `run_dir` ("wandb:<project>"); NoRunsError when none is left."""
    rows, parts = [], []
    for raw in raw_runs:
        row = make_row(_unwrap(raw["config"]), _summary(raw), f"{where}/{raw['id']}",
                       raw["name"] or raw["id"], raw["group"] or "wandb")
        if sweep and row["sweep"] != sweep:
            continue
        rows.append(row)
        parts.append(curves_from_records(row["run_id"], row["sweep"], _history(raw)))
    if not rows:
        raise NoRunsError(f"no runs in {where}" + (f" (group {sweep})" if sweep else ""))
    curves = pd.concat(parts, ignore_index=True)
    for col in CURVE_INDEX:
        curves[col] = pd.to_numeric(curves[col], errors="coerce")
    return frame_from_rows(rows), curves
