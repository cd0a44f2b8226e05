"""Run records -> pandas.

A run record (bench/record.py, the one contract: its files, keys and reader) is a folder
``<runs>/<sweep>/<run-id>/``. ``load_runs`` gives one row per run (config flattened to dotted
column names, plus the summary), ``load_curves`` the logged metrics as a tidy long table. Of
bench, analysis imports bench.record only: never the training code.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from bench.record import (
    BAD_STATUSES,
    CURVE_INDEX,
    METRICS_FILE,
    SUMMARY_KEYS,
    Record,
    finite,
    is_record,
    read_record,
    read_rows,
)

__all__ = ["BAD_STATUSES", "CURVE_INDEX", "SUMMARY_KEYS"]
# A run whose summary.json is missing was killed (or is still going) before writing it.
INCOMPLETE = "incomplete"

# Keys that may differ between the methods of one sweep: the attention geometry is a method.
_COMPAT_PREFIXES = ("model.", "data.")
_COMPAT_EXEMPT = ("model.attention.",)
_COMPAT_EXTRA = ("meta.data_hash",)


class AnalysisError(Exception):
    """A problem with the run records that the user must fix; reported in one line."""


class NoRunsError(AnalysisError):
    pass


class IncompatibleRunsError(AnalysisError):
    pass


class ArgumentError(AnalysisError, ValueError):
    """A bad argument: unknown key or value, a baseline that is not a method of the runs."""


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"optimizer": {"lr": 1e-3}} -> {"optimizer.lr": 1e-3}; lists become "a,b,c" strings."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            scalar = all(not isinstance(v, dict | list | tuple) for v in value)
            flat[name] = ",".join(map(str, value)) if scalar else json.dumps(value)
        else:
            flat[name] = value
    return flat


def unusable(record: Record) -> str | None:
    """Why analysis cannot use a record (None when it can): a config.yaml that cannot be read,
    a seed that is not an integer, a summary number that is not a finite number."""
    if not record.config:
        return record.problems[0] if record.problems else "config.yaml is empty"
    seed = record.config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        return f"{record.dir / 'config.yaml'}: seed={seed!r} is not an integer"
    for key in SUMMARY_KEYS:
        value = (record.summary or {}).get(key)
        if key not in ("status", "error") and value is not None and not finite(value):
            return f"{record.dir / 'summary.json'}: {key}={value!r} is not a finite number"
    return None


def record_row(record: Record) -> dict:
    """One readable run record -> one flat row (config columns, summary columns, run_dir,
    method); a summary that cannot be read makes the run `incomplete` (warned)."""
    for problem in record.problems:
        warnings.warn(f"{problem}: the run is shown as {INCOMPLETE}", stacklevel=2)
    return make_row(record.config, record.summary, str(record.dir), record.run_id,
                    record.sweep, record.method)


STATED_KEYS = "meta.stated_keys"  # a row's column: the config keys its record states


def make_row(config: dict, summary: dict | None, run_dir: str, run_id: str, sweep: str,
             method: str | None = None) -> dict:
    """A resolved config and a summary (None: the run never wrote one) -> one flat row."""
    row = flatten(config)
    # the keys this record states: a key an older record lacks (added to the schema since, at
    # its default) is no difference between its runs (analysis.selection.config_keys)
    row[STATED_KEYS] = tuple(row)
    overrides = (config.get("meta") or {}).get("overrides")
    if isinstance(overrides, list):  # the launch's command line, kept whole (a study's stages)
        row["meta.overrides"] = [str(o) for o in overrides]
    summary = summary if summary is not None else {"status": INCOMPLETE}
    for key in SUMMARY_KEYS:
        row[key] = summary.get(key)
    row["status"] = row["status"] or INCOMPLETE
    row["run_dir"] = run_dir
    row["run_id"] = row.get("meta.run_id") or run_id
    row["sweep"] = sweep  # the folder's name, never a path a record's config could claim
    row["task"] = row.get("task") or "lm"
    row["method"] = method or row.get("meta.method")
    return row


def frame_from_rows(rows: list[dict]) -> pd.DataFrame:
    """Rows -> DataFrame with numeric summary columns and a stable order."""
    df = pd.DataFrame(rows)
    for key in SUMMARY_KEYS:
        if key not in df:
            df[key] = None
        if key not in ("status", "error"):
            df[key] = pd.to_numeric(df[key], errors="coerce")
    sort = [c for c in ("sweep", "method", "optimizer.lr", "seed", "run_id") if c in df]
    return df.sort_values(sort, na_position="last", kind="stable").reset_index(drop=True)


def record_dirs(root: str | Path, sweep: str | None = None) -> list[Path]:
    """The record folders of `root/<sweep>/` (every sweep's when `sweep` is None). A record
    folder that is a symlink to somewhere outside `root` is not followed (warned)."""
    root = Path(root)
    base = root / sweep if sweep else root
    if not base.is_dir():
        return []
    sweeps = [base] if sweep else sorted(p for p in base.iterdir()
                                         if p.is_dir() and not p.name.startswith("."))
    inside = root.resolve()
    found = []
    for folder in sweeps:
        for run in sorted(folder.iterdir()):
            if not is_record(run):
                continue
            if run.is_symlink() and not run.resolve().is_relative_to(inside):
                warnings.warn(f"{run}: a link to {run.resolve()}, outside {root}: skipped",
                              stacklevel=2)
                continue
            found.append(run)
    return found


def load_runs(root: str | Path = "runs", sweep: str | None = None) -> pd.DataFrame:
    """Every usable run record under ``root`` (only ``root/<sweep>`` when ``sweep`` is given);
    a record analysis cannot use (`unusable`) is skipped and named in a warning."""
    rows = []
    for run_dir in record_dirs(root, sweep):
        record = read_record(run_dir)
        why = unusable(record)
        if why is not None:
            warnings.warn(f"skipped {run_dir}: {why}", stacklevel=2)
            continue
        rows.append(record_row(record))
    if not rows:
        base = Path(root) / sweep if sweep else Path(root)
        raise NoRunsError(
            f"no run records under {base} (expected <runs>/<sweep>/<run-id>/config.yaml); "
            "make some with `make run` or `python -m bench.run`"
        )
    return frame_from_rows(rows)


def curves_from_records(run_id: str, sweep: str, records: list[dict]) -> pd.DataFrame:
    """Logged dicts of one run -> long rows (finite numeric metrics only)."""
    rows = []
    for record in records:
        index = {k: record.get(k) for k in CURVE_INDEX}
        for metric, value in record.items():
            if metric in CURVE_INDEX or metric.startswith("_") or not finite(value):
                continue
            rows.append({"run_id": run_id, "sweep": sweep, **index, "metric": metric,
                         "value": float(value)})
    return pd.DataFrame(rows, columns=["run_id", "sweep", *CURVE_INDEX, "metric", "value"])


def load_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Tidy table (run_id, sweep, step, tokens, wall_s, metric, value) of the runs in ``df``;
    lines of a metrics.jsonl that are not rows are left out, with a warning."""
    parts = []
    for run_id, sweep, run_dir in zip(df["run_id"], df["sweep"], df["run_dir"]):
        rows, rejected = read_rows(Path(run_dir) / METRICS_FILE)
        if rejected:
            warnings.warn(f"{Path(run_dir) / METRICS_FILE}: {len(rejected)} line(s) that are "
                          "not metric rows left out", stacklevel=2)
        parts.append(curves_from_records(run_id, sweep, rows))
    parts = [p for p in parts if not p.empty]
    if not parts:
        return curves_from_records("", "", [])
    curves = pd.concat(parts, ignore_index=True)
    for col in CURVE_INDEX:
        curves[col] = pd.to_numeric(curves[col], errors="coerce")
    return curves


def pivot(curves: pd.DataFrame, run_ids, metric: str, column: str = "value") -> pd.DataFrame:
    """(step x run) table of one metric's ``column`` (value, wall_s or tokens) of `load_curves`'
    tidy table."""
    rows = curves[(curves["metric"] == metric) & curves["run_id"].isin(list(run_ids))]
    rows = rows.drop_duplicates(["run_id", "step"], keep="last")
    return rows.pivot(index="step", columns="run_id", values=column).sort_index()


def compat_keys(df: pd.DataFrame) -> list[str]:
    """Columns that must agree between the runs of one sweep: architecture and data."""
    return [
        c for c in df.columns
        if (c.startswith(_COMPAT_PREFIXES) and not c.startswith(_COMPAT_EXEMPT))
        or c in _COMPAT_EXTRA
    ]


def check_compatible(df: pd.DataFrame) -> None:
    """Refuse to compare runs of one sweep trained on different models or data.

    A key missing from some records (older format) is not a difference; runs of different
    sweeps, or of different tasks (toy, lm), are never compared, so the check is per both.
    """
    by = [c for c in ("sweep", "task") if c in df]
    groups = df.groupby(by, sort=True) if by else [(("",), df)]
    for (sweep, *_), runs in groups:
        differing, sized = {}, size_keys(runs)
        for key in compat_keys(runs):
            if key in sized:  # a ladder's model sizes (study.sizes) differ by design
                continue
            values = {_hashable(v) for v in runs[key] if not _missing(v)}
            if len(values) > 1:
                differing[key] = sorted(values, key=str)
        if differing:
            detail = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in differing.items())
            raise IncompatibleRunsError(
                f"sweep {sweep!r} mixes runs of incompatible configs ({detail}); "
                "put them in separate sweeps (sweep=<name>) or remove the stale records"
            )


def size_keys(df: pd.DataFrame) -> set[str]:
    """The config keys a study's model-size ladder sets (`study.sizes`: size name -> overrides,
    flattened to the columns study.sizes.<name>)."""
    keys = set()
    for col in (c for c in df.columns if c.startswith("study.sizes.")):
        for value in df[col].dropna():
            overrides = value if isinstance(value, list) else str(value).split(",")
            keys |= {str(o).partition("=")[0].strip() for o in overrides if "=" in str(o)}
    return keys


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _hashable(value):
    return value if not isinstance(value, dict | list) else json.dumps(value, sort_keys=True)


def lm_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The language-model runs (toy-study runs have their own figures)."""
    return df[df["task"] != "toy"] if "task" in df else df


# A run's token budget: the product of these keys (bench's trainer and model)
TOKEN_KEYS = ("trainer.max_steps", "trainer.batch_size", "model.seq_len")


def run_tokens(df: pd.DataFrame) -> pd.Series:
    """Each run's token budget: trainer.max_steps x trainer.batch_size x model.seq_len, else
    the record's `tokens` column; NaN where neither is known."""
    tokens = pd.Series(np.nan, index=df.index, dtype=float)
    if all(k in df for k in TOKEN_KEYS):
        product = np.prod([pd.to_numeric(df[k], errors="coerce").to_numpy(dtype=float)
                           for k in TOKEN_KEYS], axis=0)
        tokens[:] = product
    if "tokens" in df:
        tokens = tokens.fillna(pd.to_numeric(df["tokens"], errors="coerce"))
    return tokens


def trainable_params(runs: pd.DataFrame) -> float:
    """The median `trainable_params` of these runs' summaries (NaN where none states it)."""
    values = pd.to_numeric(runs.get("trainable_params", pd.Series(dtype=float)),
                           errors="coerce").dropna()
    return float(values.median()) if len(values) else math.nan
