"""Time to a target loss (AlgoPerf's time-to-result, docs/design.md §7) computed from the records.

A run reaches a target at the first logged row whose `eval/loss` is <= the target; its
`steps_to_target`, `tokens_to_target` and `seconds_to_target` are that row's `step`, `tokens`
and `wall_s` (None if it never does). A run with a numeric `metrics.target_loss` records its own
numbers in its summary.json (bench.record.time_to_target, the one rule both sides use). A run
with `metrics.target_loss=from_baseline` records only that setting: its target is the final
eval loss of the sweep's `metrics.baseline` method (the best mean over seeds among
its configurations, completed runs only; configurations differ in anything but the seed, the
run metadata, the metrics settings and the keys that do not change a run) and is resolved here,
from the records of the whole sweep, so that no run ever writes another run's record.
"""

from __future__ import annotations

import json
import math
import warnings

import pandas as pd

from analysis.records import INCOMPLETE
from bench.record import SUMMARY_KEYS, finite, semantic, time_to_target

FROM_BASELINE = "from_baseline"
# Columns of the run table that do not make two baseline runs different configurations.
_NOT_CONFIG = {*SUMMARY_KEYS, "seed", "run_dir", "run_id", "method", "task"}
_NOT_CONFIG_PREFIXES = ("meta.", "metrics.", "hydra.", "wandb.")


def _config_key(row: pd.Series) -> str:
    kept = {k: v for k, v in row.items()
            if k not in _NOT_CONFIG and not k.startswith(_NOT_CONFIG_PREFIXES)
            and semantic(k)
            and not (pd.api.types.is_scalar(v) and pd.isna(v))}
    return json.dumps(kept, sort_keys=True, default=str)


def baseline_target(runs: pd.DataFrame, baseline: str) -> float | None:
    """The final eval loss of `baseline` among `runs` (one sweep): the best (lowest) mean over
    seeds among its configurations, completed runs with a finite loss only; None when none."""
    groups: dict[str, list[float]] = {}
    for _, row in runs[runs["method"] == baseline].iterrows():
        loss = row.get("final_eval_loss")
        if row.get("status") == "completed" and finite(loss):
            groups.setdefault(_config_key(row), []).append(float(loss))
    return min((sum(v) / len(v) for v in groups.values()), default=None)


def eval_rows(curves: pd.DataFrame, sweep: str, run_id: str) -> list[dict]:
    """One run's logged eval losses as metrics.jsonl rows (step, tokens, wall_s, eval/loss), in
    the order they were logged (`curves`: analysis.records.load_curves's tidy table)."""
    losses = curves[(curves["sweep"] == sweep) & (curves["run_id"] == run_id)
                    & (curves["metric"] == "eval/loss")]
    return [{"step": _number(r.step), "tokens": _number(r.tokens), "wall_s": _number(r.wall_s),
             "eval/loss": r.value} for r in losses.itertuples()]


def _number(value):
    if value is None or pd.isna(value):
        return None
    return int(value) if float(value).is_integer() else float(value)


def with_targets(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """The run table with a `target_loss` column (the run's numeric target, or its sweep's
    baseline loss for `from_baseline`) and, for `from_baseline` runs that have ended, the time
    to that loss from their curves. A sweep whose baseline has no completed run yet is warned
    about and its runs keep no time to target."""
    runs = runs.copy()
    own = runs["metrics.target_loss"] if "metrics.target_loss" in runs else pd.Series(
        None, index=runs.index, dtype=object)
    # A numeric target is the run's own; records written before targets were resolved here
    # keep the `target_loss` their summary states, until their sweep's baseline resolves it.
    stated = runs["target_loss"] if "target_loss" in runs else [math.nan] * len(runs)
    runs["target_loss"] = [float(t) if finite(t) else current
                           for t, current in zip(own, stated, strict=True)]
    wanted = own == FROM_BASELINE
    if not wanted.any():
        return runs
    baselines = runs["metrics.baseline"] if "metrics.baseline" in runs else pd.Series(
        None, index=runs.index, dtype=object)
    for (sweep, baseline), group in runs[wanted].groupby(["sweep", baselines[wanted]],
                                                          dropna=False):
        target = (baseline_target(runs[runs["sweep"] == sweep], baseline)
                  if isinstance(baseline, str) else None)
        if target is None:
            why = (f"metrics.baseline={baseline!r} has no completed run with a final eval loss"
                   if isinstance(baseline, str) else "from_baseline runs name no metrics.baseline")
            warnings.warn(f"sweep {sweep!r}: {why}, so its runs show no time to target",
                          stacklevel=2)
            continue
        for index, run in group.iterrows():
            runs.loc[index, "target_loss"] = target
            if run["status"] in ("running", INCOMPLETE):  # not ended: no time yet
                continue
            found = time_to_target(eval_rows(curves, sweep, run["run_id"]), target)
            for key, value in found.items():
                runs.loc[index, key] = math.nan if value is None else value
    return runs
