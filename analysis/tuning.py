"""The tuning protocol of DESIGN.md §8 and the statistics of its table.

Per method, the runs that differ only by seed form a *config*; a config's score is its mean
final eval loss over seeds, a diverged or failed seed counting as +inf, so a config where any seed
diverged loses to every config where none did. The best config of each method is compared with a
baseline method (default: AdamW on the same adapter) by a seeded percentile bootstrap of the
difference of mean final losses; the difference is *conclusive* only when the 95% interval
excludes zero.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.markdown import markdown_table
from analysis.records import BAD_STATUSES, SUMMARY_KEYS, ArgumentError, check_compatible, lm_runs

TUNED_KEYS = ("optimizer.lr", "optimizer.manifold_lr", "adapter.alpha")
# Keys that do not change what a run computes: a copy of bench.config.NON_SEMANTIC (analysis
# reads records only and never imports bench; tests/test_tuning.py checks that they agree).
NON_SEMANTIC = (
    "out_dir",
    "sweep",
    "study",
    "logger",
    "trainer.device",
    "trainer.threads",
    "trainer.progress",
    "trainer.checkpoint_every",
    "trainer.log_every",
)
# Settings that may differ between the runs of one config without making them different configs
# when the records do not state their config (`meta.config_id`): the non-semantic keys above,
# the record's own bookkeeping, and what is measured (metrics.*, how often eval runs).
_BOOKKEEPING = ("seed", "run_dir", "run_id", "method", "task", "trainer.eval_every")
_BOOKKEEPING_PREFIXES = ("meta.", "hydra.", "metrics.", "wandb.")
CONFIG_ID = "meta.config_id"
N_BOOTSTRAP = 10_000
CONFIDENCE = 0.95


class GridEdgeWarning(UserWarning):
    """The best value of a tuned hyperparameter is the smallest or largest one tried."""


def run_score(status, final_loss) -> float:
    """A run's contribution to its config's mean: +inf if it diverged, NaN if it has no result."""
    if status in BAD_STATUSES:
        return math.inf
    if status != "completed" or final_loss is None or pd.isna(final_loss):
        return math.nan
    return float(final_loss) if math.isfinite(final_loss) else math.inf


def config_keys(runs: pd.DataFrame) -> list[str]:
    """The settings that vary between the runs of one method: the tuned ones first."""
    skip = set(SUMMARY_KEYS) | set(_BOOKKEEPING)
    varying = [
        c for c in runs.columns
        if c not in skip and not c.startswith(_BOOKKEEPING_PREFIXES) and not c.endswith(".seed")
        and not any(c == k or c.startswith(k + ".") for k in NON_SEMANTIC)
        and runs[c].astype(str).nunique(dropna=False) > 1
    ]
    return [k for k in TUNED_KEYS if k in varying] + [k for k in varying if k not in TUNED_KEYS]


def config_label(keys, values) -> str:
    """"optimizer.lr=0.001, adapter.alpha=16" (unset values left out)."""
    return ", ".join(f"{k}={_fmt(v)}" for k, v in zip(keys, values)
                     if not (pd.api.types.is_scalar(v) and pd.isna(v)))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def config_groups(runs: pd.DataFrame, keys: list[str]) -> list[pd.DataFrame]:
    """The runs of one method split into configs (runs that differ only by seed). Records that
    state their config (`meta.config_id`: the digest of the semantic config without the seed)
    are grouped by it; when some run of the method lacks it (records older than the key), by
    the settings that vary between the runs (`config_keys`), as before records stated it. The
    groups come in the order of their values of `keys`."""
    if CONFIG_ID in runs and runs[CONFIG_ID].notna().all():
        groups = [group for _, group in runs.groupby(CONFIG_ID, sort=True)]
        if not keys:
            return groups
        order = pd.DataFrame([group.iloc[0][keys] for group in groups]).reset_index(drop=True)
        order = order.sort_values(keys, na_position="last", kind="stable").index
        return [groups[i] for i in order]
    if not keys:
        return [runs]
    return [group for _, group in runs.groupby(keys, dropna=False, sort=True)]


def score_configs(runs: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    """The configs of one method (`config_groups`) with their seeds' scores, best first."""
    keys = config_keys(runs)
    runs = runs.assign(_score=[run_score(s, f) for s, f in zip(runs["status"],
                                                                 runs["final_eval_loss"])])
    # With a single config, still name its learning rate in tables and legends.
    shown = keys or [k for k in TUNED_KEYS[:1] if k in runs and runs[k].notna().any()]
    rows = []
    for group in config_groups(runs, keys):
        scores = group["_score"].dropna().to_numpy(dtype=float)
        first = group.iloc[0]
        rows.append({
            **{k: first[k] for k in shown},
            "scores": scores,
            "mean": scores.mean() if len(scores) else math.nan,
            "n_diverged": int(group["status"].isin(BAD_STATUSES).sum()),
            "run_ids": list(group["run_id"]),
            "n_runs": len(group),
        })
    table = pd.DataFrame(rows)
    # Two-stage protocol (grid on one seed, more seeds at the best): the configs that got the
    # most seeds are the ones the grid selected, so they come first; within them the lowest mean.
    # NaN (no finished seed) sorts after +inf: a config with no result is never chosen.
    table = table.assign(_tier=-table["n_runs"]).sort_values(
        ["_tier", "mean"], na_position="last", kind="stable").drop(columns="_tier")
    table = table.reset_index(drop=True)
    return shown, table


def best_config(runs: pd.DataFrame) -> dict:
    """The chosen config of one method: its keys, values, seed scores and run ids."""
    keys, table = score_configs(runs)
    best = table.iloc[0]
    return {
        "keys": keys,
        "values": {k: best[k] for k in keys},
        "scores": best["scores"],
        "mean": best["mean"],
        "n_diverged": best["n_diverged"],
        "run_ids": best["run_ids"],
        "n_configs": len(table),
        "edge": grid_edges(runs, keys, {k: best[k] for k in keys}),
    }


def grid_edges(runs: pd.DataFrame, keys: list[str], values: dict) -> list[str]:
    """Keys whose best value is the lowest or highest of >= 3 numeric values tried."""
    edges = []
    for key in keys:
        tried = pd.to_numeric(runs[key], errors="coerce").dropna().unique()
        value = pd.to_numeric(pd.Series([values[key]]), errors="coerce").iloc[0]
        if len(tried) >= 3 and not pd.isna(value) and value in (tried.min(), tried.max()):
            edges.append(key)
    return edges


def bootstrap_diff(x: np.ndarray, y: np.ndarray, n: int = N_BOOTSTRAP, seed: int = 0,
                   confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of mean(x) - mean(y), seeds resampled with replacement per side."""
    rng = np.random.default_rng(seed)
    mx = x[rng.integers(0, len(x), size=(n, len(x)))].mean(axis=1)
    my = y[rng.integers(0, len(y), size=(n, len(y)))].mean(axis=1)
    with np.errstate(invalid="ignore"):
        diff = mx - my
    if np.isnan(diff).any():  # inf - inf: both sides have diverged seeds, no finite difference
        return math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    # "lower"/"higher" rather than interpolation: the differences may be infinite (diverged seeds).
    low = np.percentile(diff, tail, method="lower")
    high = np.percentile(diff, 100 - tail, method="higher")
    return float(low), float(high)


def default_baseline(method: str, methods: pd.DataFrame) -> str | None:
    """AdamW on the same adapter: prefer "<adapter>/adamw", else any adamw method of it."""
    adapter = methods.loc[method, "adapter"]
    candidates = methods[(methods["adapter"] == adapter) & (methods["optimizer"] == "adamw")]
    if candidates.empty:
        return None
    plain = f"{adapter}/adamw"
    return plain if plain in candidates.index else sorted(candidates.index)[0]


def _column(df: pd.DataFrame, key: str, default) -> pd.Series:
    return df[key].fillna(default) if key in df else pd.Series(default, index=df.index)


def tuned_table(df: pd.DataFrame, baseline: str | None = None, n_boot: int = N_BOOTSTRAP,
                seed: int = 0) -> pd.DataFrame:
    """One row per method at its best hyperparameters, compared with the baseline method.

    ``baseline``: a method name used for every row; default AdamW on the same adapter.
    Columns: method, hyperparameters, <tuned keys>, n_configs, n_seeds, n_diverged, mean, std,
    delta (mean - baseline mean; negative = lower loss than the baseline), ci_low, ci_high,
    conclusive ("yes" | "no" | "baseline" | "n/a" without a baseline), edge, baseline.
    """
    df = lm_runs(df)
    check_compatible(df)
    if df.empty:
        return pd.DataFrame()
    if "sweep" in df and df["sweep"].nunique() > 1:
        parts = [tuned_table(runs, baseline, n_boot, seed) for _, runs in df.groupby("sweep")]
        return pd.concat(parts, ignore_index=True)
    df = df.assign(adapter=_column(df, "adapter.name", "full"),
                   optimizer=_column(df, "optimizer.name", "adamw"))
    best = {method: best_config(runs) for method, runs in df.groupby("method", sort=True)}
    methods = df.groupby("method")[["adapter", "optimizer"]].first()
    if baseline is not None and baseline not in best:
        raise ArgumentError(f"baseline {baseline!r} is not a method of these runs; "
                         f"methods: {', '.join(best)}")
    rows = []
    for method, chosen in best.items():
        base = baseline or default_baseline(method, methods)
        rows.append(_table_row(method, chosen, base, best.get(base), methods, n_boot, seed))
    table = pd.DataFrame(rows)
    if "sweep" in df:
        table.insert(0, "sweep", df["sweep"].iloc[0])
    return table


def _table_row(method, chosen, base, base_config, methods, n_boot, seed) -> dict:
    scores = chosen["scores"]
    finite = scores[np.isfinite(scores)]
    row = {
        "method": method,
        "adapter": methods.loc[method, "adapter"],
        "optimizer": methods.loc[method, "optimizer"],
        "hyperparameters": config_label(chosen["keys"], chosen["values"].values()),
        **chosen["values"],
        "n_configs": chosen["n_configs"],
        "n_seeds": len(scores),
        "n_diverged": chosen["n_diverged"],
        "mean": chosen["mean"],
        "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan,
        "delta": math.nan, "ci_low": math.nan, "ci_high": math.nan,
        "conclusive": "n/a",
        "edge": ",".join(chosen["edge"]),
        "baseline": base or "",
    }
    if chosen["edge"]:
        where = ", ".join(f"{k}={_fmt(chosen['values'][k])}" for k in chosen["edge"])
        warnings.warn(f"{method}: best {where} is on the edge of the grid tried; "
                      "extend the grid", GridEdgeWarning, stacklevel=3)
    if method == base:
        row["conclusive"] = "baseline"
    elif base_config is not None:
        other = base_config["scores"]
        with np.errstate(invalid="ignore"):
            row["delta"] = float(chosen["mean"] - base_config["mean"])
        if len(scores) and len(other):
            row["ci_low"], row["ci_high"] = bootstrap_diff(scores, other, n_boot, seed)
        # One seed per side has no spread to resample: never conclusive.
        excludes_zero = row["ci_low"] > 0 or row["ci_high"] < 0
        row["conclusive"] = "yes" if excludes_zero and min(len(scores), len(other)) >= 2 else "no"
    return row


def best_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The runs (all seeds, any status) of each method's chosen config."""
    chosen = []
    for _, runs in lm_runs(df).groupby(["sweep", "method"], sort=True):
        chosen.extend(best_config(runs)["run_ids"])
    return df[df["run_id"].isin(chosen)]


def write_tuned(table: pd.DataFrame, figures: str | Path, sweep: str) -> list[Path]:
    """``figures/<sweep>_tuned.md`` and ``.csv``."""
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    md, csv = figures / f"{sweep}_tuned.md", figures / f"{sweep}_tuned.csv"
    table.to_csv(csv, index=False)
    shown = ["method", "hyperparameters", "n_configs", "n_seeds", "n_diverged", "mean", "std",
             "delta", "ci_low", "ci_high", "conclusive", "baseline", "edge"]
    md.write_text(
        f"# {sweep}: methods at their tuned hyperparameters\n\n"
        + markdown_table(table[[c for c in shown if c in table]])
        + "\n\n" + PROTOCOL + "\n"
    )
    return [md, csv]


PROTOCOL = (
    "Protocol: per method, the hyperparameters with the lowest mean final eval loss over seeds "
    "among the configurations run with the most seeds (with a grid on one seed and more seeds at "
    "its best, that best; a diverged or failed seed counts as +inf; std is over the seeds that "
    "did not); "
    "delta = mean - baseline mean (negative: lower loss than the baseline);"
    f" [ci_low, ci_high] = {CONFIDENCE:.0%} percentile bootstrap "
    f"interval of delta ({N_BOOTSTRAP} resamples of the seeds, seeded); conclusive = the "
    "interval excludes zero with >= 2 seeds on each side; edge = the best value is the lowest or "
    "highest of >= 3 values tried."
)
