"""Performance profiles and AlgoPerf's benchmark score across a study's problems.

Definitions (Dolan and More, "Benchmarking optimization software with performance profiles",
Math. Programming 91, 2002; as AlgoPerf scores its training-algorithm track: MLCommons AlgoPerf
Technical Documentation, "Benchmark score using performance profiles", v0.6.0,
https://github.com/mlcommons/algorithmic-efficiency/blob/main/docs/DOCUMENTATION.md):

- a *problem* p is one table row of the study (a value of its `study.rows`, such as a rank r,
  a schedule, a model size or a budget there; the study itself where it has no rows) at one
  budget of `BUDGETS`: 25%, 50% and 100% of that row's last evaluated step;
- the *cost* c(m, p) of method m on p is a loss at its selected configuration, over the seeds
  its tuned-table row reports: at 100%, the row's reported loss (the tuned table's `mean`, the
  test loss where the records have one); at 25% and 50%, the mean over those seeds of the
  validation loss (`eval/loss`) at the evaluated step nearest that fraction. A method that
  diverged (a seed at +inf), has no value there, or did not run that row costs +inf;
- the *performance ratio* r(m, p) = c(m, p) / min over methods m' of c(m', p), in [1, inf];
- the *performance profile* rho_m(tau) = (1 / n) #{p : r(m, p) <= tau}, n problems: the
  fraction of problems where m is within a factor tau of the best method on that problem;
- the *benchmark score* B_m = 1 / (r_max - 1) * integral from 1 to r_max of rho_m(tau) dtau with
  r_max = 4 (AlgoPerf's upper limit and normalisation, so B is in [0, 1], 1 = best on every
  problem). rho_m is a step function, so the integral is exact:
  B_m = (1 / n) sum_p max(0, r_max - r(m, p)) / (r_max - 1).

AlgoPerf's cost is the time to reach a target; ours is the loss itself (as issue 30 asks), so a
ratio is 1 + the relative loss gap: the losses of these studies differ by a few percent, every
ratio lies near 1 and every score near 1. The score still ranks the methods, and the figure
draws tau over the ratios that occur; read the per-problem ratios in `<sweep>_profile.md`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.markdown import markdown_table
from analysis.selection import Selection, row_order

BUDGETS = (0.25, 0.5, 1.0)  # fractions of a row's last evaluated step; 1.0: the reported loss
R_MAX = 4.0  # AlgoPerf's r_max
METRIC = "eval/loss"


def ratios(costs: pd.DataFrame) -> pd.DataFrame:
    """(method x problem) performance ratios of a (method x problem) cost table: each cost over
    the problem's least cost; +inf for an infinite or missing cost. A problem whose least
    cost is not a positive finite number has no ratios and is dropped."""
    costs = costs.astype(float).where(costs.notna(), math.inf)
    best = costs.min(axis=0)
    usable = best[(best > 0) & np.isfinite(best)].index
    return costs[usable] / best[usable]


def profile(r: pd.DataFrame, taus) -> pd.DataFrame:
    """(method x tau) rho_m(tau): the fraction of the problems (columns of `r`) whose ratio is
    <= tau."""
    n = r.shape[1]
    values = {tau: (r <= tau).sum(axis=1) / n for tau in taus}
    return pd.DataFrame(values, index=r.index)


def benchmark_score(r: pd.DataFrame, r_max: float = R_MAX) -> pd.Series:
    """B_m = 1/(r_max - 1) * integral_1^r_max rho_m(tau) dtau, exactly: the mean over problems
    of max(0, r_max - r) / (r_max - 1)."""
    gain = (r_max - r.clip(lower=1.0)).clip(lower=0.0)
    return (gain.mean(axis=1) / (r_max - 1)).rename("score")


def problem_costs(selection: Selection, table: pd.DataFrame, curves: pd.DataFrame
                  ) -> pd.DataFrame:
    """(method without its row x problem) costs of a sweep (module docstring); problems are
    named "<row> @<budget>" ("r=4 @25%"; "@100%" alone without rows)."""
    from analysis.verdict import seed_curves

    listed = table[table["seeds"].fillna("").ne("")]
    cells: dict[tuple[str, str], float] = {}
    rows = {method: str(selection.chosen(method)["row"].iloc[0]).strip()
            for method in listed["method"]}
    for row in sorted(set(rows.values()), key=row_order):
        methods = [m for m in listed["method"] if rows[m] == row]
        curves_of = {m: seed_curves(selection, curves, m, METRIC).dropna(how="all")
                     for m in methods} if (curves["metric"] == METRIC).any() else {}
        last = max((float(c.index.max()) for c in curves_of.values() if len(c)), default=None)
        for fraction in BUDGETS:
            name = f"{row + ' ' if row else ''}@{fraction:.0%}"
            for method in methods:
                base = selection.base(method)
                if fraction == 1.0:
                    cells[base, name] = float(listed.set_index("method").at[method, "mean"])
                elif last is not None:
                    cells[base, name] = _cost_at(curves_of[method], fraction * last)
    if not cells:
        return pd.DataFrame()
    series = pd.Series(cells)
    costs = series.unstack()
    budgets = [f"@{f:.0%}" for f in BUDGETS]
    order = sorted(costs.columns, key=lambda p: (row_order(p.rsplit("@", 1)[0].strip()),
                                                 budgets.index("@" + p.rsplit("@", 1)[1])))
    return costs[order]


def _cost_at(values: pd.DataFrame, step: float) -> float:
    """Mean over seeds of (step x seed) `values` at the evaluated step nearest `step`; +inf
    where a seed has no finite value there (it diverged before) or nothing was evaluated."""
    if values.empty:
        return math.inf
    at = values.iloc[int(np.abs(values.index.to_numpy(dtype=float) - step).argmin())]
    at = at.to_numpy(dtype=float)
    return float(at.mean()) if np.isfinite(at).all() else math.inf


def profile_table(costs: pd.DataFrame) -> pd.DataFrame:
    """Per method, best score first: its benchmark score, the problems where it is the best
    (r = 1), its worst ratio, and its ratio on each problem (a column named by the problem)."""
    r = ratios(costs)
    score = benchmark_score(r)
    out = pd.DataFrame({"method": r.index, "score": score.to_numpy(),
                        "best on": (r == 1.0).sum(axis=1).to_numpy(),
                        "worst ratio": r.max(axis=1).to_numpy()})
    out = pd.concat([out, r.reset_index(drop=True)], axis=1)  # a column per problem: its r
    return out.sort_values(["score", "method"], ascending=[False, True]).reset_index(drop=True)


EXPLAIN = (
    "Performance profiles (Dolan and More 2002) with AlgoPerf's benchmark score (MLCommons "
    "AlgoPerf technical documentation, \"Benchmark score using performance profiles\"). A "
    "problem is a table row at a budget (25%, 50% and 100% of its last evaluated step); a "
    "method's cost there is its loss at its selected configuration over the seeds its row "
    "reports (at 100% the tuned table's reported loss, before that the mean validation loss at "
    "that step; a divergence, or no run of that row, costs inf). r = cost / the least cost of "
    "any method on that problem; rho(tau) = the fraction of problems with r <= tau; score = "
    "integral of rho over tau in [1, 4] / 3 (1: best on every problem). Losses differ by a few "
    "percent, so ratios lie near 1 and scores near 1: they rank, the ratios say by how much. "
    "The columns after `worst ratio` are the problems, each cell its r.")


def write_profiles(selection: Selection | None, table: pd.DataFrame | None,
                   curves: pd.DataFrame, figures: str | Path, sweep: str) -> list[Path]:
    """``<sweep>_profile.md`` and ``.csv`` (the ratios) and the figure
    ``<sweep>_performance_profile``; [] with fewer than 2 methods or no problem."""
    if selection is None or table is None or table.empty:
        return []
    costs = problem_costs(selection, table, curves)
    if costs.empty or len(costs) < 2 or ratios(costs).shape[1] == 0:
        return []
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    shown = profile_table(costs)
    r = ratios(costs)
    csv = figures / f"{sweep}_profile.csv"
    long = costs.stack().rename("cost").reset_index()
    long.columns = ["method", "problem", "cost"]
    long["ratio"] = [r.at[m, p] if p in r.columns else math.nan
                     for m, p in zip(long["method"], long["problem"])]
    long.to_csv(csv, index=False)
    md = figures / f"{sweep}_profile.md"
    md.write_text(f"# {sweep}: performance profiles and benchmark score\n\n"
                  + markdown_table(shown) + "\n\n" + EXPLAIN + f" Data: `{csv.name}`.\n")
    return [md, csv, *draw_profile(r, benchmark_score(r), figures, sweep)]


STYLES = ("-", "--", "-.", ":")


def draw_profile(r: pd.DataFrame, score: pd.Series, figures: Path, sweep: str) -> list[Path]:
    """``<sweep>_performance_profile``: rho_m(tau) of each method as a step curve (a marker
    at each of its ratios), tau from 1 to just past the largest finite ratio (at most r_max),
    the legend outside the axes, best score first, with each score."""
    from analysis.plots import method_colors, plt, save

    finite = r.to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    top = min(R_MAX, max(1.0 + 1e-3, float(finite.max()) if finite.size else 1.0))
    xmax = 1.0 + 1.05 * (top - 1.0)
    colors = method_colors(r.index)
    order = score.sort_values(ascending=False, kind="stable").index
    fig, ax = plt.subplots(figsize=(8.5, 4.6))
    n = r.shape[1]
    for k, method in enumerate(order):
        values = np.sort(r.loc[method].to_numpy(dtype=float))
        steps = values[np.isfinite(values) & (values <= xmax)]
        xs = np.concatenate([[1.0], steps, [xmax]])
        ys = np.array([(values <= x).sum() / n for x in xs])
        ax.step(xs, ys, where="post", color=colors[method], ls=STYLES[k % len(STYLES)],
                lw=1.5, label=f"{method}   score {score[method]:.4f}")
        ax.plot(steps, [(values <= x).sum() / n for x in steps], ls="none", marker="o", ms=3,
                color=colors[method])
    ax.set_xlim(1.0, xmax)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("tau: loss / the best method's loss on the problem")
    ax.set_ylabel(f"fraction of the {n} problems within tau")
    ax.set_title(f"{sweep}: performance profiles (score: integral over tau in [1, {R_MAX:g}], "
                 "normalised)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return save(fig, figures, f"{sweep}_performance_profile")
