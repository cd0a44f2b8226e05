"""One tidy table of every run and one of every logged step, in Parquet, each loadable in one line:

    import pandas as pd
    runs = pd.read_parquet("figures/runs.parquet")     # one row per run
    steps = pd.read_parquet("figures/steps.parquet")   # one row per logged step of a run

`runs.parquet`: every config key flat (dotted names, `optimizer.lr`), `sweep`, `run_id`,
`method` (the record's), `table_method` (its row of the tuned table: the method plus its row's
keys, "lora/adamw r=4"), `seed`, `status`, `chosen` (a run of its table row's chosen
configuration, analysis.selection), `reported` (chosen, on a seed its row reports: the runs the
tables and figures report), the summary's numbers (`final_eval_loss`, `best_eval_loss`,
`final_test_loss`, `steps`, `tokens`, `wall_s`, `tokens_per_s`, `peak_mem_mb`, the time to target,
the last curvature estimates, and any other key of summary.json), `host` ("<cpu> <kernel path>",
from `meta.host`) and `run_dir`.

`steps.parquet` is wide: one row per (run, logged step), the columns `sweep`, `run_id`,
`method`, `table_method`, `seed`, `step`, `tokens`, `wall_s`, then one column per logged metric
named as in metrics.jsonl (`train/loss`, `eval/loss`, `eval/loss_source`, `lr`, `cond/kappa`,
...), empty where that row did not log it (evaluations every `trainer.eval_every` steps). Wide,
so one run's curve is a column (`steps.query("run_id == @r")[["step", "eval/loss"]]`); the long
form is one `melt` away.

Both files keep every sweep analysed so far, like REPORT.md: an analysis replaces the rows of
the sweeps it analysed and keeps the others (delete the files to start over). Parquet is
written with pyarrow, a dependency of the package.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pandas as pd

from analysis.records import CURVE_INDEX, STATED_KEYS
from analysis.selection import Selection
from bench.record import SUMMARY_FILE, load_json

RUNS_FILE, STEPS_FILE = "runs.parquet", "steps.parquet"
LEAD = ["sweep", "run_id", "method", "table_method", "seed", "status", "chosen", "reported",
        "final_eval_loss", "best_eval_loss", "final_test_loss", "steps", "tokens", "wall_s",
        "tokens_per_s", "peak_mem_mb", "host"]
HOST_KEYS = ("meta.host.cpu", "meta.host.cpu_capability")


def runs_table(runs: pd.DataFrame, selections: dict[str, Selection]) -> pd.DataFrame:
    """One row per run (module docstring), from `load_runs`' table and each sweep's
    `Selection` (by sweep; a sweep without one, the toy's, has no chosen runs)."""
    table = runs.drop(columns=[c for c in ("row", "base", "adapter", "optimizer", STATED_KEYS)
                               if c in runs])
    table = table.assign(table_method=table["method"], chosen=False, reported=False)
    for sweep, selection in selections.items():
        names = dict(zip(selection.runs["run_id"], selection.runs["method"]))
        chosen, reported = set(), set()
        for method in selection.choices:
            runs_of = selection.chosen(method)
            chosen |= set(runs_of["run_id"])
            seeds = selection.reported_seeds(method)
            reported |= set(runs_of.loc[runs_of["seed"].isin(seeds), "run_id"])
        mine = table["sweep"] == sweep
        ids = table.loc[mine, "run_id"]
        table.loc[mine, "table_method"] = ids.map(names).fillna(table.loc[mine, "method"])
        table.loc[mine, "chosen"] = ids.isin(chosen)
        table.loc[mine, "reported"] = ids.isin(reported)
    extra = [_summary_extras(run_dir, set(table.columns)) for run_dir in table["run_dir"]]
    extra = pd.DataFrame(extra, index=table.index)
    table = pd.concat([table, extra[[c for c in extra if c not in table]]], axis=1)
    table["host"] = [_host(row) for row in table[[k for k in HOST_KEYS if k in table]]
                     .to_dict("records")] if HOST_KEYS[0] in table else None
    lead = [c for c in LEAD if c in table]
    return tidy(table[lead + sorted(c for c in table if c not in lead)])


def _summary_extras(run_dir, have: set) -> dict:
    """summary.json's keys that the run table does not carry already (`tokens`, a toy run's
    medians), read through bench.record's bounded reader; {} for a run that is not local."""
    path = Path(str(run_dir)) / SUMMARY_FILE
    if str(run_dir).startswith("wandb:") or not path.is_file():
        return {}
    try:
        summary = load_json(path)
    except Exception:  # noqa: BLE001 - the run table already warned about an unreadable one
        return {}
    if not isinstance(summary, dict):
        return {}
    return {k: v for k, v in summary.items() if k not in have and not isinstance(v, dict)}


def _host(row: dict) -> str | None:
    parts = [str(row[k]) for k in HOST_KEYS if k in row and not _missing(row[k])]
    return " ".join(parts) or None


def steps_table(curves: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, logged step) from `load_curves`' long table (module docstring); the
    later of two rows of one step wins, as in the figures (analysis.records.pivot)."""
    if curves.empty:
        return pd.DataFrame(columns=["sweep", "run_id", "method", "table_method", "seed",
                                     *CURVE_INDEX])
    long = curves.drop_duplicates(["sweep", "run_id", "step", "metric"], keep="last")
    wide = long.pivot(index=["sweep", "run_id", "step"], columns="metric", values="value")
    axes = long.groupby(["sweep", "run_id", "step"])[["tokens", "wall_s"]].last()
    wide = axes.join(wide).reset_index()
    wide.columns.name = None
    names = runs.set_index(["sweep", "run_id"])[["method", "table_method", "seed"]]
    wide = wide.join(names, on=["sweep", "run_id"])
    lead = ["sweep", "run_id", "method", "table_method", "seed", *CURVE_INDEX]
    wide = wide[lead + sorted(c for c in wide if c not in lead)]
    wide = wide.sort_values(["sweep", "run_id", "step"], kind="stable").reset_index(drop=True)
    wide["step"] = pd.to_numeric(wide["step"]).astype("Int64")
    return tidy(wide)


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Columns Parquet can store: an object column of numbers becomes numeric, of booleans
    boolean, of lists a list of strings, and one mixing kinds strings (JSON for containers)."""
    out = {}
    for name, values in df.items():
        out[name] = _tidy_column(values) if values.dtype == object else values
    return pd.DataFrame(out, index=df.index)


def _tidy_column(values: pd.Series) -> pd.Series:
    present = [v for v in values if not _missing(v)]
    if not present:
        return pd.Series([None] * len(values), index=values.index, dtype=object)
    kinds = {type(v) for v in present}
    if kinds <= {bool}:
        return values.map(lambda v: None if _missing(v) else bool(v)).astype("boolean")
    if kinds <= {int, float} and not any(isinstance(v, bool) for v in present):
        numbers = pd.to_numeric(values.map(lambda v: None if _missing(v) else v))
        return numbers.astype("Int64") if kinds == {int} else numbers.astype(float)
    if kinds <= {list, tuple}:
        return values.map(lambda v: None if _missing(v) else [str(x) for x in v])
    return values.map(lambda v: None if _missing(v) else
                      json.dumps(v) if isinstance(v, list | tuple | dict) else str(v))


def _missing(value) -> bool:
    if value is None:
        return True
    return isinstance(value, float) and math.isnan(value)


def merge(path: Path, new: pd.DataFrame, sweeps: set[str]) -> pd.DataFrame:
    """`new` with the rows of `path` (an earlier analysis) whose sweep is not in `sweeps`."""
    if not path.is_file():
        return new
    try:
        old = pd.read_parquet(path)
    except Exception as error:  # noqa: BLE001 - a torn or foreign file is rewritten
        warnings.warn(f"{path}: cannot be read ({type(error).__name__}); rewritten with this "
                      "analysis's sweeps only", stacklevel=2)
        return new
    kept = old[~old["sweep"].isin(sweeps)] if "sweep" in old else old.iloc[:0]
    if kept.empty:
        return new
    merged = pd.concat([kept.astype(object), new.astype(object)], ignore_index=True)
    merged = merged[[c for c in new if c in merged] + [c for c in merged if c not in new]]
    return tidy(merged.sort_values([c for c in ("sweep", "run_id", "step") if c in merged],
                                   kind="stable").reset_index(drop=True))


def write_exports(runs: pd.DataFrame, curves: pd.DataFrame, selections: dict[str, Selection],
                  figures: str | Path) -> list[Path]:
    """``figures/runs.parquet`` and ``figures/steps.parquet`` (module docstring)."""
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    runs = runs_table(runs, selections)
    sweeps = set(runs["sweep"])
    steps = steps_table(curves, runs)
    written = []
    for name, table in ((RUNS_FILE, runs), (STEPS_FILE, steps)):
        path = figures / name
        merge(path, table, sweeps).to_parquet(path, index=False)
        written.append(path)
    return written
