"""analysis.trend: the slope of a paired difference across a tuned table's rows (balora_rank's
"does BaLoRA's difference to LoRA grow with r?"), checked against numpy and scipy by hand."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.selection import select_sweep
from analysis.tables import tuned_table
from analysis.trend import row_trend, write_trend
from tests.analysis.test_selection import run

RANKS = (4, 8, 16, 32)
SEEDS = (1, 2, 3, 4, 5)
BASE = "lora/adamw"


def lora(seed, r):
    return 2.5 + 0.01 * seed - 0.01 * math.log2(r)


def balora(seed, r, slope, wobble):
    # a per-seed offset (cancels in the per-seed fit), the slope, and a per-(seed, r) wobble
    offset = 0.02 + 0.003 * seed
    return lora(seed, r) + offset + slope * math.log2(r) + wobble * ((seed * r) % 3 - 1)


def records(slope, wobble):
    rows = []
    for r in RANKS:
        for method, loss in (("lora/adamw", lambda s, r=r: lora(s, r)),
                             ("balora/adamw", lambda s, r=r: balora(s, r, slope, wobble))):
            extra = {"adapter.r": r, "study.rows": "adapter.r", "study.tuning_seeds": "0"}
            rows.append(run(method, 1e-2, 0, 9.0, **extra))  # a worse grid point on seed 0
            rows += [run(method, 1e-3, s, loss(s), **extra) for s in (0, *SEEDS)]
    for row in rows:
        row["final_test_loss"] = row["final_eval_loss"]
    return pd.DataFrame(rows)


def test_the_slope_is_the_mean_per_seed_least_squares_slope_on_log2_r():
    df = records(slope=-0.004, wobble=0.002)
    trend = row_trend(tuned_table(df, baseline=BASE), select_sweep(df)).set_index("method")
    row = trend.loc["balora/adamw"]
    x = np.log2(RANKS)
    slopes = [np.polyfit(x, [balora(s, r, -0.004, 0.002) - lora(s, r) for r in RANKS], 1)[0]
              for s in SEEDS]  # seed 0 tuned: left out
    t = stats.ttest_1samp(slopes, 0.0)
    half = stats.t.ppf(0.975, len(SEEDS) - 1) * np.std(slopes, ddof=1) / np.sqrt(len(SEEDS))
    assert row["baseline"] == "lora/adamw" and row["rows"] == "4, 8, 16, 32"
    assert row["n"] == 5
    assert row["slope"] == pytest.approx(np.mean(slopes), abs=1e-12)
    assert row["ci_low"] == pytest.approx(np.mean(slopes) - half, abs=1e-12)
    assert row["ci_high"] == pytest.approx(np.mean(slopes) + half, abs=1e-12)
    assert row["p"] == pytest.approx(t.pvalue, rel=1e-9)
    assert row["p_holm"] == pytest.approx(t.pvalue, rel=1e-9)  # one comparison


def test_an_exact_slope_is_recovered_and_a_flat_one_is_not_called():
    steep = records(slope=-0.004, wobble=0.0)
    steep = row_trend(tuned_table(steep, baseline=BASE), select_sweep(steep))
    assert steep.loc[0, "slope"] == pytest.approx(-0.004, abs=1e-12)
    flat = records(slope=0.0, wobble=0.002)
    flat = row_trend(tuned_table(flat, baseline=BASE), select_sweep(flat))
    assert flat.loc[0, "ci_low"] < 0 < flat.loc[0, "ci_high"]
    assert flat.loc[0, "conclusive"] == "no"


def test_a_table_without_numeric_rows_has_no_trend(tmp_path):
    df = records(slope=-0.004, wobble=0.002).drop(columns=["study.rows"])
    table = tuned_table(df, baseline=BASE)
    assert row_trend(table, select_sweep(df)).empty
    assert write_trend(table, select_sweep(df), tmp_path, "s") == []
    df = records(slope=-0.004, wobble=0.002)
    (path,) = write_trend(tuned_table(df, baseline=BASE), select_sweep(df), tmp_path, "s")
    assert path.name == "s_trend.md"
    assert "| balora/adamw | lora/adamw | 4, 8, 16, 32 | 5 | 0 | 0 | -0.004 |" in path.read_text()


def test_a_seed_lacking_a_rank_or_diverged_at_one_is_left_out_and_counted():
    df = records(slope=-0.004, wobble=0.0)

    def balora_at(r, seed):
        return (df["method"] == "balora/adamw") & (df["adapter.r"] == r) & (df["seed"] == seed)

    df = df[~balora_at(32, 5)].copy()  # seed 5 never ran at r = 32
    df.loc[balora_at(16, 4), ["status", "final_test_loss", "final_eval_loss"]] = (
        "diverged", math.nan, math.nan)
    row = row_trend(tuned_table(df, baseline=BASE), select_sweep(df)).iloc[0]
    assert (row["n"], row["incomplete"], row["diverged"]) == (3, 1, 1)
    assert row["slope"] == pytest.approx(-0.004, abs=1e-12)  # seeds 1-3, exact
    assert row["conclusive"] == "no"  # never "yes" while a diverged seed is left out


def test_the_tuning_seed_never_enters_the_trend():
    df = records(slope=-0.004, wobble=0.002)
    df = df[df["seed"] == 0]  # the grid only: no reporting seed has run
    row = row_trend(tuned_table(df, baseline=BASE), select_sweep(df)).iloc[0]
    assert row["n"] == 0 and row["conclusive"] == "n/a"
