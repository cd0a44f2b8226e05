"""Figures of one sweep, drawn from the run table and the curves only.

Each figure is a function ``(runs, curves, figures, sweep, **options) -> list[Path]`` registered
in ``FIGURES`` with ``@figure("name")``; it writes ``<figures>/<sweep>_<name>.png`` and ``.pdf`` and
returns the paths, or returns [] when the sweep has nothing to show for it. Curves are drawn at
each method's tuned hyperparameters (mean over seeds and min-max band); a diverged or failed run is
drawn dashed up to its last logged point and marked there with an x, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import ticker, transforms  # noqa: E402

from analysis.records import BAD_STATUSES, lm_runs  # noqa: E402
from analysis.tuning import best_config, best_runs, config_label  # noqa: E402

FIGURES: dict[str, Callable[..., list[Path]]] = {}


def figure(name: str):
    """Register a figure function under ``name`` (its files are ``<sweep>_<name>.png/.pdf``)."""
    def register(fn):
        FIGURES[name] = fn
        fn.figure_name = name
        return fn
    return register


def draw_sweep(runs: pd.DataFrame, curves: pd.DataFrame, figures: str | Path, sweep: str,
               **options) -> list[Path]:
    """Every registered figure of one sweep; the paths written."""
    written = []
    for fn in FIGURES.values():
        written += fn(runs, curves, Path(figures), sweep, **options)
    return written


def save(fig, figures: Path, stem: str) -> list[Path]:
    figures.mkdir(parents=True, exist_ok=True)
    paths = [figures / f"{stem}.png", figures / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def method_colors(methods) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(sorted(methods))}


def pivot(curves: pd.DataFrame, run_ids, metric: str, column: str = "value") -> pd.DataFrame:
    """(step x run) table of one metric's ``column`` (value, wall_s or tokens)."""
    rows = curves[(curves["metric"] == metric) & curves["run_id"].isin(list(run_ids))]
    rows = rows.drop_duplicates(["run_id", "step"], keep="last")
    return rows.pivot(index="step", columns="run_id", values=column).sort_index()


def loss_metric(curves: pd.DataFrame) -> str:
    return "eval/loss" if (curves["metric"] == "eval/loss").any() else "train/loss"


def _xy(curves, run_ids, metric, x) -> tuple[pd.Series, pd.DataFrame]:
    """x values (step, or mean wall clock over seeds at each step) and the (step x run) metric."""
    values = pivot(curves, run_ids, metric)
    if x == "step":
        return pd.Series(values.index, index=values.index, dtype=float), values
    return pivot(curves, run_ids, metric, x).mean(axis=1).reindex(values.index), values


def _band(ax, xs, values, color, label, logy=False):
    """Mean over seeds with a min-max band."""
    ok = values.notna().any(axis=1) & xs.notna()
    xs, values = xs[ok], values[ok]
    if values.empty:
        return
    ax.plot(xs, values.mean(axis=1), color=color, label=label, lw=1.6)
    if values.shape[1] > 1:
        ax.fill_between(xs, values.min(axis=1), values.max(axis=1), color=color, alpha=0.2, lw=0)


def _mark_failures(ax, curves, runs, metric, x, color, method) -> list[tuple]:
    """Dashed curve + x at the last logged point of each diverged/failed run; the unplaced."""
    bad = runs[runs["status"].isin(BAD_STATUSES)]
    unplaced, placed = [], []
    for run in bad.itertuples():
        point = None
        for name in (metric, "train/loss"):
            rows = curves[(curves["run_id"] == run.run_id) & (curves["metric"] == name)]
            rows = rows[np.isfinite(rows["value"]) & rows[x].notna()].sort_values("step")
            if not rows.empty:
                if name == metric:
                    ax.plot(rows[x], rows["value"], color=color, ls="--", lw=0.9, alpha=0.7)
                point = (rows[x].iloc[-1], rows["value"].iloc[-1])
                break
        if point is None:
            unplaced.append((run, color))
        else:
            placed.append(point)
    counts = bad["status"].value_counts()
    label = f"{method}: " + ", ".join(f"{s} ({n})" for s, n in counts.items())
    if placed:
        xs, ys = zip(*placed)
        ax.scatter(xs, ys, marker="x", s=70, color=color, zorder=5, label=label)
    elif unplaced:
        ax.scatter([], [], marker="x", s=70, color=color, label=label)
    return unplaced


def _place_at_top(ax, unplaced, x):
    """Runs that diverged before logging anything: an x at the top edge, at their last step."""
    transform = transforms.blended_transform_factory(ax.transData, ax.transAxes)
    for run, color in unplaced:
        step = next((v for v in (run.diverged_step, run.steps) if pd.notna(v)), 0)
        at = step if x == "step" else 0
        ax.scatter([at], [0.97], marker="x", s=70, color=color, transform=transform, zorder=5,
                   clip_on=False)


def _log_y(ax):
    """Log scale with plain tick labels (a loss spans less than a decade)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.3g"))
    ax.tick_params(axis="y", which="minor", labelsize=7)


def _loss_figure(runs, curves, figures, sweep, x, logy=False, **_):
    lm = lm_runs(runs)
    curves = curves[curves["run_id"].isin(lm["run_id"])]
    if lm.empty or curves.empty or (x != "step" and curves[x].isna().all()):
        return []
    metric = loss_metric(curves)
    shown = best_runs(lm)
    colors = method_colors(lm["method"].unique())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    unplaced = []
    for method, group in shown.groupby("method", sort=True):
        chosen = best_config(lm[lm["method"] == method])
        good = group[~group["status"].isin(BAD_STATUSES)]
        hyper = config_label(chosen["keys"], chosen["values"].values())
        label = f"{method} ({hyper + '; ' if hyper else ''}{len(good)} seeds)"
        if len(good):
            xs, values = _xy(curves, good["run_id"], metric, x)
            _band(ax, xs, values, colors[method], label)
        unplaced += _mark_failures(ax, curves, group, metric, x, colors[method], method)
    _place_at_top(ax, unplaced, x)
    if logy and (curves.loc[curves["metric"] == metric, "value"] > 0).all():
        _log_y(ax)
    ax.set_xlabel("step" if x == "step" else "wall clock (s)")
    ax.set_ylabel(metric)
    ax.set_title(f"{sweep}: {metric} at each method's tuned hyperparameters")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    _footnote(fig, lm, shown, sweep)
    return save(fig, figures, f"{sweep}_loss_vs_{'step' if x == 'step' else 'time'}")


def _footnote(fig, lm, shown, sweep):
    others = lm[~lm["run_id"].isin(shown["run_id"])]
    if others.empty:
        return
    bad = others["status"].isin(BAD_STATUSES).sum()
    fig.text(0.01, -0.02, f"not shown: {len(others)} runs at other hyperparameters ({bad} diverged"
             f" or failed); every run is listed in {sweep}_summary.md", fontsize=7, ha="left",
             va="top")


@figure("loss_vs_step")
def loss_vs_step(runs, curves, figures, sweep, **options):
    return _loss_figure(runs, curves, figures, sweep, "step", **options)


@figure("loss_vs_time")
def loss_vs_time(runs, curves, figures, sweep, **options):
    return _loss_figure(runs, curves, figures, sweep, "wall_s", **options)


@figure("steps_to_target")
def steps_to_target(runs, curves, figures, sweep, **_):
    """Bar per method: mean steps to the target eval loss over the seeds that reached it."""
    lm = lm_runs(runs)
    if lm.empty or lm["steps_to_target"].isna().all():
        return []
    shown = best_runs(lm)
    colors = method_colors(lm["method"].unique())
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * shown["method"].nunique() + 2), 4))
    for i, (method, group) in enumerate(shown.groupby("method", sort=True)):
        reached = group["steps_to_target"].dropna().to_numpy(dtype=float)
        if len(reached):
            mean = reached.mean()
            err = [[mean - reached.min()], [reached.max() - mean]]
            ax.bar(i, mean, color=colors[method], alpha=0.7, yerr=err, capsize=4)
            ax.scatter(np.full(len(reached), i), reached, color="k", s=12, zorder=3)
        ax.annotate(f"{len(reached)}/{len(group)}", (i, 0), xytext=(0, 3),
                    textcoords="offset points", ha="center", fontsize=8)
    ax.set_xticks(range(shown["method"].nunique()))
    ax.set_xticklabels(sorted(shown["method"].unique()), rotation=30, ha="right", fontsize=8)
    # The resolved target (analysis/targets.py: a number, or the sweep's baseline loss).
    target = lm["target_loss"].dropna().unique() if "target_loss" in lm else []
    where = f" (eval loss {target[0]:.4g})" if len(target) == 1 else ""
    ax.set_ylabel(f"steps to target{where}")
    ax.set_title(f"{sweep}: steps to target; k/n = seeds that reached it")
    ax.grid(alpha=0.3, axis="y")
    return save(fig, figures, f"{sweep}_steps_to_target")


def _metric_vs_step(runs, curves, figures, sweep, metric, stem, ylabel):
    lm = lm_runs(runs)
    curves = curves[curves["run_id"].isin(lm["run_id"]) & (curves["metric"] == metric)]
    if curves.empty:
        return []
    shown = best_runs(lm)
    colors = method_colors(lm["method"].unique())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, group in shown.groupby("method", sort=True):
        if not curves["run_id"].isin(group["run_id"]).any():
            continue
        xs, values = _xy(curves, group["run_id"], metric, "step")
        _band(ax, xs, values, colors[method], f"{method} ({len(group)} seeds)")
    if (curves["value"] > 0).all():
        _log_y(ax)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{sweep}: {metric} at each method's tuned hyperparameters")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return save(fig, figures, f"{sweep}_{stem}")


@figure("kappa_vs_step")
def kappa_vs_step(runs, curves, figures, sweep, **_):
    return _metric_vs_step(runs, curves, figures, sweep, "cond/kappa", "kappa_vs_step",
                           "condition number kappa")


@figure("sharpness_vs_step")
def sharpness_vs_step(runs, curves, figures, sweep, **_):
    return _metric_vs_step(runs, curves, figures, sweep, "sharpness/lambda_max",
                           "sharpness_vs_step", "sharpness (largest Hessian eigenvalue)")


@figure("balora_gap_vs_step")
def balora_gap_vs_step(runs, curves, figures, sweep, **_):
    return _metric_vs_step(runs, curves, figures, sweep, "balora/gap", "balora_gap_vs_step",
                           "balance gap ||B^T B - A A^T||_F")


@figure("lr_scale_heatmap")
def lr_scale_heatmap(runs, curves, figures, sweep, **_):
    """Mean final eval loss over seeds on the grid learning rate x alpha/r, one panel per method
    that swept both (BaLoRA paper Fig. 4). A cell where any seed diverged or failed reads "div."."""
    lm = lm_runs(runs)
    needed = {"optimizer.lr", "adapter.alpha", "adapter.r", "final_eval_loss"}
    if lm.empty or not needed <= set(lm.columns):
        return []
    lm = lm.assign(scale=lm["adapter.alpha"] / lm["adapter.r"],
                   bad=lm["status"].isin(BAD_STATUSES))
    panels = [m for m, g in lm.groupby("method")
              if g["optimizer.lr"].nunique() > 1 and g["scale"].nunique() > 1]
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    vmin, vmax = lm["final_eval_loss"].min(), lm["final_eval_loss"].quantile(0.9)
    for ax, method in zip(axes[0], panels):
        g = lm[lm["method"] == method]
        mean = g.pivot_table(index="scale", columns="optimizer.lr", values="final_eval_loss",
                             aggfunc="mean")
        bad = g.pivot_table(index="scale", columns="optimizer.lr", values="bad", aggfunc="any")
        image = ax.imshow(mean.to_numpy(dtype=float), origin="lower", cmap="viridis_r",
                          vmin=vmin, vmax=vmax, aspect="auto")
        for (i, j), value in np.ndenumerate(mean.to_numpy(dtype=float)):
            failed = bool(bad.to_numpy()[i, j])
            text = "div." if failed or not np.isfinite(value) else f"{value:.3f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=6,
                    color="red" if failed else "white")
        ax.set_xticks(range(mean.shape[1]), [f"{v:g}" for v in mean.columns], rotation=45)
        ax.set_yticks(range(mean.shape[0]), [f"{v:g}" for v in mean.index])
        ax.set_xlabel("learning rate")
        ax.set_ylabel("alpha / r")
        ax.set_title(method, fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), label="final eval loss (mean over seeds)")
    fig.suptitle(f"{sweep}: final eval loss over learning rate x alpha/r", fontsize=10)
    return save(fig, figures, f"{sweep}_lr_scale_heatmap")
