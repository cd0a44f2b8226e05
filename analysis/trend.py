"""How a paired difference changes across the rows of a tuned table (balora_rank: does BaLoRA's
difference to LoRA grow with r?): one slope per method, paired by seed, with its interval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.markdown import markdown_table
from analysis.selection import Selection
from analysis.verdict import ALPHA, MIN_SEEDS, holm, paired_t

COLUMNS = ["method", "baseline", "rows", "n", "incomplete", "diverged", "slope", "ci_low",
           "ci_high", "p", "p_holm", "conclusive"]


def row_trend(table: pd.DataFrame | None, selection: Selection | None) -> pd.DataFrame:
    """For a tuned table split by one numeric `study.rows` key x (balora_rank: r), per method
    (without its row) compared with a baseline (without its row): the slope of the paired
    difference against log2 x, in nats per doubling of x.

    Seed s of every method and row sees the same batches, so per reporting seed s (never a
    tuning seed): d_s(x) = loss_method(s, x) - loss_baseline(s, x) at every row (>= 3 of them),
    slope_s = the least-squares slope of d_s on log2 x; then the mean of slope_s over the n
    seeds, its 95% t interval and p (n - 1 df, analysis.verdict.paired_t), Holm over the
    table's methods; conclusive as in the tuned table (n/a under MIN_SEEDS seeds, never yes
    while a seed diverged). A seed lacking a row is left out (`incomplete`), as is one whose
    difference is infinite at some row (`diverged`). A negative slope: the method's difference
    to the baseline falls as x doubles; a one-degree-of-freedom test of a monotone trend (a
    U-shaped difference can have slope 0), conditional on each row's tuned configuration.
    Empty where the table has no numeric rows."""
    axis = selection.row_axis() if selection is not None else None
    if table is None or table.empty or "test" not in table or axis is None:
        return pd.DataFrame(columns=COLUMNS)
    rows = table[table["row"].fillna("").ne("") & table["test"].fillna("").ne("")]
    if rows.empty:
        return pd.DataFrame(columns=COLUMNS)
    rows = rows.assign(x=rows["method"].map(axis[1]), family=rows["method"].map(selection.base),
                       base_family=rows["baseline"].map(selection.base))
    # the reporting seeds only: never the tuning seed, even where a row has no other yet
    losses = {m: selection.losses(m)[~selection.losses(m).index.isin(selection.left_out)]
              for m in set(rows["method"]) | set(rows["baseline"])}
    out = []
    for (family, base), group in rows.groupby(["family", "base_family"], sort=True):
        group = group.sort_values("x")
        # (seeds, rows): d_s(x); NaN where either arm has no result for seed s at that row
        d = pd.concat([losses[r.method] - losses[r.baseline] for r in group.itertuples()],
                      axis=1, keys=list(group["x"]))
        complete = d.notna().all(axis=1)  # a seed counts only with every row
        diverged = complete & ~np.isfinite(d).all(axis=1)  # some row's difference is +-inf
        fitted = d[complete & ~diverged]
        log_x = np.log2(fitted.columns.to_numpy(dtype=float))
        slopes = ([np.polyfit(log_x, values, 1)[0] for values in fitted.to_numpy()]
                  if len(log_x) >= 3 else [])
        test = paired_t(slopes)
        out.append({"method": family, "baseline": base,
                    "rows": ", ".join(f"{v:g}" for v in group["x"]), "n": len(slopes),
                    "incomplete": int((~complete).sum()), "diverged": int(diverged.sum()),
                    "slope": float(test.mean), "ci_low": float(test.low),
                    "ci_high": float(test.high), "p": float(test.p)})
    trend = pd.DataFrame(out, columns=COLUMNS[:-2])
    tested = trend["p"].notna()  # Holm over the methods with a p (n >= 2 seeds)
    trend["p_holm"] = np.nan
    trend.loc[tested, "p_holm"] = holm(trend.loc[tested, "p"].to_numpy())
    # as in the tuned table: no "yes" while a diverged seed is left out of the fit
    trend["conclusive"] = np.where(
        trend["n"] < MIN_SEEDS, "n/a",
        np.where((trend["p_holm"] < ALPHA) & (trend["diverged"] == 0), "yes", "no"))
    return trend


def write_trend(table: pd.DataFrame | None, selection: Selection | None, figures: str | Path,
                sweep: str) -> list[Path]:
    """``<sweep>_trend.md`` (`row_trend`); [] for a table without numeric rows."""
    trend = row_trend(table, selection)
    if trend.empty:
        return []
    key = selection.row_axis()[0]
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
        f"slope < 0: the method's difference falls as {key} doubles. Only reporting seeds with "
        f"a result at every {key} are fitted (incomplete: seeds lacking one; diverged: seeds "
        "with an infinite difference somewhere, which forbid a yes). A one-degree-of-freedom "
        "test of a monotone trend (a U-shaped difference can have slope 0), conditional on "
        f"each row's tuned configuration (see the tuned table's edge column).\n\n"
        + markdown_table(trend) + "\n")
    return [path]
