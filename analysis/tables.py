"""The per-sweep summary table: every run, whatever its status."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.markdown import markdown_table
from analysis.records import lm_runs
from analysis.tuning import best_runs, config_keys, config_label


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every run of a sweep, whatever its status: one row each."""
    df = lm_runs(df)
    chosen = set(best_runs(df)["run_id"]) if len(df) else set()
    rows = []
    for method, runs in df.groupby("method", sort=True):
        keys = config_keys(runs) or [k for k in ("optimizer.lr",)
                                     if k in runs and runs[k].notna().any()]
        for run in runs.to_dict("records"):
            error = run.get("error")
            rows.append({
                "method": method,
                "hyperparameters": config_label(keys, [run.get(k) for k in keys]),
                "seed": run.get("seed"),
                "status": run.get("status"),
                "steps": run.get("steps"),
                "final loss": run.get("final_eval_loss"),
                "best loss": run.get("best_eval_loss"),
                "steps to target": run.get("steps_to_target"),
                "tokens/s": run.get("tokens_per_s"),
                "tuned": "yes" if run["run_id"] in chosen else "",
                "error": (str(error)[:80] if isinstance(error, str) and error else ""),
                "run_id": run["run_id"],
            })
    table = pd.DataFrame(rows)
    if not table.empty:
        for column in ("steps", "steps to target"):
            table[column] = pd.to_numeric(table[column]).astype("Int64")
    return table


def curvature_cost(runs: pd.DataFrame, curves: pd.DataFrame) -> str:
    """One sentence: the seconds these runs spent on curvature estimates (metrics.hessian, the
    logged cost/hessian_s) against their whole time (each run's wall clock, which leaves the
    estimates out: its summary's wall_s, which counts the final evaluations too, else its last
    logged wall_s; plus the estimates); "" where nothing was estimated."""
    mine = curves[curves["run_id"].isin(runs["run_id"])]
    estimates = mine[mine["metric"] == "cost/hessian_s"]
    spent = float(estimates["value"].sum())
    if spent <= 0:
        return ""
    logged = mine.groupby("run_id")["wall_s"].max()
    clock = runs.set_index("run_id")["wall_s"] if "wall_s" in runs else pd.Series(dtype=float)
    trained = float(clock.reindex(logged.index.union(clock.index)).fillna(logged).fillna(0).sum())
    total = trained + spent
    n = int(estimates["run_id"].nunique())
    return (f"Curvature estimates (metrics.hessian, in {n} of {runs['run_id'].nunique()} runs) "
            f"took {spent / 60:.1f} min: {100 * spent / total:.1f}% of the {total / 3600:.2f} h "
            "these runs took in all (their wall clock plus the estimates).")


def write_summary(df: pd.DataFrame, figures: str | Path, sweep: str) -> list[Path]:
    """``figures/<sweep>_summary.md``."""
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    path = figures / f"{sweep}_summary.md"
    table = summary_table(df)
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    path.write_text(
        f"# {sweep}: every run\n\n{len(table)} runs ({status}). `tuned` marks the runs at each "
        "method's tuned hyperparameters (the ones the figures show).\n\n"
        + markdown_table(table) + "\n"
    )
    return [path]
