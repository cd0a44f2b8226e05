"""How a paired difference changes across the rows of a tuned table (balora_rank: does BaLoRA's
difference to LoRA grow with r?): one slope per method, paired by seed, with its interval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.markdown import markdown_table
from analysis.records import lm_runs
from analysis.verdict import ALPHA, MIN_SEEDS, holm, paired_t

COLUMNS = ["method", "baseline", "rows", "n", "slope", "ci_low", "ci_high", "p", "p_holm",
           "conclusive"]


def row_trend(df: pd.DataFrame, table: pd.DataFrame | None) -> pd.DataFrame:
    """For a tuned table split by one numeric `study.rows` key x (balora_rank: r), per method
    (without its row) compared with a baseline (without its row): the slope of the paired
    difference against log2 x, in nats per doubling of x.

    Seed s of every method and row sees the same batches, so per reporting seed s:
    d_s(x) = loss_method(s, x) - loss_baseline(s, x) at each row where both finished (finite),
    slope_s = the least-squares slope of d_s on log2 x (seeds with >= 3 rows); then the mean of
    slope_s over the n seeds, its 95% t interval and p (n - 1 df, analysis.verdict.paired_t),
    Holm over the table's methods; conclusive as in the tuned table (n/a under MIN_SEEDS seeds).
    A negative slope: the method's difference to the baseline falls as x doubles. Empty where
    the table has no numeric rows."""
    from analysis.tuning import best_config, chosen_losses, split_rows

    if table is None or table.empty or "row" not in table or "test" not in table:
        return pd.DataFrame(columns=COLUMNS)
    rows = table[table["row"].fillna("").ne("") & table["test"].fillna("").ne("")]
    x = pd.to_numeric(rows["row"].str.split("=").str[1], errors="coerce")
    if rows.empty or x.isna().any():  # rows by a name (trainer.lr_schedule): no axis
        return pd.DataFrame(columns=COLUMNS)
    unrow = lambda names: [n[: -len(r)].strip() for n, r in zip(names, rows["row"])]  # noqa: E731
    rows = rows.assign(x=x, family=unrow(rows["method"]), base_family=unrow(rows["baseline"]))
    runs = split_rows(lm_runs(df))
    wanted = set(rows["method"]) | set(rows["baseline"])
    best = {m: best_config(r) for m, r in runs[runs["method"].isin(wanted)].groupby("method")}
    seeds = str(table["tuning_seeds"].iloc[0]) if "tuning_seeds" in table else ""
    losses = chosen_losses(runs, best, [int(s) for s in seeds.split(",") if s.strip().isdigit()])
    out = []
    for (family, base), group in rows.groupby(["family", "base_family"], sort=True):
        points: dict[int, list[tuple[float, float]]] = {}  # seed -> [(log2 x, d_s(x))]
        for row in group.itertuples():
            d = (losses[row.method] - losses[row.baseline]).dropna()
            for seed, value in d[np.isfinite(d)].items():
                points.setdefault(int(seed), []).append((float(np.log2(row.x)), float(value)))
        slopes = [np.polyfit(*np.array(p).T, 1)[0] for _, p in sorted(points.items())
                  if len({lx for lx, _ in p}) >= 3]
        test = paired_t(slopes)
        out.append({"method": family, "baseline": base,
                    "rows": ", ".join(f"{v:g}" for v in sorted(group["x"])), "n": len(slopes),
                    "slope": float(test.mean), "ci_low": float(test.low),
                    "ci_high": float(test.high), "p": float(test.p)})
    trend = pd.DataFrame(out, columns=COLUMNS[:-2])
    tested = trend["p"].notna()  # Holm over the methods with a p (n >= 2 seeds)
    trend["p_holm"] = np.nan
    trend.loc[tested, "p_holm"] = holm(trend.loc[tested, "p"].to_numpy())
    trend["conclusive"] = np.where(trend["n"] < MIN_SEEDS, "n/a",
                                   np.where(trend["p_holm"] < ALPHA, "yes", "no"))
    return trend


def write_trend(df: pd.DataFrame, table: pd.DataFrame | None, figures: str | Path,
                sweep: str) -> list[Path]:
    """``<sweep>_trend.md`` (`row_trend`); [] for a table without numeric rows."""
    trend = row_trend(df, table)
    if trend.empty:
        return []
    key = table.loc[table["row"].fillna("").ne(""), "row"].iloc[0].split("=")[0].strip()
    loss = str(table["loss"].iloc[0]) if "loss" in table else "final loss"
    path = Path(figures) / f"{sweep}_trend.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# {sweep}: does a method's difference to its baseline change with {key}?\n\n"
        f"Per method, the slope of its paired difference to the baseline ({loss}, method - "
        f"baseline, at each method's tuned configuration per {key}) against log2 {key}: per "
        "reporting seed, the least-squares slope over the rows (seed s of every row and method "
        "sees the same batches); slope = the mean over those seeds, in loss per doubling of "
        f"{key}, with its 95% t interval and p (n - 1 degrees of freedom), p_holm = Holm over "
        f"the methods of this table, conclusive = p_holm < {ALPHA} with n >= {MIN_SEEDS}. "
        f"slope < 0: the method's difference falls as {key} doubles.\n\n"
        + markdown_table(trend) + "\n")
    return [path]
