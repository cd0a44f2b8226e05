"""The budget figure (`<sweep>_delta_vs_step`): each method's paired difference to its baseline
at every evaluated step, over the seeds its tuned-table row reports."""

import matplotlib.collections
import numpy as np
import pytest
from scipy import stats

from analysis import plots
from analysis.__main__ import main
from analysis.records import load_curves, load_runs
from analysis.tables import tuned_table
from tests.analysis.test_analysis import write_run

STEPS = (0, 10, 20)  # write_run evaluates every 10 steps


def baseline_losses(seed):
    return (3.0, 2.6 + 0.05 * seed, 2.2 + 0.03 * seed)


def method_losses(seed):
    # seed 0 (the tuning seed, left out of the report) differs wildly: if it were in the mean,
    # the plotted values would not match
    return (3.0, 1.0, 1.0) if seed == 0 else (3.0, 2.5 + 0.07 * seed, 2.3 - 0.02 * seed)


def study(root):
    """AdamW (baseline) and Riemannian Adam, seeds 0-3; Riemannian Adam also tried a worse LR
    on seed 0, so the table tuned and reports seeds 1-3."""
    for seed in range(4):
        write_run(root, "bud", seed=seed, losses=baseline_losses(seed))
        write_run(root, "bud", optimizer="riemannian_adam", seed=seed, losses=method_losses(seed))
    write_run(root, "bud", optimizer="riemannian_adam", lr=1e-2, seed=0, losses=(3, 2.9, 2.8))


def drawn(monkeypatch, root, sweep):
    """The figure delta_vs_step draws for these records (captured instead of saved)."""
    runs = load_runs(root, sweep)
    curves = load_curves(runs)
    table = tuned_table(runs)
    figs = []
    monkeypatch.setattr(plots, "save", lambda fig, figures, stem: figs.append(fig) or [stem])
    written = plots.delta_vs_step(runs, curves, root / "fig", sweep, table)
    assert written[0] == f"{sweep}_delta_vs_step"  # then its budget reading and its data
    assert [p.name for p in written[1:]] == [f"{sweep}_budget.md", f"{sweep}_delta_vs_step.csv"]
    (fig,) = figs
    return table, [ax for ax in fig.axes if ax.get_visible()]


def test_plotted_values_are_the_paired_means_and_t_intervals(tmp_path, monkeypatch):
    study(tmp_path)
    table, (ax,) = drawn(monkeypatch, tmp_path, "bud")
    row = table.set_index("method").loc["lora/riemannian_adam"]
    assert row["seeds"] == "1, 2, 3" and row["baseline"] == "lora/adamw"
    # by hand: per step, d_s = method - baseline over seeds 1-3, its mean and 95% t interval
    d = np.array([[m - b for m, b in zip(method_losses(s), baseline_losses(s))]
                  for s in (1, 2, 3)])  # (seeds, steps)
    mean = d.mean(axis=0)
    half = stats.t.ppf(0.975, 2) * d.std(axis=0, ddof=1) / np.sqrt(3)
    # step 10: d_s = -0.1 + 0.02 s = -0.08, -0.06, -0.04; step 20: 0.1 - 0.05 s = 0.05, 0, -0.05
    assert mean == pytest.approx([0.0, -0.06, 0.0], abs=1e-12)
    (line,) = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == len(STEPS)]
    assert list(line.get_xdata()) == list(STEPS)
    np.testing.assert_allclose(line.get_ydata(), mean, atol=1e-12)
    (band,) = [c for c in ax.collections if isinstance(c, matplotlib.collections.PolyCollection)]
    vertices = band.get_paths()[0].vertices  # the polygon: (step, high) ... and (step, low)
    for step, m, h in zip(STEPS, mean, half):
        ys = vertices[np.isclose(vertices[:, 0], step), 1]
        assert ys.min() == pytest.approx(m - h, abs=1e-12)
        assert ys.max() == pytest.approx(m + h, abs=1e-12)
    assert "3 paired seeds" in ax.get_title()


def test_one_paired_seed_draws_the_mean_only_and_says_so(tmp_path, monkeypatch):
    write_run(tmp_path, "one", seed=5, losses=(3.0, 2.5, 2.0))
    write_run(tmp_path, "one", optimizer="riemannian_adam", seed=5, losses=(3.0, 2.25, 2.5))
    _, (ax,) = drawn(monkeypatch, tmp_path, "one")
    (line,) = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == len(STEPS)]
    np.testing.assert_allclose(line.get_ydata(), [0.0, -0.25, 0.5], atol=1e-12)
    assert not [c for c in ax.collections
                if isinstance(c, matplotlib.collections.PolyCollection)]
    assert "1 paired seeds; no band: < 2 paired seeds" in ax.get_title()


def test_cli_writes_the_budget_figure_and_reports_it(tmp_path, capsys):
    study(tmp_path / "runs")
    fig = tmp_path / "fig"
    assert main([f"runs={tmp_path / 'runs'}", f"figures={fig}"]) == 0
    out = capsys.readouterr().out
    for name in ("bud_delta_vs_step.png", "bud_delta_vs_step.pdf"):
        assert (fig / name).stat().st_size > 0 and str(fig / name) in out
    assert "](bud_delta_vs_step.png)" in (fig / "REPORT.md").read_text()


def test_budget_table_reads_the_paired_difference_at_a_quarter_half_and_end(tmp_path):
    """study(): steps 0, 10, 20; d_s(10) = -0.08, -0.06, -0.04 (interval below 0), d_s(20) =
    0.05, 0, -0.05 (interval across 0): the final verdict holds at no step from which on."""
    study(tmp_path / "runs")
    fig = tmp_path / "fig"
    assert main([f"runs={tmp_path / 'runs'}", f"figures={fig}"]) == 0
    import pandas as pd

    data = pd.read_csv(fig / "bud_delta_vs_step.csv").set_index("step")
    half = stats.t.ppf(0.975, 2) * 0.02 / np.sqrt(3)
    assert data.loc[10, "mean"] == pytest.approx(-0.06) and data.loc[10, "n"] == 3
    assert data.loc[10, "high"] == pytest.approx(-0.06 + half)
    text = (fig / "bud_budget.md").read_text()
    # 25% of step 20 is as near step 0 as 10 (ties: the first); 50%: step 10; 100%: step 20
    assert (f"step 10: -0.060 [{-0.06 - half:+.3f}, {-0.06 + half:+.3f}]" in text
            and "step 20: +0.000 [-0.124, +0.124]" in text)
    row = [line for line in text.splitlines() if line.startswith("| lora/riemannian_adam")][0]
    assert row.rstrip().endswith("|  |")  # the final interval includes 0: no "from step"
    from analysis.tables import budget_table

    steady = pd.DataFrame({"mean": [0.0, 0.1, -0.2, -0.3], "low": [0.0, -0.1, -0.3, -0.4],
                           "high": [0.0, 0.3, -0.1, -0.2], "n": [5, 5, 5, 5]},
                          index=pd.Index([0, 10, 20, 30], name="step"))
    out = budget_table({"m": steady}, pd.Series({"m": "b"}))
    assert out.loc[0, "interval excludes 0 from step"] == "20 (lower)"


def test_loss_figure_zooms_on_the_late_phase_with_the_legend_outside(tmp_path, monkeypatch):
    """Dense evaluation (101 evaluations; write_run logs every 10 steps): the late panel spans
    the last 50% of the steps and its y range is set by the curves there, not by the early
    loss; the legend is the figure's."""
    early = [5.0 - 0.02 * i for i in range(50)]  # steps 0-490: 5.0 down to 4.02
    late = [2.0 - 0.001 * i for i in range(51)]  # steps 500-1000: 2.0 down to 1.95
    for seed in range(2):
        write_run(tmp_path, "dense", seed=seed, losses=[v + 0.001 * seed for v in early + late],
                  **{"trainer": {"max_steps": 100, "batch_size": 4, "eval_every": 1}})
    runs = load_runs(tmp_path, "dense")
    figs = []
    monkeypatch.setattr(plots, "save", lambda fig, figures, stem: figs.append(fig) or [stem])
    assert plots.loss_vs_step(runs, load_curves(runs), tmp_path, "dense") == [
        "dense_loss_vs_step"]
    (fig,) = figs
    full, zoom = fig.axes
    assert zoom.get_xlim()[0] == pytest.approx(500)  # write_run's steps are 10 * i: 0 ... 1000
    low, high = zoom.get_ylim()
    assert 1.9 < low < 1.95 and 2.0 < high < 2.01  # the late values only (early ones are > 4)
    assert full.get_ylim()[1] > 4.9
    assert full.get_legend() is None and zoom.get_legend() is None and fig.legends


def test_forgetting_table_reads_the_pretraining_domain_loss(tmp_path):
    """Fine-tuning runs also log `eval/loss_source`: the budget reading adds each method's value
    at the first and last step (mean over the seeds its row reports; seed 0 tuned and is left
    out) and the paired difference to the baseline at the last step, checked by hand."""
    import json

    root = tmp_path / "runs"
    study(root)

    def source(run_dir, i):  # baseline 2.2 + 0.01 s at the end, the method 2.1 + 0.02 s
        seed = int(run_dir.name.rsplit("-s", 1)[1])
        if "riemannian" not in run_dir.name:
            return (2.0, 2.1, 2.2 + 0.01 * seed)[i]
        return 9.0 if seed == 0 else (2.0, 2.05, 2.1 + 0.02 * seed)[i]

    for run_dir in (root / "bud").iterdir():
        path = run_dir / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({**r, "eval/loss_source": source(run_dir, i)}) + "\n"
                                for i, r in enumerate(records)))
    assert main([f"runs={root}", f"figures={tmp_path / 'fig'}"]) == 0
    text = (tmp_path / "fig" / "bud_budget.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line
            for line in text.split("## Forgetting")[1].splitlines() if line.startswith("| lora/")}
    # d_s = (2.1 + 0.02 s) - (2.2 + 0.01 s) = -0.09, -0.08, -0.07 over seeds 1-3
    half = stats.t.ppf(0.975, 2) * 0.01 / np.sqrt(3)
    assert rows["lora/adamw"].endswith("| 3 | 0: 2.000 | 20: 2.220 | baseline |")
    assert rows["lora/riemannian_adam"].endswith(
        f"| 3 | 0: 2.000 | 20: 2.140 | -0.080 [{-0.08 - half:+.3f}, {-0.08 + half:+.3f}] |")


def test_per_step_figures_draw_a_panel_per_table_row(tmp_path, monkeypatch):
    """study.rows = [adapter.r]: the metric-vs-step and loss figures draw each (method, r) at its
    own tuned config, a panel (or row of panels) per r in numeric order, a method coloured alike
    in each; a kappa curve is the median over that row's seeds (as the tables' kappa), not the
    mean and not another rank's."""
    import yaml

    root = tmp_path / "runs"
    for r, lr in ((16, 2e-3), (4, 1e-3)):  # lr apart: run ids apart
        for optimizer, kappa in (("adamw", 100.0 * r), ("riemannian_adam", 10.0 * r)):
            for seed in (0, 1, 2):  # kappa + 0, 1, 100: median kappa + 1, mean kappa + 33.7
                d = write_run(root, "rk", optimizer=optimizer, lr=lr, seed=seed,
                              losses=(3.0, 2.5, 2.0 + r / 100 + seed / 1000),
                              extra_metrics={"cond/gn/kappa": kappa + (0, 1, 100)[seed]})
                cfg = yaml.safe_load((d / "config.yaml").read_text())
                cfg["adapter"]["r"] = r
                cfg["study"] = {"name": "rk", "rows": ["adapter.r"]}
                (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    runs = load_runs(root, "rk")
    curves = load_curves(runs)
    figs = []
    monkeypatch.setattr(plots, "save", lambda fig, figures, stem: figs.append(fig) or [stem])
    assert plots.kappa_gn_vs_step(runs, curves, tmp_path, "rk") == ["rk_kappa_gn_vs_step"]
    panels = [ax for ax in figs[-1].axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["r=4", "r=16"]
    for ax, r in zip(panels, (4, 16)):
        means = sorted(float(line.get_ydata()[0]) for line in ax.get_lines())
        assert means == [10.0 * r + 1, 100.0 * r + 1]  # the median over this r's seeds
    colors = [{ln.get_color() for ln in ax.get_lines()} for ax in panels]
    assert colors[0] == colors[1] and len(colors[0]) == 2
    assert plots.loss_vs_step(runs, curves, tmp_path, "rk") == ["rk_loss_vs_step"]
    titles = [ax.get_title() for ax in figs[-1].axes if ax.get_title()]
    assert titles[0] == "r=4: eval/loss" and "r=16: eval/loss" in titles


def test_loss_figure_draws_the_reporting_seeds_of_a_tuned_sweep(tmp_path, monkeypatch):
    """study(): Riemannian Adam tuned its LR on seed 0, whose curve at the chosen LR is wild
    (1.0 at steps 10 and 20): the figure draws seeds 1-3, as the tables report, and says that
    it left the tuning seed out; AdamW, with one LR, still tuned nothing but reports seeds 1-3
    too (the sweep tuned)."""
    study(tmp_path)
    runs = load_runs(tmp_path, "bud")
    figs = []
    monkeypatch.setattr(plots, "save", lambda fig, figures, stem: figs.append(fig) or [stem])
    plots.loss_vs_step(runs, load_curves(runs), tmp_path, "bud")
    full = figs[-1].axes[0]
    lines = {ln.get_label().split(" ")[0]: ln for ln in full.get_lines()}
    expected = np.mean([method_losses(s) for s in (1, 2, 3)], axis=0)
    np.testing.assert_allclose(lines["lora/riemannian_adam"].get_ydata(), expected, atol=1e-12)
    assert "3 seeds" in lines["lora/riemannian_adam"].get_label()
    assert "3 seeds" in lines["lora/adamw"].get_label()
    notes = [t.get_text() for t in figs[-1].texts]
    assert any("2 on the tuning seed (0) at the chosen ones" in t for t in notes)
