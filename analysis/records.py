"""Run records -> pandas.

A run record (DESIGN.md §3) is a folder ``<runs>/<sweep>/<run-id>/`` holding ``config.yaml``,
``metrics.jsonl`` and, once the run has ended, ``summary.json``. ``load_runs`` gives one row per
run (config flattened to dotted column names, plus the summary), ``load_curves`` the logged
metrics as a tidy long table. Nothing here imports the training code.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pandas as pd
import yaml

SUMMARY_KEYS = (
    "status",
    "final_eval_loss",
    "final_test_loss",  # with a test split (bench data.test_fraction > 0): what tables report
    "best_eval_loss",
    "steps",
    "steps_to_target",
    "tokens_to_target",
    "seconds_to_target",
    "target_loss",  # the target those were measured against (analysis/targets.py resolves it)
    "tokens_per_s",
    "peak_mem_mb",
    "error",
    "diverged_step",
    "trainable_params",
    "wall_s",  # the run's wall clock, curvature estimates left out, final evaluations counted
    # the last Hessian estimate of a run that measured one (bench.train.FINAL_MEASUREMENTS)
    "final_cond/kappa",
    "final_cond/lambda_min_h",
    "final_sharpness/lambda_max",
    "final_cond/gn/kappa",
    "final_cond/gn/lambda_min_h",
    "final_cond/gn/lambda_max",
)
# A run whose summary.json is missing was killed (or is still going) before writing it.
INCOMPLETE = "incomplete"
# The method of a record whose config.yaml is missing or torn (bench.run wrote one first).
UNKNOWN_METHOD = "unknown"
# The files of a run record: a folder holding any of them is a record (bench/tracking/record.py).
RECORD_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt")
BAD_STATUSES = ("diverged", "failed")
CURVE_INDEX = ("step", "tokens", "wall_s")

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


def derive_method(row: dict) -> str:
    """The method name when the record does not state it (`meta.method`), named as the
    training code names it: adapter/optimizer[/<attention geometry>[+block][+<retraction>]]
    [/lora:<adapter geometry>]. A key the record lacks takes its default (euclidean, svd)."""
    parts = [row.get("adapter.name") or "full", row.get("optimizer.name") or "adamw"]
    geometry = row.get("model.attention.geometry") or "euclidean"
    if geometry != "euclidean":
        retraction = row.get("model.attention.retraction") or "svd"
        parts.append(geometry + ("+block" if row.get("model.attention.block") is True else "")
                     + ("+" + retraction if retraction != "svd" else ""))
    adapter_geometry = row.get("adapter.geometry") or "euclidean"
    if adapter_geometry != "euclidean":
        parts.append("lora:" + adapter_geometry)
    return "/".join(parts)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def record_row(run_dir: Path) -> dict:
    """One run record -> one flat row (config columns, summary columns, run_dir, method).

    A torn record is shown, never dropped: a config.yaml that is missing or does not parse
    gives a row of status `incomplete` and method `unknown` (what the run computed is not
    known), a summary.json that does not parse or a metrics.jsonl whose last line is torn gives
    status `incomplete`; each is warned."""
    run_dir = Path(run_dir)
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        problem = None if isinstance(config, dict) else "is empty or not a mapping"
    except FileNotFoundError:
        config, problem = None, "is missing"
    except (OSError, yaml.YAMLError) as e:
        config, problem = None, f"does not parse ({type(e).__name__})"
    summary = _read_json(run_dir / "summary.json")
    if (run_dir / "summary.json").exists() and not isinstance(summary, dict):
        warnings.warn(f"{run_dir / 'summary.json'} does not parse: the run is shown as "
                      f"{INCOMPLETE}", stacklevel=2)
        summary = None
    if _torn_tail(run_dir / "metrics.jsonl"):
        warnings.warn(f"{run_dir / 'metrics.jsonl'} ends in a line that does not parse (a run "
                      f"killed mid-write): the line is skipped and the run shown as {INCOMPLETE}",
                      stacklevel=2)
        summary = None
    if problem is not None:
        warnings.warn(f"{run_dir / 'config.yaml'} {problem}: the run is shown as {INCOMPLETE}, "
                      f"method {UNKNOWN_METHOD!r}", stacklevel=2)
        row = make_row({}, None, str(run_dir), run_dir.name, run_dir.parent.name)
        row["method"] = UNKNOWN_METHOD
        return row
    return make_row(config, summary, str(run_dir), run_dir.name, run_dir.parent.name)


def _torn_tail(path: Path) -> bool:
    """Whether the last line of a JSON-lines file does not parse (reads its last 64 KiB only)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 65536))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return False
    lines = [line for line in tail.splitlines() if line.strip()]
    if not lines:
        return False
    try:
        json.loads(lines[-1])
    except ValueError:
        return True
    return False


def make_row(config: dict, summary: dict | None, run_dir: str, run_id: str, sweep: str) -> dict:
    """A resolved config and a summary (None: the run never wrote one) -> one flat row."""
    row = flatten(config)
    summary = summary if summary is not None else {"status": INCOMPLETE}
    for key in SUMMARY_KEYS:
        row[key] = summary.get(key)
    row["status"] = row["status"] or INCOMPLETE
    row["run_dir"] = run_dir
    row["run_id"] = row.get("meta.run_id") or run_id
    row["sweep"] = row.get("sweep") or sweep
    row["task"] = row.get("task") or "lm"
    row["method"] = row.get("meta.method") or derive_method(row)
    return row


def fill_absent_keys(rows: list[dict]) -> list[dict]:
    """Records written before a config key existed lack it. Within a sweep, a config key that
    some rows lack and every other row gives the same value takes that value in the rows that
    lack it, so that it does not split one configuration in two; a key whose values differ
    stays absent. This assumes the newer runs of a sweep left a new key at the default it was
    added with (the analysis does not read the schema); a sweep that set a new key to one
    non-default value on every newer run is merged wrongly. The rows are not changed."""
    filled = [dict(row) for row in rows]
    by_sweep: dict[str, list[dict]] = {}
    for row in filled:
        by_sweep.setdefault(row.get("sweep"), []).append(row)
    for group in by_sweep.values():
        keys = {k for row in group for k in row} - set(SUMMARY_KEYS)
        for key in sorted(k for k in keys if not k.startswith("meta.")):
            values = [row[key] for row in group if key in row]
            if len(values) < len(group) and all(v == values[0] for v in values):
                for row in group:
                    row.setdefault(key, values[0])
    return filled


def frame_from_rows(rows: list[dict]) -> pd.DataFrame:
    """Rows -> DataFrame with numeric summary columns and a stable order (`fill_absent_keys`
    first)."""
    df = pd.DataFrame(fill_absent_keys(rows))
    for key in SUMMARY_KEYS:
        if key not in df:
            df[key] = None
        if key not in ("status", "error"):
            df[key] = pd.to_numeric(df[key], errors="coerce")
    sort = [c for c in ("sweep", "method", "optimizer.lr", "seed", "run_id") if c in df]
    return df.sort_values(sort, na_position="last", kind="stable").reset_index(drop=True)


def load_runs(root: str | Path = "runs", sweep: str | None = None) -> pd.DataFrame:
    """Every run record under ``root`` (only ``root/<sweep>`` when ``sweep`` is given)."""
    root = Path(root)
    base = root / sweep if sweep else root
    sweeps = [base] if sweep else sorted(p for p in base.glob("*") if _visible_dir(p))
    run_dirs = [
        d for s in sweeps if s.is_dir() for d in sorted(s.glob("*"))
        if _visible_dir(d) and any((d / f).exists() for f in RECORD_FILES)
    ] if base.is_dir() else []
    if not run_dirs:
        raise NoRunsError(
            f"no run records under {base} (expected <runs>/<sweep>/<run-id>/config.yaml); "
            "make some with `make run` or `python -m bench.run`"
        )
    return drop_relaunches(frame_from_rows([record_row(d) for d in run_dirs]))


def _visible_dir(path: Path) -> bool:
    """A folder not hidden (submitit's `.submitit`, W&B's and Hydra's own are not records)."""
    return path.is_dir() and not path.name.startswith(".")


def drop_relaunches(df: pd.DataFrame) -> pd.DataFrame:
    """One row per launch: records of the same sweep with the same overrides (`meta.overrides`,
    seed included) are the same run relaunched under a changed run id (a new config key with a
    default changes every id); the most recently written record is kept."""
    if "meta.overrides" not in df:
        return df
    key = df["meta.overrides"].map(
        lambda o: ",".join(o) if isinstance(o, list) else (o if isinstance(o, str) and o else None))
    written = df["run_dir"].map(
        lambda d: (Path(d) / "config.yaml").stat().st_mtime
        if (Path(d) / "config.yaml").exists() else 0.0)
    df = df.assign(_launch=key, _written=written).sort_values("_written", kind="stable")
    keep = df["_launch"].isna() | ~df.duplicated(["sweep", "_launch"], keep="last")
    return df[keep].drop(columns=["_launch", "_written"]).sort_index()


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl lines; a line that does not parse (a killed run's last) is skipped."""
    records = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return records
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def curves_from_records(run_id: str, sweep: str, records: list[dict]) -> pd.DataFrame:
    """Logged dicts of one run -> long rows (numeric metrics only)."""
    rows = []
    for record in records:
        index = {k: record.get(k) for k in CURVE_INDEX}
        for metric, value in record.items():
            if metric in CURVE_INDEX or metric.startswith("_"):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            rows.append({"run_id": run_id, "sweep": sweep, **index, "metric": metric,
                         "value": float(value)})
    return pd.DataFrame(rows, columns=["run_id", "sweep", *CURVE_INDEX, "metric", "value"])


def load_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Tidy table (run_id, sweep, step, tokens, wall_s, metric, value) of the runs in ``df``."""
    parts = [
        curves_from_records(run_id, sweep, read_metrics(Path(run_dir) / "metrics.jsonl"))
        for run_id, sweep, run_dir in zip(df["run_id"], df["sweep"], df["run_dir"])
    ]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return curves_from_records("", "", [])
    curves = pd.concat(parts, ignore_index=True)
    for col in CURVE_INDEX:
        curves[col] = pd.to_numeric(curves[col], errors="coerce")
    return curves


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
        differing = {}
        for key in compat_keys(runs):
            values = {_hashable(v) for v in runs[key] if not _missing(v)}
            if len(values) > 1:
                differing[key] = sorted(values, key=str)
        if differing:
            detail = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in differing.items())
            raise IncompatibleRunsError(
                f"sweep {sweep!r} mixes runs of incompatible configs ({detail}); "
                "put them in separate sweeps (sweep=<name>) or remove the stale records"
            )


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _hashable(value):
    return value if not isinstance(value, dict | list) else json.dumps(value, sort_keys=True)


def lm_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The language-model runs (toy-study runs have their own figures)."""
    return df[df["task"] != "toy"] if "task" in df else df
