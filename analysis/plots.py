"""Figures of one sweep, drawn from the run table and the curves only.

Each figure is a function ``(runs, curves, figures, sweep, **options) -> list[Path]`` registered
in ``FIGURES`` with ``@figure("name")``; it writes ``<figures>/<sweep>_<name>.png`` and ``.pdf`` and
returns the paths, or returns [] when the sweep has nothing to show for it. Curves are drawn at
each method's tuned hyperparameters over the seeds its table row reports (`chosen_runs`, once
per sweep: the tuning seeds left out where the sweep tuned; mean over seeds and min-max band,
the median for condition numbers); a diverged or failed run is drawn dashed up to its last
logged point and marked there with an x, never dropped. The loss
figures have a second panel zoomed on the late phase (the last half of the x range) and their
legend below the panels. Where a study splits its methods into table rows (`study.rows`:
balora_rank's r, riemannian_attention's LR schedule), every per-step figure draws each row in
its own panels (`row_panels`), each method at that row's tuned configuration.
``delta_vs_step`` (not registered: it needs the sweep's tuned table, so ``python -m analysis``
calls it) draws the budget figure ``<sweep>_delta_vs_step``: each
method's paired difference to its baseline at every evaluated step with its 95% t band.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import patches, ticker, transforms  # noqa: E402

from analysis.records import BAD_STATUSES, lm_runs, pivot  # noqa: E402
from analysis.selection import Selection, row_order, select_sweep, split_rows  # noqa: E402

FIGURES: dict[str, Callable[..., list[Path]]] = {}


def figure(name: str):
    """Register a figure function under ``name`` (its files are ``<sweep>_<name>.png/.pdf``)."""
    def register(fn):
        FIGURES[name] = fn
        fn.figure_name = name
        return fn
    return register


def draw_sweep(runs: pd.DataFrame, curves: pd.DataFrame, figures: str | Path, sweep: str,
               selection: Selection | None = None, **options) -> list[Path]:
    """Every registered figure of one sweep; the paths written. The runs each figure draws
    (every method's chosen configuration, analysis.selection) are chosen once, for all."""
    written = []
    chosen = (selection if selection is not None else select_sweep(runs)).chosen_runs()
    for fn in FIGURES.values():
        written += fn(runs, curves, Path(figures), sweep, chosen=chosen, **options)
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


def loss_metric(curves: pd.DataFrame) -> str:
    return "eval/loss" if (curves["metric"] == "eval/loss").any() else "train/loss"


def _xy(curves, run_ids, metric, x) -> tuple[pd.Series, pd.DataFrame]:
    """x values (step, or mean wall clock over seeds at each step) and the (step x run) metric."""
    values = pivot(curves, run_ids, metric)
    if x == "step":
        return pd.Series(values.index, index=values.index, dtype=float), values
    return pivot(curves, run_ids, metric, x).mean(axis=1).reindex(values.index), values


def _band(ax, xs, values, color, label, center="mean"):
    """The mean (or median) over seeds with a min-max band; a curve of one point (a measurement
    made once, at the end of each run) is a marker with its min-max as an error bar. Returns
    the artist drawn (for a legend), None where nothing was."""
    ok = values.notna().any(axis=1) & xs.notna()
    xs, values = xs[ok], values[ok]
    if values.empty:
        return
    line = values.median(axis=1) if center == "median" else values.mean(axis=1)
    if len(line) == 1:
        low, high = values.min(axis=1).iloc[0], values.max(axis=1).iloc[0]
        mid = line.iloc[0]
        return ax.errorbar(xs, line, yerr=[[mid - low], [high - mid]], color=color,
                           label=label, marker="o", ms=5, capsize=3, lw=1.6, ls="none")
    (drawn,) = ax.plot(xs, line, color=color, label=label, lw=1.6)
    if values.shape[1] > 1:
        ax.fill_between(xs, values.min(axis=1), values.max(axis=1), color=color, alpha=0.2, lw=0)
    return drawn


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


LATE = 0.5  # the zoomed panel of the loss figures shows the last LATE of the x range


def _late_limits(drawn, cutoff) -> tuple[float, float] | None:
    """y limits of the late panel: min and max over seeds of every drawn curve at x >= cutoff."""
    lows, highs = [], []
    for xs, values in drawn:
        late = values[(xs >= cutoff).to_numpy()].to_numpy(dtype=float)
        late = late[np.isfinite(late)]
        if late.size:
            lows.append(late.min())
            highs.append(late.max())
    if not lows:
        return None
    low, high = min(lows), max(highs)
    pad = 0.05 * (high - low) or 0.01 * abs(high) or 0.01
    return low - pad, high + pad


def row_panels(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The language-model runs as (table row, its runs) panels, in the order of the rows' values:
    each method named per row (`split_rows`), with column `base` = the method's own name, so a
    figure colours a method alike in every panel. One panel ("", every run) without study.rows."""
    lm = lm_runs(runs)
    lm = split_rows(lm.assign(base=lm["method"]))
    return [(row.strip(), lm[lm["row"] == row])
            for row in sorted(lm["row"].unique(), key=row_order)]


def _loss_figure(runs, curves, figures, sweep, x, logy=False, chosen=None, **_):
    """Two panels: the whole run, and the late phase (the last LATE of the x range) zoomed on
    the curves there; the legend outside the curves (below both, or right of each row's pair
    where the study splits its methods into table rows: a pair of panels per row)."""
    lm = lm_runs(runs)
    curves = curves[curves["run_id"].isin(lm["run_id"])]
    if lm.empty or curves.empty or (x != "step" and curves[x].isna().all()):
        return []
    metric = loss_metric(curves)
    panels = row_panels(lm)
    chosen = select_sweep(lm).chosen_runs() if chosen is None else chosen
    reported = set(chosen.loc[chosen["reported"], "run_id"])
    config = dict(zip(chosen["run_id"], chosen["config"]))
    colors = method_colors(lm["method"].unique())
    if len(panels) == 1:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]},
                                 squeeze=False)
    else:  # a row of (whole run, late phase, legend) per table row
        fig, axes = plt.subplots(len(panels), 3, figsize=(17, 3.4 * len(panels)),
                                 gridspec_kw={"width_ratios": [3, 2, 2.6]}, squeeze=False)
    xlabel = "step" if x == "step" else "wall clock (s)"
    shown_all, handles, labels = [], [], []
    for (row, rows_lm), (ax, late, *key) in zip(panels, axes):
        shown = rows_lm[rows_lm["run_id"].isin(reported)]
        shown_all.append(shown)
        unplaced, drawn = [], []
        for _, group in shown.groupby("method", sort=True):
            base = group["base"].iloc[0]
            good = group[~group["status"].isin(BAD_STATUSES)]
            hyper = config[group["run_id"].iloc[0]]
            label = f"{base} ({hyper + '; ' if hyper else ''}{len(good)} seeds)"
            if len(good):
                xs, values = _xy(curves, good["run_id"], metric, x)
                _band(ax, xs, values, colors[base], label)
                _band(late, xs, values, colors[base], None)
                drawn.append((xs, values))
            unplaced += _mark_failures(ax, curves, group, metric, x, colors[base], base)
        _place_at_top(ax, unplaced, x)
        if logy and (curves.loc[curves["metric"] == metric, "value"] > 0).all():
            _log_y(ax)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.set_title(f"{row}: {metric}" if row else
                     f"{sweep}: {metric} at each method's tuned hyperparameters", fontsize=9)
        ax.grid(alpha=0.3)
        xmax = max((float(xs.max()) for xs, _ in drawn if xs.notna().any()), default=None)
        if xmax is not None and xmax > 0:
            xmin = min(float(xs.min()) for xs, _ in drawn if xs.notna().any())
            cutoff = xmax - LATE * (xmax - xmin)
            late.set_xlim(cutoff, xmax + 0.02 * (xmax - xmin))
            limits = _late_limits(drawn, cutoff)
            if limits:
                late.set_ylim(*limits)
            ax.axvspan(cutoff, xmax, color="tab:gray", alpha=0.08, lw=0)
        late.set_xlabel(xlabel)
        span = "steps" if x == "step" else "wall clock"
        late.set_title(f"late phase (last {LATE:.0%} of the {span}), zoomed", fontsize=9)
        late.grid(alpha=0.3)
        row_handles, row_labels = ax.get_legend_handles_labels()
        if key:  # this row's legend, in the third column: outside the curves
            key[0].axis("off")
            if row_handles:
                key[0].legend(row_handles, row_labels, fontsize=6, loc="center left",
                              frameon=False)
        handles += row_handles
        labels += row_labels
    if len(panels) > 1:  # the title in the top 0.4 inch, clear of the panels' titles
        fig.suptitle(f"{sweep}: {metric} at each method's tuned hyperparameters, per table row",
                     fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    else:
        fig.tight_layout()
    rows_below = 0
    if len(panels) == 1 and handles:
        ncol = 2 if len(handles) > 4 else 1
        fig.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=ncol, frameon=False)
        rows_below = -(-len(handles) // ncol)
    _footnote(fig, lm, pd.concat(shown_all), chosen, sweep, below=rows_below)
    return save(fig, figures, f"{sweep}_loss_vs_{'step' if x == 'step' else 'time'}")


def _footnote(fig, lm, shown, chosen, sweep, below: int = 0):
    """A line under the figure (``below``: legend rows above it) on the runs not drawn: at other
    hyperparameters, or on the tuning seeds at the `chosen` ones (`chosen_runs`)."""
    others = lm[~lm["run_id"].isin(shown["run_id"])]
    if others.empty:
        return
    tuning = others["run_id"].isin(chosen["run_id"])
    bad = others.loc[~tuning, "status"].isin(BAD_STATUSES).sum()
    seeds = ", ".join(str(int(s)) for s in sorted(others.loc[tuning, "seed"].unique()))
    fig.text(0.01, -0.02 - 0.04 * below, f"not shown: {int((~tuning).sum())} runs at other "
             f"hyperparameters ({bad} diverged or failed)"
             + (f", {int(tuning.sum())} on the tuning seed ({seeds}) at the chosen ones"
                if tuning.any() else "")
             + f"; every run is listed in {sweep}_summary.md", fontsize=7, ha="left", va="top")


@figure("loss_vs_step")
def loss_vs_step(runs, curves, figures, sweep, **options):
    return _loss_figure(runs, curves, figures, sweep, "step", **options)


@figure("loss_vs_time")
def loss_vs_time(runs, curves, figures, sweep, **options):
    return _loss_figure(runs, curves, figures, sweep, "wall_s", **options)


@figure("steps_to_target")
def steps_to_target(runs, curves, figures, sweep, chosen=None, **_):
    """Bar per method: mean steps to the target eval loss over the seeds that reached it."""
    lm = split_rows(lm_runs(runs))  # with study.rows: a bar per table row ("lora/adamw r=4")
    if lm.empty or lm["steps_to_target"].isna().all():
        return []
    chosen = select_sweep(lm).chosen_runs() if chosen is None else chosen
    shown = chosen[chosen["reported"]]
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


def _metric_vs_step(runs, curves, figures, sweep, metric, stem, ylabel, center="mean",
                    chosen=None):
    """One panel of `metric` against step at each method's tuned hyperparameters (`center`:
    the mean or median over seeds, with the min-max band; legend outside the curves), or one per
    table row where the study splits its methods into rows (`row_panels`: balora_rank's r = 4
    ... 64), a method coloured alike in every panel."""
    lm = lm_runs(runs)
    curves = curves[curves["run_id"].isin(lm["run_id"]) & (curves["metric"] == metric)]
    if curves.empty:
        return []
    panels = [(row, g) for row, g in row_panels(lm) if curves["run_id"].isin(g["run_id"]).any()]
    chosen = select_sweep(lm).chosen_runs() if chosen is None else chosen
    reported = set(chosen.loc[chosen["reported"], "run_id"])
    colors = method_colors(lm["method"].unique())
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, squeeze=False, sharey=True,
                             figsize=(7, 4.5) if len(panels) == 1 else (4.3 * cols, 3.3 * nrows))
    legend = {}
    # Measured once per run (the default sweep's estimate at the end): every method is one
    # point at the same step, so the methods, not the step, spread along x.
    once = curves.groupby("run_id")["step"].nunique().max() == 1
    for (row, rows_lm), ax in zip(panels, axes.flat):
        names = []
        for _, group in rows_lm[rows_lm["run_id"].isin(reported)].groupby("method", sort=True):
            if not curves["run_id"].isin(group["run_id"]).any():
                continue
            base = group["base"].iloc[0]
            xs, values = _xy(curves, group["run_id"], metric, "step")
            if once:
                xs = pd.Series(float(len(names)), index=xs.index)
                names.append(base)
            label = f"{base} ({len(group)} seeds)"
            drawn = _band(ax, xs, values, colors[base], label, center)
            legend.setdefault(label, drawn if drawn is not None else ax.get_lines()[-1])
        ax.set_xlabel("step")
        if once:
            steps = ", ".join(f"{int(s)}" for s in sorted(curves["step"].dropna().unique()))
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
            ax.set_xlim(-0.6, len(names) - 0.4)
            ax.set_xlabel(f"method (measured once a run, at step {steps})", fontsize=8)
        ax.grid(alpha=0.3)
        ax.set_title(row if row else f"{sweep}: {metric} at each method's tuned hyperparameters",
                     fontsize=9 if row else None)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    values = curves["value"].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    if len(values) and (values > 0).all():  # shared y: every panel
        if values.max() > 10 * values.min():  # decades apart: powers of ten label them
            axes.flat[0].set_yscale("log")
        else:
            _log_y(axes.flat[0])
    ylabel = f"{ylabel}\n({center} over seeds; band: min-max)"
    if len(panels) == 1:
        axes[0, 0].set_ylabel(ylabel)
        axes[0, 0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                          frameon=False)
    else:
        fig.supylabel(ylabel, fontsize=9)
        fig.suptitle(f"{sweep}: {metric} at each method's tuned hyperparameters, per table row",
                     fontsize=10)
        fig.tight_layout()
        fig.legend(list(legend.values()), list(legend), fontsize=7, loc="upper center",
                   bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False)
    return save(fig, figures, f"{sweep}_{stem}")


@figure("kappa_vs_step")
def kappa_vs_step(runs, curves, figures, sweep, chosen=None, **_):
    return _metric_vs_step(runs, curves, figures, sweep, "cond/kappa", "kappa_vs_step",
                           "condition number kappa", center="median", chosen=chosen)  # as tables


@figure("kappa_gn_vs_step")
def kappa_gn_vs_step(runs, curves, figures, sweep, chosen=None, **_):
    return _metric_vs_step(runs, curves, figures, sweep, "cond/gn/kappa", "kappa_gn_vs_step",
                           "Gauss-Newton condition number (Lanczos estimate)", center="median",
                           chosen=chosen)


@figure("sharpness_vs_step")
def sharpness_vs_step(runs, curves, figures, sweep, chosen=None, **_):
    return _metric_vs_step(runs, curves, figures, sweep, "sharpness/lambda_max",
                           "sharpness_vs_step", "sharpness (largest Hessian eigenvalue)",
                           chosen=chosen)


@figure("balora_gap_vs_step")
def balora_gap_vs_step(runs, curves, figures, sweep, chosen=None, **_):
    return _metric_vs_step(runs, curves, figures, sweep, "balora/gap", "balora_gap_vs_step",
                           "balance gap ||B^T B - A A^T||_F", chosen=chosen)


@figure("lr_scale_heatmap")
def lr_scale_heatmap(runs, curves, figures, sweep, **_):
    """Mean final eval loss over seeds on the grid learning rate x alpha/r, one panel per method
    that swept both at one rank (BaLoRA paper Fig. 4). A cell where any seed diverged or failed
    reads "div.". Only the grid's budget is drawn (the runs at the sweep's fewest
    trainer.max_steps): a long stage's runs would mix another budget into their cells."""
    lm = lm_runs(runs)
    needed = {"optimizer.lr", "adapter.alpha", "adapter.r", "final_eval_loss"}
    if lm.empty or not needed <= set(lm.columns):
        return []
    if "trainer.max_steps" in lm and lm["trainer.max_steps"].notna().any():
        lm = lm[lm["trainer.max_steps"] == lm["trainer.max_steps"].min()]
    scale = lm["adapter.alpha"] / lm["adapter.r"]
    if "adapter.scale" in lm:  # adapter.scale, where set, is alpha / r itself
        scale = lm["adapter.scale"].where(lm["adapter.scale"].notna(), scale)
    lm = lm.assign(scale=scale, bad=lm["status"].isin(BAD_STATUSES))
    panels = [m for m, g in lm.groupby("method")
              if g["optimizer.lr"].nunique() > 1 and g["scale"].nunique() > 1
              and g["adapter.r"].nunique() == 1]
    if not panels:
        return []
    # Panels wrap at HEATMAP_COLUMNS a row, each sized by its grid, so cells, ticks and labels
    # keep their room however many methods swept both keys.
    cols = min(HEATMAP_COLUMNS, len(panels))
    nrows = -(-len(panels) // cols)
    n_lr = max(lm.loc[lm["method"] == m, "optimizer.lr"].nunique() for m in panels)
    n_scale = max(lm.loc[lm["method"] == m, "scale"].nunique() for m in panels)
    width, height = 1.1 + 0.48 * n_lr, 1.3 + 0.3 * n_scale
    fig, axes = plt.subplots(nrows, cols, figsize=(width * cols + 1.2, height * nrows + 0.5),
                             squeeze=False, layout="constrained")
    vmin, vmax = lm["final_eval_loss"].min(), lm["final_eval_loss"].quantile(0.9)
    for k, (ax, method) in enumerate(zip(axes.flat, panels)):
        g = lm[lm["method"] == method]
        mean = g.pivot_table(index="scale", columns="optimizer.lr", values="final_eval_loss",
                             aggfunc="mean")
        bad = g.pivot_table(index="scale", columns="optimizer.lr", values="bad", aggfunc="any")
        image = ax.imshow(mean.to_numpy(dtype=float), origin="lower", cmap="viridis_r",
                          vmin=vmin, vmax=vmax, aspect="auto")
        for (i, j), value in np.ndenumerate(mean.to_numpy(dtype=float)):
            failed = bool(bad.to_numpy()[i, j])
            text = "div." if failed or not np.isfinite(value) else f"{value:.3f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=6.5,
                    color=_ink(image, value, failed), fontweight="bold" if failed else None)
        ax.set_xticks(range(mean.shape[1]), [f"{v:.4g}" for v in mean.columns], rotation=45,
                      ha="right", rotation_mode="anchor", fontsize=7)
        ax.set_yticks(range(mean.shape[0]), [f"{v:.4g}" for v in mean.index], fontsize=7)
        ax.set_xlabel("learning rate", fontsize=8)
        if k % cols == 0:
            ax.set_ylabel("alpha / r", fontsize=8)
        ax.set_title(method, fontsize=8)
    for ax in axes.flat[len(panels):]:
        fig.delaxes(ax)
    fig.colorbar(image, ax=axes.flat[:len(panels)], label="final eval loss (mean over seeds)",
                 shrink=min(1.0, 0.9 / nrows + 0.1))
    fig.suptitle(f"{sweep}: final eval loss over learning rate x alpha/r", fontsize=10)
    return save(fig, figures, f"{sweep}_lr_scale_heatmap")


HEATMAP_COLUMNS = 3  # panels a row of the heat map; more wrap to the next row


def _ink(image, value, failed: bool = False) -> str:
    """Text colour on a heat-map cell: black on a light cell, white on a dark one (relative
    luminance of its colour); a failed cell's red, dark on light and light on dark."""
    light = True
    if np.isfinite(value):
        red, green, blue, _ = image.cmap(image.norm(value))
        light = 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.45
    if failed:
        return "#b00000" if light else "#ff8080"
    return "black" if light else "white"


# ------------------------------------------------------------ paired difference vs step (budget)
def delta_vs_step(runs: pd.DataFrame, curves: pd.DataFrame, figures: str | Path, sweep: str,
                  table: pd.DataFrame | None, selection: Selection | None = None) -> list[Path]:
    """``<sweep>_delta_vs_step``: each method's paired difference to its baseline (method -
    baseline eval loss, paired by seed, over the seeds its tuned-table row reports) against
    step, with its 95% t interval band and a zero line; with < 2 paired seeds at a step only the
    mean is drawn (the legend says so). Its data and budget reading come with it
    (`analysis.tables.write_budget`). [] when the table compares nothing."""
    if table is None or table.empty or lm_runs(runs).empty:
        return []
    curves = curves[curves["run_id"].isin(lm_runs(runs)["run_id"])]
    if curves.empty:
        return []
    from analysis.tables import compared, source_levels, write_budget
    from analysis.verdict import paired_deltas

    metric = loss_metric(curves)
    selection = selection if selection is not None else select_sweep(runs)
    deltas = {m: d for m, d in paired_deltas(selection, curves, compared(table), metric).items()
              if not d.empty}
    if not deltas:
        return []
    written = write_budget(deltas, table, metric, figures, sweep,
                           source_levels(selection, curves, table))
    colors = method_colors(selection.runs["method"].unique())
    baselines = table.set_index("method")["baseline"]
    # One panel per method (shared y): ten overlapping bands are unreadable on one axis.
    cols = min(3, len(deltas))
    rows = -(-len(deltas) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 2.9 * rows + 0.6), sharex=True,
                             sharey=True, squeeze=False)
    few_any = False
    for ax, (method, d) in zip(axes.flat, sorted(deltas.items())):
        n_min, n_max = int(d["n"].min()), int(d["n"].max())
        seeds = f"{n_min}" if n_min == n_max else f"{n_min}-{n_max}"
        band = d["n"] >= 2
        note = "" if band.all() else ("; no band: < 2 paired seeds" if not band.any()
                                      else "; band where >= 2 pair")
        few_any |= not band.all()
        ax.axhline(0, color="k", lw=1)
        marker = "o" if len(d) <= 30 else None  # sparse evaluation: show where it evaluated
        ax.plot(d.index, d["mean"], color=colors[method], lw=1.6, marker=marker, ms=3)
        if band.any():
            ax.fill_between(d.index, d["low"].where(band), d["high"].where(band),
                            color=colors[method], alpha=0.25, lw=0)
        # a long "method row=value" label takes two lines, so neighbouring titles do not collide
        label = method.replace(" ", "\n", 1) if len(method) > 60 else method
        ax.set_title(f"{label}\nvs {baselines[method]} ({seeds} paired seeds{note})",
                     fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(deltas):]:
        ax.set_visible(False)
    for ax in axes.flat[:len(deltas)]:  # hidden panels below some: label every x axis
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_tick_params(labelbottom=True)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{metric}: method - baseline", fontsize=8)
    handles = [plt.Line2D([], [], color="tab:gray", lw=1.6, label="mean paired difference"),
               patches.Patch(color="tab:gray", alpha=0.25,
                                            label="95% t interval (n - 1 df)"),
               plt.Line2D([], [], color="k", lw=1, label="0: no difference (< 0: method lower)")]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3,
               fontsize=8, frameon=False)
    fig.suptitle(f"{sweep}: paired difference to the baseline vs step", fontsize=10)
    fig.tight_layout()
    caption = ("Line: mean over seeds of (method - baseline) at each evaluated step, paired by "
               "seed, over the seeds each method's tuned-table row reports, at its selected "
               "configuration. Band: 95% t interval of the paired differences.")
    if few_any:
        caption += " Where fewer than 2 seeds pair, only the mean is drawn."
    # under the one-row legend (about 0.3 inch below the figure's bottom edge)
    fig.text(0.01, -0.35 / fig.get_figheight(), caption, fontsize=7, ha="left", va="top",
             wrap=True)
    return save(fig, Path(figures), f"{sweep}_delta_vs_step") + written


def loss_vs_rows(table: pd.DataFrame | None, figures: str | Path, sweep: str,
                 selection: Selection | None = None) -> list[Path]:
    """``<sweep>_loss_vs_<key>``: for a table split by a numeric `study.rows` (balora_rank: r), each
    method's reported loss at its tuned hyperparameters against the row key's value, the mean
    over the reported seeds with its 95% t interval (analysis.verdict.mean_t). [] for a table
    without numeric rows."""
    from analysis.verdict import mean_t

    axis = selection.row_axis() if selection is not None else None
    if table is None or "row" not in table or axis is None:
        return []
    key, xs = axis
    rows = table[table["row"].notna() & table["row"].ne("")]
    if rows.empty:
        return []
    rows = rows.assign(x=rows["method"].map(xs), base=rows["method"].map(selection.base))
    colors = method_colors(rows["base"].unique())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for base, group in rows.groupby("base", sort=True):
        group = group.sort_values("x")
        n = group["n_seeds"].astype(float)
        test = mean_t(group["mean"].astype(float), group["std"].astype(float), n)
        half = np.nan_to_num(test.high - test.mean)  # 0: no interval under 2 seeds
        ax.errorbar(group["x"], group["mean"], yerr=half, color=colors[base], marker="o",
                    capsize=3, label=f"{base} ({int(n.min())}-{int(n.max())} seeds)")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.set_xticks(sorted(rows["x"].unique()))
    loss = str(table["loss"].iloc[0]) if "loss" in table else "final loss"
    ax.set_xlabel(key)
    ax.set_ylabel(f"{loss} at the tuned hyperparameters")
    ax.set_title(f"{sweep}: {loss} against {key} (mean, 95% t interval over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save(fig, Path(figures), f"{sweep}_loss_vs_{key}")
