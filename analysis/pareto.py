"""Pareto views of a fine-tuning study (PEFT's `method_comparison` plots learning against
forgetting and loss against cost): each method at its selected configuration, over the seeds its
tuned-table row reports, as one point

- in *learning against forgetting*: y = the row's reported loss on the target domain (the tuned
  table's `mean`, the test loss where the records have one), x = the pretraining domain's
  validation loss at the last evaluated step (`eval/loss_source`, which fine-tuning runs log),
  the mean over those seeds;
- in *loss against wall clock*: the same y against the runs' wall clock (summary `wall_s`:
  training and evaluations, curvature estimates left out; a record without it, its last
  logged `wall_s`), the mean over those seeds.

Lower is better on both axes; a method is on the Pareto front where no other method is at
least as low on both and lower on one. The front is drawn as a staircase and its points filled;
every point is named in the legend (colour and marker), never by a label beside it, so labels
cannot collide however close the points lie. A study split into table rows gets a pair of
panels per row, two panels a row. Only sweeps whose runs logged `eval/loss_source`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.markdown import markdown_table
from analysis.selection import Selection, row_order
from analysis.tables import SOURCE_METRIC

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p")
AXES = (("source", "pretraining-domain loss at the last step (eval/loss_source)"),
        ("wall_s", "wall clock per run (s, mean over seeds)"))


def pareto_front(x, y) -> np.ndarray:
    """Booleans: the points (x_i, y_i) that no other point dominates (<= on both, < on one);
    a point with a non-finite coordinate is never on the front."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    front = ok.copy()
    for i in np.flatnonzero(ok):
        others = ok & (x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))
        front[i] = not others.any()
    return front


def pareto_table(selection: Selection, table: pd.DataFrame, curves: pd.DataFrame
                 ) -> pd.DataFrame:
    """Per tuned-table row: method, row, loss (its reported loss), source (pretraining-domain
    loss at its last evaluated step), wall_s, seeds, and whether it is on each panel's front
    (within its table row). Empty where no chosen run logged `eval/loss_source`."""
    from analysis.verdict import seed_curves

    if not (curves["metric"] == SOURCE_METRIC).any():
        return pd.DataFrame()
    rows = []
    for item in table[table["seeds"].fillna("").ne("")].itertuples():
        source = seed_curves(selection, curves, item.method, SOURCE_METRIC).dropna(how="all")
        runs = selection.chosen(item.method)
        runs = runs[runs["seed"].isin(selection.reported_seeds(item.method))]
        logged = curves[curves["run_id"].isin(runs["run_id"])].groupby("run_id")["wall_s"].max()
        indexed = runs.set_index("run_id")
        stated = (pd.to_numeric(indexed["wall_s"], errors="coerce") if "wall_s" in indexed
                  else pd.Series(np.nan, index=indexed.index))
        wall = stated.fillna(logged.reindex(stated.index)).dropna()
        rows.append({"method": item.method, "row": str(runs["row"].iloc[0]).strip(),
                     "loss": float(item.mean),
                     "source": float(source.iloc[-1].mean()) if len(source) else math.nan,
                     "wall_s": float(wall.mean()) if len(wall) else math.nan,
                     "seeds": int(item.n_seeds)})
    out = pd.DataFrame(rows)
    if out.empty or out["source"].isna().all():
        return pd.DataFrame()
    for key, _ in AXES:
        out[f"front ({key})"] = False
        for _, group in out.groupby("row"):
            out.loc[group.index, f"front ({key})"] = pareto_front(group[key], group["loss"])
    return out


def write_pareto(selection: Selection | None, table: pd.DataFrame | None,
                 curves: pd.DataFrame, figures: str | Path, sweep: str) -> list[Path]:
    """``<sweep>_pareto.md`` (the points and fronts) and the figure ``<sweep>_pareto``; []
    where the sweep is not a fine-tuning one (no `eval/loss_source`)."""
    if selection is None or table is None or table.empty:
        return []
    points = pareto_table(selection, table, curves)
    if points.empty:
        return []
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    loss = str(table["loss"].iloc[0]) if "loss" in table else "loss"
    md = figures / f"{sweep}_pareto.md"
    md.write_text(
        f"# {sweep}: learning against forgetting, loss against wall clock\n\n"
        + markdown_table(points.drop(columns="row") if points["row"].eq("").all() else points)
        + f"\n\nEach method at its selected configuration over the seeds its row reports: "
        f"`loss` = its reported loss on the target domain (`{loss}`), `source` = the "
        "pretraining domain's validation loss at the last evaluated step (forgetting: higher "
        "is more), `wall_s` = the mean wall clock of a run (as recorded: processors and their "
        "load differ between runs). `front` = on the Pareto front of "
        "that panel (no method is at least as low on both axes and lower on one), per table "
        "row.\n")
    return [md, *draw_pareto(points, loss, figures, sweep)]


def draw_pareto(points: pd.DataFrame, loss: str, figures: Path, sweep: str) -> list[Path]:
    """The figure: per table row, learning against forgetting and loss against wall clock."""
    from analysis.plots import method_colors, plt, save

    rows = sorted(points["row"].unique(), key=row_order)
    fig, axes = plt.subplots(len(rows), 2, figsize=(12, 4.2 * len(rows) + 0.4), squeeze=False,
                             layout="constrained")
    bases = sorted({m.removesuffix(" " + r).strip() if r else m
                    for m, r in zip(points["method"], points["row"])})
    colors = method_colors(bases)
    style = {b: (colors[b], MARKERS[i % len(MARKERS)]) for i, b in enumerate(bases)}
    handles = {}
    for row, panel in zip(rows, axes):
        group = points[points["row"] == row]
        for ax, (key, label) in zip(panel, AXES):
            front = group[group[f"front ({key})"]].sort_values(key)
            if len(front) > 1:
                ax.step(front[key], front["loss"], where="post", color="0.5", lw=1, zorder=1)
            for item in group.itertuples():
                base = item.method.removesuffix(" " + row).strip() if row else item.method
                color, marker = style[base]
                on = bool(group.at[item.Index, f"front ({key})"])
                ax.scatter([group.at[item.Index, key]], [item.loss], marker=marker, s=60,
                           zorder=3, edgecolors=[color], facecolors=[color] if on else "none",
                           linewidths=1.5)
                handles.setdefault(base, plt.Line2D([], [], ls="none", marker=marker, ms=7,
                                                    color=color))
            ax.set_xlabel(label, fontsize=8)
            ax.set_ylabel(f"target-domain loss ({loss})", fontsize=8)
            ax.set_title((f"{row}: " if row else "") + ("learning against forgetting"
                                                         if key == "source" else
                                                         "loss against wall clock"), fontsize=9)
            ax.grid(alpha=0.3)
            ax.margins(0.08)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center",
               ncol=min(4, len(handles)), fontsize=7, frameon=False,
               title="filled: on the Pareto front (lower-left is better); grey: the front",
               title_fontsize=7)
    fig.suptitle(f"{sweep}: each method at its selected configuration, mean over its reported "
                 "seeds", fontsize=10)
    return save(fig, figures, f"{sweep}_pareto")
