"""The tables of a sweep: the tuned table (each method at its chosen configuration against its
baseline), every run, the budget reading and the forgetting table, as Markdown and CSV."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.markdown import interval, markdown_table
from analysis.records import (
    ArgumentError,
    check_compatible,
    lm_runs,
    run_tokens,
    trainable_params,
)
from analysis.selection import (
    Choice,
    Selection,
    column,
    config_keys,
    config_label,
    fmt,
    select_sweep,
)
from analysis.verdict import ALPHA, CONFIDENCE, MIN_SEEDS, POWER, compare, judge_table

# The last Hessian estimate of a run (None where the horizontal Hessian was not positive
# definite) and a key every estimate sets, to tell "not measured" from "not defined"
FINAL_KAPPA, FINAL_SHARPNESS = "final_cond/kappa", "final_sharpness/lambda_max"
FINAL_KAPPA_GN, FINAL_GN_MAX = "final_cond/gn/kappa", "final_cond/gn/lambda_max"


class GridEdgeWarning(UserWarning):
    """The best value of a tuned hyperparameter is the smallest or largest one tried."""


def tuned_table(df: pd.DataFrame, baseline: str | None = None, tuning_seeds=None,
                selection: Selection | None = None) -> pd.DataFrame:
    """One row per method at its chosen configuration (analysis.selection), compared with the
    baseline method.

    ``baseline``: a method name used for every row (at each table row: + its row suffix);
    default `Selection.default_baseline` (AdamW on the same adapter; in a sweep without a study,
    the first adapter's AdamW at the same swept values).
    ``tuning_seeds``: left out of every row when the table tuned anything (some method tried
    more than one config) and the row has other seeds; default: what the records' study block
    states. ``selection``: the sweep's `Selection`, when the caller has it already.
    Columns: method, hyperparameters, <tuned keys>, n_configs, seeds (reported, "(diverged)"
    marks a diverged one), n_seeds, n_diverged (diverged runs of the chosen config, any seed),
    mean, std (over the reported seeds), then the comparison with the baseline (verdict.py):
    test ("paired" | "welch"), n, delta (method - baseline; negative = lower loss than the
    baseline), ci_low, ci_high, p, p_holm, conclusive ("yes" | "no" | "n/a" | "baseline"),
    detectable; tokens, tokens_per_param (`scale_of`); baseline, edge, near_ties
    (`analysis.selection.near_ties`), loss (the summary column reported), tuning_seeds (left
    out).
    """
    df = lm_runs(df)
    check_compatible(df)
    if df.empty:
        return pd.DataFrame()
    if "sweep" in df and df["sweep"].nunique() > 1:
        parts = [tuned_table(runs, baseline, tuning_seeds) for _, runs in df.groupby("sweep")]
        return pd.concat(parts, ignore_index=True)
    sel = selection if selection is not None else select_sweep(df, tuning_seeds)
    methods = sel.runs.groupby("method")[["adapter", "optimizer", "row"]].first()
    names = {baseline + row for row in methods["row"].unique()} if baseline else set()
    if baseline is not None and not names & set(sel.choices):
        raise ArgumentError(f"baseline {baseline!r} is not a method of these runs; "
                            f"methods: {', '.join(sel.choices)}")
    rows = []
    for method, chosen in sel.choices.items():
        base = (baseline + methods.loc[method, "row"] if baseline
                else sel.default_baseline(method))
        losses = sel.losses(method)
        row = _table_row(method, chosen, losses, base, methods)
        if base in sel.choices and base != method:
            row.update(compare(losses, sel.losses(base)))
        runs = sel.chosen(method)
        row.update(scale_of(runs[runs["seed"].isin(losses.index)]))
        row.update(final_kappa(runs, losses.index))
        row.update(reporting_hosts(runs, losses.index))
        rows.append(row)
    table = judge_table(pd.DataFrame(rows))
    table = table.astype({"n": "Int64"})  # blank: not compared
    table["loss"] = sel.loss_key
    table["tuning_seeds"] = ",".join(map(str, sel.left_out))
    if "sweep" in df:
        table.insert(0, "sweep", df["sweep"].iloc[0])
    return table


def scale_of(runs: pd.DataFrame) -> dict:
    """The scale a row is measured at: its reported runs' tokens (trainer.max_steps x
    trainer.batch_size x model.seq_len) and tokens per trainable parameter (medians)."""
    tokens = float(run_tokens(runs).median()) if len(runs) else math.nan
    params = trainable_params(runs)
    return {"tokens": tokens,
            "tokens_per_param": tokens / params if params > 0 else math.nan}


def final_kappa(runs: pd.DataFrame, seeds) -> dict:
    """kappa: the median over the reported `seeds` of these runs' last condition number of the
    horizontal Hessian, and kappa_seeds "k/n": of the n seeds whose Hessian was measured, the k
    where kappa is defined (the Hessian positive definite); kappa_gn and kappa_gn_seeds the same
    for the Gauss-Newton matrix (metrics.hessian.gauss_newton; defined where it is not singular).
    Blank where nothing was measured."""
    out = {}
    chosen = runs[column(runs, "seed", 0).astype(int).isin(list(seeds))]
    for col, kappa_key, measured_key in (("kappa", FINAL_KAPPA, FINAL_SHARPNESS),
                                         ("kappa_gn", FINAL_KAPPA_GN, FINAL_GN_MAX)):
        out[col], out[f"{col}_seeds"] = math.nan, ""
        if measured_key not in chosen:
            continue
        measured = chosen[chosen[measured_key].notna()]
        if measured.empty:
            continue
        kappas = column(measured, kappa_key, math.nan).dropna()
        out[col] = float(kappas.median()) if len(kappas) else math.nan
        out[f"{col}_seeds"] = f"{len(kappas)}/{len(measured)}"
    return out


HOST_KEYS = ("meta.host.cpu", "meta.host.cpu_capability")


def reporting_hosts(runs: pd.DataFrame, seeds) -> dict:
    """hosts: the processors ("<cpu> <kernel path>", `meta.host`) the reported `seeds` of these
    runs executed on, "; "-joined; hosts_unstated: how many of them predate `meta.host`. A run
    re-executed on another processor drifts (bench/tracking/identity.py host), so a reader
    of a paired comparison should know whether its arms ran on one machine."""
    chosen = runs[column(runs, "seed", 0).astype(int).isin(list(seeds))]
    if chosen.empty:
        return {"hosts": "", "hosts_unstated": 0}
    stated = chosen[HOST_KEYS[0]].notna() if HOST_KEYS[0] in chosen else pd.Series(
        False, index=chosen.index)
    labels = {" ".join(str(r[k]) for k in HOST_KEYS if k in r and pd.notna(r[k]))
              for _, r in chosen[stated].iterrows()}
    return {"hosts": "; ".join(sorted(labels)), "hosts_unstated": int((~stated).sum())}


def measured_kappa(table: pd.DataFrame, col: str = "kappa") -> bool:
    """Whether any row of the table measured that matrix (a `<col>_seeds` cell is not blank)."""
    return bool(table.get(f"{col}_seeds", pd.Series(dtype=str)).fillna("").ne("").any())


def _seeds_label(losses: pd.Series) -> str:
    """"1, 2, 3 (diverged)": the reported seeds, a diverged one marked."""
    return ", ".join(f"{seed}" + (" (diverged)" if np.isinf(v) else "")
                     for seed, v in losses.items())


def _table_row(method, chosen: Choice, losses: pd.Series, base, methods) -> dict:
    finite = losses[np.isfinite(losses)]
    row = {
        "method": method,
        "adapter": methods.loc[method, "adapter"],
        "optimizer": methods.loc[method, "optimizer"],
        **({"row": methods.loc[method, "row"].strip()} if methods.loc[method, "row"] else {}),
        "hyperparameters": config_label(chosen.keys, chosen.values.values()),
        **chosen.values,
        "n_configs": chosen.n_configs,
        "seeds": _seeds_label(losses),
        "n_seeds": len(losses),
        "n_diverged": chosen.n_diverged,
        "mean": float(losses.mean()) if len(losses) else math.nan,
        "std": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan,
        "test": "", "n": None, "delta": math.nan, "ci_low": math.nan, "ci_high": math.nan,
        "p": math.nan, "p_holm": math.nan,
        "conclusive": "baseline" if method == base else "n/a",
        "detectable": math.nan, "consistent": True,
        "baseline": base or "",
        "edge": ",".join(chosen.edge),
        "near_ties": "; ".join(chosen.near_ties),
    }
    if chosen.edge:
        where = ", ".join(f"{k}={fmt(chosen.values[k.partition('@')[0]])}"
                          for k in chosen.edge)
        warnings.warn(f"{method}: best {where} is on the edge of the grid tried (key@steps: of "
                      "the values rerun at that budget); extend the grid or the long stage",
                      GridEdgeWarning, stacklevel=3)
    return row


def write_tuned(table: pd.DataFrame, figures: str | Path, sweep: str, note: str = "",
                tuned: bool = True) -> list[Path]:
    """``figures/<sweep>_tuned.md`` and ``.csv``; `note` (e.g. the curvature estimates' cost,
    analysis.tables.curvature_cost) follows the reporting paragraph; `tuned`: False for a sweep
    without a study (`Selection.tuned`), which the paragraph says."""
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    md, csv = figures / f"{sweep}_tuned.md", figures / f"{sweep}_tuned.csv"
    table.to_csv(csv, index=False)
    shown = ["method", "hyperparameters", "n_configs", "tokens_per_param", "seeds", "n_diverged",
             "mean", "std",
             "test", "n", "delta", "ci_low", "ci_high", "p", "p_holm", "conclusive",
             "detectable", "kappa", "kappa_seeds", "kappa_gn", "kappa_gn_seeds", "baseline",
             "edge", "near_ties"]
    for col in ("kappa", "kappa_gn"):
        if not measured_kappa(table, col):
            shown = [c for c in shown if c not in (col, f"{col}_seeds")]
    md.write_text(
        f"# {sweep}: methods at their tuned hyperparameters\n\n"
        + markdown_table(table[[c for c in shown if c in table]])
        + "\n\n" + reporting(table, tuned) + (" " + note if note else "") + "\n\n" + PROTOCOL + "\n"
    )
    return [md, csv]


def reporting(table: pd.DataFrame, tuned: bool = True) -> str:
    """What this table reports: which loss, over which seeds, and its family of comparisons
    (`tuned`: False for a sweep without a study, whose rows are its swept configurations)."""
    if table.empty:
        return "No runs."
    loss = str(table["loss"].iloc[0])
    kind = (f"test loss (`{loss}`)" if "test" in loss
            else f"eval loss (`{loss}`: these records have no test split, so the split that "
                 "selects also reports)")
    seeds = sorted({s.split(" ")[0] for cell in table["seeds"] for s in cell.split(", ") if s},
                   key=int)
    left_out = str(table["tuning_seeds"].iloc[0])
    why = (f"tuning seed {left_out} is left out wherever a method has other seeds"
           if left_out else "no configuration was tuned (one per method), so every seed reports")
    if not tuned:
        why = ("its records declare no study, so nothing was tuned: each swept configuration is "
               "its own row and every seed reports; each row is compared with the first "
               "adapter's AdamW at the same swept values unless a baseline is given")
    m = int(table["p"].notna().sum())
    few = int((table["test"].fillna("").ne("") & (table["n"] < MIN_SEEDS)).sum())
    text = (f"This table reports the final {kind} over seeds {', '.join(seeds)} "
            f"({why}); Holm's correction runs over its {m} comparison{'s' * (m != 1)} with a "
            "p-value.")
    if few > 0:
        verb = "have" if few != 1 else "has"
        text += (f" {few} of its comparisons {verb} fewer than {MIN_SEEDS} seeds, so no verdict "
                 "(n/a) whatever the p-value.")
    text += _hosts_sentence(table)
    if measured_kappa(table):
        text += (" kappa = the median over those seeds of the condition number of the adapted "
                 "layers' horizontal Hessian at the run's last estimate (Lanczos, "
                 "bench/metrics/monitor.py); kappa_seeds = k/n: of the n seeds measured, the k "
                 "where that Hessian was positive definite, so that kappa is defined.")
    if measured_kappa(table, "kappa_gn"):
        text += (" kappa_gn = the same median for the Gauss-Newton matrix J^T H_z J on the "
                 "horizontal space (positive semidefinite, so defined wherever it is not "
                 "singular; kappa_gn_seeds counts those seeds). Both are ratios of Lanczos Ritz "
                 "values after a fixed number of steps: lower bounds of the true ratios, "
                 "comparable between methods measured alike.")
    return text


def _hosts_sentence(table: pd.DataFrame) -> str:
    """Where the reported runs executed (`reporting_hosts`), in words."""
    if "hosts" not in table:
        return ""
    hosts = sorted({h for cell in table["hosts"].fillna("") for h in cell.split("; ") if h})
    unstated = int(pd.to_numeric(table["hosts_unstated"], errors="coerce").fillna(0).sum())
    if not hosts and not unstated:
        return ""
    text = ""
    if hosts:
        text = (f" Its reported runs executed on {len(hosts)} processor"
                f"{'s' * (len(hosts) != 1)} (`meta.host`: {'; '.join(hosts)})")
        text += f"; {unstated} more predate that record." if unstated else "."
    else:
        text = (f" Its {unstated} reported runs predate `meta.host`: where they executed is not "
                "recorded.")
    if len(hosts) > 1:
        text += (" The same run re-executed on another processor drifts in floating point, which "
                 "training amplifies: a paired comparison whose arms ran on different processors "
                 "carries that spread too.")
    return text


PROTOCOL = (
    "Protocol: per method, among the configurations run with the most seeds (with a grid on the "
    "tuning seed and more seeds at its best, that best), the one with the lowest final eval loss "
    "on the tuning seed, then over all its seeds; a diverged or failed seed counts as +inf, so a "
    "configuration where a seed diverged is never chosen over one where none did (n_diverged: "
    "diverged runs of the chosen configuration). Each row reports its loss at that configuration "
    "on the seeds listed (a diverged one is marked \"(diverged)\" and counts as +inf: the row's "
    "mean is then inf; std is over the seeds that finished). Comparisons with the baseline are "
    "paired by seed (seed s of every method sees the same batches, so the seed-to-seed variance "
    "cancels): "
    "delta = mean over seeds of (method - baseline), negative = the method has the lower loss; "
    f"[ci_low, ci_high] = the {CONFIDENCE:.0%} interval of delta from the t distribution of the "
    "paired differences (n - 1 degrees of freedom); p = the two-sided paired t-test; n = the "
    "paired seeds. When the two arms neither have the same seeds nor share at least "
    f"{MIN_SEEDS}, test = welch: Welch's unpaired t-test on each arm's seeds, n = the smaller "
    "arm. The interval and p use the seeds both arms finished; a seed where only one arm "
    "diverged makes delta +inf (the method diverged) or -inf (the baseline did). p_holm = "
    "Holm's step-down adjustment of p over all comparisons of this table (monotone, capped at "
    f"1); conclusive = yes when p_holm < {ALPHA} with n >= {MIN_SEEDS} and no diverged seed "
    f"points the other way, n/a when n < {MIN_SEEDS} (too few seeds for a verdict, whatever p "
    "says), else no; detectable = the smallest difference this design detects with "
    f"{POWER:.0%} power at the two-sided level Holm's procedure holds this comparison to in this "
    f"table ({ALPHA} / (m - i + 1) for the comparison with the i-th smallest of m p-values), "
    "from n and the observed spread (noncentral t), so \"no\" reads as \"no difference larger "
    "than detectable\": a table with more comparisons detects less. edge = the best value is "
    "the lowest or highest of >= 3 values tried, or (key@steps) of those rerun at the reporting "
    "budget while the grid tried more beyond it. near_ties = the other configurations whose "
    "mean over the tuning seeds is at most the chosen one's plus its tuning seeds' spread "
    "(max - min; with one tuning seed only an exact tie), with their difference: choices the "
    "tuning seeds cannot tell apart. tokens_per_param = the reported runs' tokens (steps x "
    "batch x sequence length) / their trainable parameters: the scale the row is measured at."
)


def summary_table(df: pd.DataFrame, selection: Selection | None = None) -> pd.DataFrame:
    """Every run of a sweep, whatever its status: one row each; `tuned` marks the runs of each
    method's chosen configuration (per table row)."""
    df = lm_runs(df)
    if len(df) and selection is None:
        selection = select_sweep(df)
    chosen = {i for c in selection.choices.values() for i in c.run_ids} if len(df) else set()
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


def write_summary(df: pd.DataFrame, figures: str | Path, sweep: str,
                  selection: Selection | None = None) -> list[Path]:
    """``figures/<sweep>_summary.md``."""
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    path = figures / f"{sweep}_summary.md"
    table = summary_table(df, selection)
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    path.write_text(
        f"# {sweep}: every run\n\n{len(table)} runs ({status}). `tuned` marks the runs at each "
        "method's tuned hyperparameters, per table row where the study splits its methods into "
        "rows (`study.rows`): the runs the figures show.\n\n"
        + markdown_table(table) + "\n"
    )
    return [path]


def compared(table: pd.DataFrame | None) -> dict[str, str]:
    """method -> baseline for each row of a tuned table compared with its baseline."""
    if table is None or table.empty or "test" not in table:
        return {}
    rows = table[table["test"].fillna("").ne("") & table["baseline"].isin(table["method"])]
    return dict(zip(rows["method"], rows["baseline"]))


SOURCE_METRIC = "eval/loss_source"  # fine-tuning runs also evaluate the pretraining domain


def source_levels(selection: Selection, curves: pd.DataFrame, table: pd.DataFrame
                  ) -> pd.DataFrame:
    """Forgetting: per method of a tuned table, its pretraining domain's validation loss
    (`SOURCE_METRIC`, which fine-tuning runs log at every evaluation) at its chosen
    configuration, the mean over the seeds its row reports at its first and last evaluated step,
    and for a compared method its paired difference to the baseline at that last step, "mean
    [95% t interval]" (analysis.verdict.paired_deltas, n - 1 df). Empty where no run logged it."""
    from analysis.verdict import paired_deltas, seed_curves

    if not (curves["metric"] == SOURCE_METRIC).any():
        return pd.DataFrame()
    deltas = paired_deltas(selection, curves, compared(table), SOURCE_METRIC)
    rows = []
    for row in table[table["seeds"].fillna("").ne("")].itertuples():
        v = seed_curves(selection, curves, row.method, SOURCE_METRIC).dropna(how="all")
        if v.empty:  # (steps, seeds)
            continue
        d = deltas.get(row.method, pd.DataFrame())
        last = d[d["n"] >= 2].iloc[-1] if len(d) and (d["n"] >= 2).any() else None
        vs = ("baseline" if row.method == row.baseline else "" if last is None else
              interval(last["mean"], last["low"], last["high"]))
        rows.append({"method": row.method, "baseline": row.baseline, "seeds": v.shape[1],
                     "first step": f"{int(v.index[0])}: {v.iloc[0].mean():.3f}",
                     "last step": f"{int(v.index[-1])}: {v.iloc[-1].mean():.3f}",
                     "- baseline at the last step [95% t CI]": vs})
    return pd.DataFrame(rows)


BUDGET_FRACTIONS = (0.25, 0.5, 1.0)


def budget_table(deltas: dict[str, pd.DataFrame], baselines: pd.Series) -> pd.DataFrame:
    """Per compared method, its paired difference to the baseline (`analysis.verdict.
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
    (`source_levels`) where fine-tuning runs logged it) and
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
