"""The figures of a sweep's scale table (analysis.scale): ``<sweep>_scale`` (each method's paired
difference to its baseline against tokens per trainable parameter) and ``<sweep>_speedup`` (the
token-equivalent speedup against tokens), one panel per model size."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import ticker

from analysis.plots import method_colors, save


def _panels(scale) -> list[tuple[object, pd.DataFrame]]:
    table = scale.table
    if not scale.has_sizes:
        return [(None, table)]
    return [(size, group) for size, group in table.groupby("size", sort=True)]


def _short(value: float, _=None) -> str:
    """A tick label: 200k, 1.6M, 0.5, 20."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{unit}"
    return f"{value:g}"


def _log(axis) -> None:
    """A log axis with ticks at 1, 2 and 5 times powers of ten, labelled in plain text."""
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(_short))
    axis.set_minor_formatter(ticker.NullFormatter())


def _axes(n: int):
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n + 2.6, 4.2), squeeze=False, sharey=True)
    return fig, axes[0]


def scale_figure(scale, figures: Path, sweep: str) -> list[Path]:
    """``<sweep>_scale``: per compared method, delta (method - baseline) with its 95% t interval
    against tokens per trainable parameter (log x), a line per method, one panel per size, the
    zero line; a filled marker where the comparison is conclusive (Holm over the table). []
    where nothing is compared."""
    table = scale.table
    shown = table[table["test"].ne("") & np.isfinite(table["delta"].astype(float))]
    if shown.empty:
        return []
    colors = method_colors(table["method"].unique())
    # tokens per trainable parameter; tokens where the records do not state the parameters
    per_param = bool(np.isfinite(shown["tokens_per_param"].astype(float)).all())
    x_key = "tokens_per_param" if per_param else "tokens"
    panels = _panels(scale)
    fig, axes = _axes(len(panels))
    for ax, (size, panel) in zip(axes, panels):
        ax.axhline(0, color="k", lw=1)
        panel = panel[panel.index.isin(shown.index)]
        for method, rows in panel.groupby("method", sort=True):
            rows = rows.sort_values(x_key)
            x = rows[x_key].to_numpy(dtype=float)
            y = rows["delta"].to_numpy(dtype=float)
            low = np.nan_to_num(y - rows["delta_lo"].to_numpy(dtype=float))
            high = np.nan_to_num(rows["delta_hi"].to_numpy(dtype=float) - y)
            color = colors[method]
            ax.errorbar(x, y, yerr=[low, high], color=color, lw=1.4, capsize=3,
                        label=f"{method} vs {rows['baseline'].iloc[0]}")
            yes = rows["conclusive"].eq("yes").to_numpy()
            ax.scatter(x[yes], y[yes], color=color, s=30, zorder=3)
            ax.scatter(x[~yes], y[~yes], facecolors="white", edgecolors=[color], s=30, zorder=3)
        ax.set_xscale("log")
        _log(ax.xaxis)
        ax.set_xlabel("tokens per trainable parameter" if per_param
                      else "tokens (the records state no trainable_params)")
        if size is not None:
            ax.set_title(f"d_model = {size}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{scale.loss}: method - baseline (95% t interval)", fontsize=8)
    handles, labels = [], {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(label, handle)
    handles = list(labels.values())
    handles += [plt.Line2D([], [], ls="", marker="o", color="tab:gray", label="conclusive"),
                plt.Line2D([], [], ls="", marker="o", markerfacecolor="white",
                           color="tab:gray", label="not conclusive (Holm) or n < 3")]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7,
               frameon=False)
    fig.suptitle(f"{sweep}: paired difference to the baseline at each budget", fontsize=10)
    fig.tight_layout()
    return save(fig, Path(figures), f"{sweep}_scale")


def speedup_figure(scale, figures: Path, sweep: str) -> list[Path]:
    """``<sweep>_speedup``: per method, the token-equivalent speedup with its bootstrap interval
    against tokens (log x, log y), one panel per size, the line at 1 (the baseline); a bound is
    an open triangle at its value pointing the way it holds (^ for "> x", v for "< x"), an open
    interval end an arrow. [] where no speedup or bound exists."""
    table = scale.table
    rows_all = table[(table["conclusive"] != "baseline")
                     & (table["speedup"].notna() | table["speedup_bound"].ne(""))]
    if rows_all.empty:
        return []
    colors = method_colors(table["method"].unique())
    drawn = pd.concat([rows_all[c].astype(float) for c in ("speedup", "speedup_lo", "speedup_hi")]
                      + [rows_all["speedup_bound"].map(_bound)]).dropna()
    wide = bool(len(drawn)) and max(drawn.max(), 1.0) / min(drawn.min(), 1.0) > 4
    panels = _panels(scale)
    fig, axes = _axes(len(panels))
    for ax, (size, panel) in zip(axes, panels):
        ax.axhline(1, color="k", lw=1)
        panel = panel[panel.index.isin(rows_all.index)]
        for method, rows in panel.groupby("method", sort=True):
            rows = rows.sort_values("tokens")
            color = colors[method]
            x = rows["tokens"].to_numpy(dtype=float)
            y = rows["speedup"].to_numpy(dtype=float)
            ax.plot(x, y, color=color, lw=1.4, marker="o", ms=4, label=method)
            for xi, r in zip(x, rows.itertuples()):
                if r.speedup_bound:  # the point is a bound: an open triangle at its value
                    value = float(r.speedup_bound[2:])
                    up = r.speedup_bound.startswith(">")
                    ax.scatter([xi], [value], marker="^" if up else "v", s=60,
                               facecolors="white", edgecolors=[color], zorder=3)
                    continue
                lo = r.speedup_lo if not pd.isna(r.speedup_lo) else _bound(r.lo_bound)
                hi = r.speedup_hi if not pd.isna(r.speedup_hi) else _bound(r.hi_bound)
                if pd.isna(lo) or pd.isna(hi):
                    continue
                ax.plot([xi, xi], [lo, hi], color=color, lw=1.2)
                for end, open_, sign in ((lo, r.lo_bound, -1), (hi, r.hi_bound, 1)):
                    if open_:  # this end is a limit of the fit's range: the interval goes on
                        ax.annotate("", xy=(xi, end * 1.25 ** sign), xytext=(xi, end),
                                    arrowprops={"arrowstyle": "->", "color": color})
                    else:
                        ax.plot([xi], [end], marker="_", color=color, ms=8)
        ax.set_xscale("log")
        _log(ax.xaxis)
        if wide:  # speedups over more than a factor of 4: a log axis, else a linear one
            ax.set_yscale("log")
            _log(ax.yaxis)
        ax.set_xlabel("tokens")
        if size is not None:
            ax.set_title(f"d_model = {size}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("speedup: baseline tokens / method tokens")
    labels = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(label, handle)
    handles = list(labels.values()) + [
        plt.Line2D([], [], ls="", marker="^", markerfacecolor="white", color="tab:gray",
                   label="bound (> x): a loss lower than the baseline's range reaches"),
        plt.Line2D([], [], ls="", marker="v", markerfacecolor="white", color="tab:gray",
                   label="bound (< x): a loss higher than at its range's start"),
        plt.Line2D([], [], color="k", lw=1, label="1: as fast as the baseline")]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7,
               frameon=False)
    fig.suptitle(f"{sweep}: token-equivalent speedup over the baseline (95% bootstrap interval)",
                 fontsize=10)
    fig.tight_layout()
    return save(fig, Path(figures), f"{sweep}_speedup")


def _bound(text: str) -> float:
    return float(text[2:]) if text else float("nan")
