"""Performance profiles and AlgoPerf's benchmark score (analysis/profiles.py) on tables small
enough to compute by hand, and on a sweep's runs."""

import itertools
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from analysis.profiles import benchmark_score, problem_costs, profile, ratios, write_profiles
from analysis.selection import select_sweep
from analysis.tables import GridEdgeWarning, tuned_table
from tests.conftest import fixture_config_id

# Three methods on four problems. Ratios by hand (cost / the column's least cost):
#   a: 1, 1, 2, 1      b: 2, 1.5, 1, 4      c: 4, 6, 1.25, inf
COSTS = pd.DataFrame({"p1": [1.0, 2.0, 4.0], "p2": [2.0, 3.0, 12.0], "p3": [4.0, 2.0, 2.5],
                      "p4": [1.5, 6.0, math.inf]}, index=["a", "b", "c"])


def test_ratios_divide_by_the_best_method_on_each_problem():
    r = ratios(COSTS)
    assert r.loc["a"].tolist() == [1.0, 1.0, 2.0, 1.0]
    assert r.loc["b"].tolist() == [2.0, 1.5, 1.0, 4.0]
    assert r.loc["c"].tolist()[:3] == [4.0, 6.0, 1.25] and r.loc["c", "p4"] == math.inf


def test_profile_is_the_fraction_of_problems_within_tau():
    rho = profile(ratios(COSTS), [1.0, 1.5, 2.0, 4.0])
    assert rho.loc["a"].tolist() == [0.75, 0.75, 1.0, 1.0]
    assert rho.loc["b"].tolist() == [0.25, 0.5, 0.75, 1.0]
    assert rho.loc["c"].tolist() == [0.0, 0.25, 0.25, 0.5]


def test_score_is_the_normalised_integral_of_the_profile_over_1_to_4():
    """By hand: B = mean over problems of max(0, 4 - r) / 3. a: (3+3+2+3)/12 = 11/12;
    b: (2+2.5+3+0)/12 = 7.5/12; c: (0+0+2.75+0)/12 = 2.75/12. And against the integral itself,
    by the trapezoid rule on a fine grid of tau (independent of the closed form)."""
    r = ratios(COSTS)
    score = benchmark_score(r)
    assert score["a"] == pytest.approx(11 / 12)
    assert score["b"] == pytest.approx(7.5 / 12)
    assert score["c"] == pytest.approx(2.75 / 12)
    taus = np.linspace(1.0, 4.0, 30_001)
    rho = (r.to_numpy()[:, :, None] <= taus).mean(axis=1)  # (method, tau)
    integral = ((rho[:, 1:] + rho[:, :-1]) / 2 * np.diff(taus)).sum(axis=1) / 3
    assert score.to_numpy() == pytest.approx(integral, abs=1e-4)


def test_a_method_best_everywhere_scores_1_and_one_beyond_4x_scores_0():
    r = ratios(pd.DataFrame({"p": [1.0, 5.0], "q": [2.0, 9.0]}, index=["best", "slow"]))
    assert benchmark_score(r).tolist() == [1.0, 0.0]


def test_a_problem_nobody_finished_is_dropped():
    costs = pd.DataFrame({"p": [1.0, 2.0], "q": [math.inf, math.nan]}, index=["a", "b"])
    assert list(ratios(costs).columns) == ["p"]


_ids = itertools.count()


def run(method, r, seed, loss):
    adapter, optimizer = method.split("/")
    row = {"sweep": "s", "run_id": f"run{next(_ids)}", "method": method, "adapter.name": adapter,
           "optimizer.name": optimizer, "optimizer.lr": 1e-3, "adapter.r": r, "seed": seed,
           "status": "completed", "final_eval_loss": loss, "model.d_model": 32,
           "study.name": "s", "study.rows": "adapter.r", "study.tuning_seeds": "0"}
    return {**row, "meta.config_id": fixture_config_id(row)}


def test_problems_are_the_table_rows_at_three_budgets(tmp_path):
    """Two methods at r = 4 and 8; the validation losses are logged at steps 0..100 (every 25):
    the cost at 25% is the mean over the reported seeds (1, 2) at step 25, at 100% the table's
    reported loss. lora/sgd did not run r = 8: +inf there."""
    final = {("lora/adamw", 4): 2.0, ("lora/sgd", 4): 2.2, ("lora/adamw", 8): 1.9}
    runs, curves = [], []
    for (method, r), loss in final.items():
        for seed in (1, 2):
            row = run(method, r, seed, loss + seed / 100)
            runs.append(row)
            for step in range(0, 101, 25):  # eval/loss = loss + seed/100 + (100 - step)/1000
                curves.append({"run_id": row["run_id"], "sweep": "s", "step": step,
                               "tokens": step, "wall_s": step, "metric": "eval/loss",
                               "value": loss + seed / 100 + (100 - step) / 1000})
    df, curves = pd.DataFrame(runs), pd.DataFrame(curves)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GridEdgeWarning)
        table = tuned_table(df)
    costs = problem_costs(select_sweep(df), table, curves)
    assert list(costs.columns) == ["r=4 @25%", "r=4 @50%", "r=4 @100%",
                                   "r=8 @25%", "r=8 @50%", "r=8 @100%"]
    assert costs.at["lora/adamw", "r=4 @25%"] == pytest.approx(2.015 + 0.075)
    assert costs.at["lora/sgd", "r=4 @50%"] == pytest.approx(2.215 + 0.05)
    assert costs.at["lora/adamw", "r=8 @100%"] == pytest.approx(1.915)  # the table's mean
    assert math.isnan(costs.at["lora/sgd", "r=8 @100%"])
    r = ratios(costs)
    assert r.at["lora/sgd", "r=8 @25%"] == math.inf
    assert r.at["lora/sgd", "r=4 @100%"] == pytest.approx(2.215 / 2.015)
    written = write_profiles(select_sweep(df), table, curves, tmp_path, "s")
    assert [p.name for p in written] == ["s_profile.md", "s_profile.csv",
                                         "s_performance_profile.png",
                                         "s_performance_profile.pdf"]
    text = (tmp_path / "s_profile.md").read_text()
    assert "| lora/adamw | 1 | 6 | 1 |" in text  # best on all 6 problems: score 1
    saved = pd.read_csv(tmp_path / "s_profile.csv")
    assert len(saved) == 12 and saved["ratio"].max() == math.inf
