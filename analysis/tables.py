"""The per-sweep summary table: every run, whatever its status."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.markdown import interval, markdown_table
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
        "method's tuned hyperparameters, per table row where the study splits its methods into "
        "rows (`study.rows`): the runs the figures show.\n\n"
        + markdown_table(table) + "\n"
    )
    return [path]


BUDGET_FRACTIONS = (0.25, 0.5, 1.0)


def budget_table(deltas: dict[str, pd.DataFrame], baselines: pd.Series) -> pd.DataFrame:
    """Per compared method, its paired difference to the baseline (`analysis.plots.
    paired_deltas`: steps with >= 2 paired seeds) at the evaluated step nearest a quarter, half
    and all of its last step, each "mean [95% t interval]" (per step, not adjusted for the
    steps' multiplicity), and the step from which every later interval excludes 0 on the side
    of the final one ("" where the final interval includes 0)."""
    rows = []
    for method, d in sorted(deltas.items()):
        d = d[d["n"] >= 2]
        if d.empty:
            continue
        steps = d.index.to_numpy(dtype=float)
        n_min, n_max = int(d["n"].min()), int(d["n"].max())
        row = {"method": method, "baseline": baselines[method],
               "paired seeds": f"{n_min}" if n_min == n_max else f"{n_min}-{n_max}"}
        for fraction in BUDGET_FRACTIONS:
            step = d.index[abs(steps - fraction * steps.max()).argmin()]
            at = d.loc[step]
            row[f"{fraction:.0%} of steps"] = (f"step {int(step)}: "
                                               + interval(at["mean"], at["low"], at["high"]))
        final = d.iloc[-1]
        side = 1 if final["low"] > 0 else -1 if final["high"] < 0 else 0
        since = ""
        if side:
            holds = (d["low"] > 0) if side > 0 else (d["high"] < 0)
            broken = d.index[~holds.to_numpy()]
            start = d.index[d.index > broken.max()].min() if len(broken) else d.index.min()
            since = f"{int(start)} ({'higher' if side > 0 else 'lower'})"
        row["interval excludes 0 from step"] = since
        rows.append(row)
    return pd.DataFrame(rows)


def write_budget(deltas: dict[str, pd.DataFrame], table: pd.DataFrame, metric: str,
                 figures: str | Path, sweep: str, source: pd.DataFrame | None = None
                 ) -> list[Path]:
    """``<sweep>_budget.md`` (`budget_table`, then the pretraining domain's loss `source`
    (`analysis.plots.source_levels`) where fine-tuning runs logged it) and
    ``<sweep>_delta_vs_step.csv`` (every step's paired difference: the data of the figure
    ``<sweep>_delta_vs_step``); [] without deltas."""
    if not deltas:
        return []
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    baselines = table.set_index("method")["baseline"]
    data = pd.concat([d.reset_index().assign(method=m, baseline=baselines[m])
                      for m, d in sorted(deltas.items())], ignore_index=True)
    csv = figures / f"{sweep}_delta_vs_step.csv"
    data[["method", "baseline", "step", "n", "mean", "low", "high"]].to_csv(csv, index=False)
    md = figures / f"{sweep}_budget.md"
    md.write_text(
        f"# {sweep}: does a verdict depend on the budget?\n\n"
        f"Each method's {metric} minus its baseline's, paired by seed over the seeds its tuned-"
        "table row reports, at its selected configuration: the mean and the 95% t interval at "
        "the evaluated step nearest 25%, 50% and 100% of the last step (per step, not adjusted "
        "for multiplicity: the tuned table's Holm-adjusted verdict is on the test split at the "
        "end), and the step from which every later interval excludes 0 on the final one's side. "
        f"Every step: `{csv.name}`.\n\n" + markdown_table(budget_table(deltas, baselines)) + "\n"
        + ("" if source is None or source.empty else
           "\n## Forgetting: the pretraining domain\n\n"
           "The pretraining domain's validation loss (`eval/loss_source`) of each method at its "
           "selected configuration: the mean over the seeds its row reports at the first and the "
           "last evaluated step, and the paired difference to the baseline at the last step "
           "with its 95% t interval (n - 1 df; not adjusted for multiplicity). Above its first "
           "value: fine-tuning raised it.\n\n" + markdown_table(source) + "\n"))
    return [md, csv]
