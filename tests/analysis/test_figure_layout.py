"""Figures readable at a glance (issue 30, item 6): the heat map's panels wrap and no two panels'
labels overlap; a measurement made once a run is drawn (a marker per method), not an empty axis."""

import itertools

import numpy as np
import pandas as pd
import pytest

import analysis.plots as plots
from tests.conftest import fixture_config_id

_ids = itertools.count()


@pytest.fixture
def drawn(monkeypatch):
    """The figures `analysis.plots` saves, rendered (kept open for inspection)."""
    figures = []

    def keep(fig, folder, stem):
        fig.canvas.draw()
        figures.append(fig)
        return [folder / f"{stem}.png"]

    monkeypatch.setattr(plots, "save", keep)
    yield figures
    for fig in figures:
        plots.plt.close(fig)


def run(method, seed=0, **extra):
    adapter, optimizer = method.split("/")
    row = {"sweep": "s", "run_id": f"run{next(_ids)}", "method": method, "task": "lm",
           "adapter.name": adapter, "optimizer.name": optimizer, "seed": seed, "adapter.r": 8,
           "status": "completed", "model.d_model": 32, **extra}
    return {**row, "meta.config_id": fixture_config_id(row)}


def overlapping(fig) -> list[tuple[int, int]]:
    """Pairs of visible axes whose extents, tick labels, axis labels and titles included,
    intersect (in display pixels)."""
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes if ax.get_visible()
             and ax.get_label() != "<colorbar>"]
    return [(i, j) for i, j in itertools.combinations(range(len(boxes)), 2)
            if boxes[i].overlaps(boxes[j])]


def test_the_heat_map_wraps_at_three_panels_and_no_labels_collide(drawn, tmp_path):
    """Seven methods (adapters_x_optimizers had seven panels in one 3,122 px row) over a 7 x 9
    grid with alpha/r values like 0.015625 and 1024."""
    methods = [f"lora/opt{i}_with_a_long_name" for i in range(7)]
    lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    alphas = [8 * 2.0 ** k for k in range(-9, 0)] + [8 * 1024]
    rows = [run(m, **{"optimizer.lr": lr, "adapter.alpha": a,
                      "final_eval_loss": 2.5 + np.log10(lr) / 10 + i / 100})
            for i, m in enumerate(methods) for lr in lrs for a in alphas]
    assert plots.lr_scale_heatmap(pd.DataFrame(rows), None, tmp_path, "s")
    (fig,) = drawn
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 7
    columns = {round(ax.get_position().x0, 3) for ax in panels}
    rows_of = {round(ax.get_position().y0, 3) for ax in panels}
    assert len(columns) == 3 and len(rows_of) == 3  # 3 + 3 + 1
    assert overlapping(fig) == []
    width, height = fig.get_size_inches() * 150  # save's dpi
    assert width < 2600 and height > width / 2
    ticks = [t.get_text() for t in panels[0].get_yticklabels()]
    assert "0.01562" in ticks and "1024" in ticks  # short labels, not 0.015625 or 1.02e+03


def test_a_measurement_made_once_a_run_is_a_point_per_method(drawn, tmp_path):
    """The default sweep measures the Hessian once, at the end: one point per run. Each method
    is a marker with its min-max over seeds, spread along x by method."""
    methods = ["full/adamw", "lora/adamw", "lora/sgd"]
    rows = [run(m, seed=s, **{"optimizer.lr": 1e-3, "final_eval_loss": 2.0})
            for m in methods for s in (0, 1)]
    curves = pd.DataFrame([{"run_id": r["run_id"], "sweep": "s", "step": 200, "tokens": 0,
                            "wall_s": 1.0, "metric": "sharpness/lambda_max",
                            "value": 10.0 * (i // 2 + 1) + r["seed"]}
                           for i, r in enumerate(rows)])
    assert plots.sharpness_vs_step(pd.DataFrame(rows), curves, tmp_path, "s")
    (fig,) = drawn
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == methods
    points = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert len(points) == 3
    assert sorted(float(line.get_ydata()[0]) for line in points) == [10.5, 20.5, 30.5]
    assert "at step 200" in ax.get_xlabel()
