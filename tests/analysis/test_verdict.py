"""The verdict (analysis/verdict.py, docs/design.md §8) on synthetic per-seed losses and run
records.

The simulations draw many studies at once: loss[study, seed] = 2 + seed effect (sd SEED_SD, shared
by every method of a study: the same batches) + the method's own noise (sd NOISE_SD).
"""

import itertools
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.tables import GridEdgeWarning, tuned_table, write_tuned
from analysis.verdict import (
    ALPHA,
    MIN_SEEDS,
    compare,
    detectable_difference,
    holm,
    paired_t,
    verdicts,
    welch_t,
)
from tests.conftest import fixture_config_id

STUDIES = 2000
SEED_SD, NOISE_SD = 0.1, 0.005
_ids = itertools.count()


def losses(rng, studies: int, seeds: int, methods: int, effect=0.0) -> np.ndarray:
    """(studies, methods, seeds) losses; method 0 is the baseline, the others add ``effect``."""
    seed_effect = rng.normal(0, SEED_SD, (studies, 1, seeds))
    noise = rng.normal(0, NOISE_SD, (studies, methods, seeds))
    shift = np.where(np.arange(methods) == 0, 0.0, effect)[None, :, None]
    return 2.0 + seed_effect + noise + shift


def called(p: np.ndarray, n: int) -> np.ndarray:
    """The verdict "yes" of each study (..., m): Holm over the study's m comparisons."""
    return (holm(p) < ALPHA) & (n >= MIN_SEEDS)


def test_false_positive_rate_is_about_alpha_with_large_seed_effects():
    loss = losses(np.random.default_rng(0), STUDIES, seeds=5, methods=2)
    p = paired_t(loss[:, 1] - loss[:, 0]).p  # (STUDIES,)
    rate = called(p[:, None], 5).mean()
    assert 0.03 <= rate <= 0.075


def test_holm_keeps_the_family_wise_error_of_ten_comparisons():
    loss = losses(np.random.default_rng(1), STUDIES, seeds=5, methods=11)
    p = paired_t(loss[:, 1:] - loss[:, :1]).p  # (STUDIES, 10), all against one baseline
    any_called = called(p, 5).any(axis=-1).mean()
    assert any_called <= 0.06
    assert (p < ALPHA).any(axis=-1).mean() > 0.2  # uncorrected, the family errs far more often


def test_pairing_finds_a_small_consistent_difference_the_unpaired_test_misses():
    # Within-pair sd of the difference 0.005; seed sd 0.1 (20x the effect).
    rng = np.random.default_rng(2)
    base = 2.0 + rng.normal(0, SEED_SD, (STUDIES, 5))
    method = base + 0.01 + rng.normal(0, 0.005, (STUDIES, 5))
    paired = called(paired_t(method - base).p[:, None], 5).mean()
    unpaired = called(welch_t(method, base).p[:, None], 5).mean()
    assert paired > 0.8
    assert unpaired < 0.2


def test_holm_matches_a_hand_computation():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005, 3 x 0.01, 2 x 0.03, 1 x 0.04 = 0.02, 0.03, 0.06,
    # 0.04; running max 0.02, 0.03, 0.06, 0.06; back in the original order:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.3, 0.5]) == pytest.approx([0.6, 0.6])  # monotone: 0.5 is raised to 0.6
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])  # one comparison: unchanged
    # Row by row on a batch of families.
    batch = np.array([[0.01, 0.04, 0.03, 0.005], [0.5, 0.5, 0.5, 0.5]])
    assert holm(batch)[0] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm(batch)[1] == pytest.approx([1.0, 1.0, 1.0, 1.0])


def test_paired_interval_and_p_agree_with_scipy_ttest_rel():
    rng = np.random.default_rng(3)
    x, y = rng.normal(2, 0.1, 6), rng.normal(2.05, 0.1, 6)
    ours, ref = paired_t(x - y), stats.ttest_rel(x, y)
    ci = ref.confidence_interval(0.95)
    assert float(ours.p) == pytest.approx(ref.pvalue, rel=1e-9)
    assert (float(ours.low), float(ours.high)) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert float(ours.mean) == pytest.approx((x - y).mean())


def test_welch_interval_and_p_agree_with_scipy():
    rng = np.random.default_rng(4)
    x, y = rng.normal(2, 0.1, 4), rng.normal(2.2, 0.3, 7)
    ours, ref = welch_t(x, y), stats.ttest_ind(x, y, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert float(ours.p) == pytest.approx(ref.pvalue, rel=1e-9)
    assert (float(ours.low), float(ours.high)) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_detectable_difference_has_the_stated_power():
    n, sd = 5, 0.005
    delta = detectable_difference(sd / math.sqrt(n), n - 1)
    assert 0.005 < delta < 0.01  # between 1 and 2 sd of a difference at 5 pairs
    diffs = np.random.default_rng(5).normal(delta, sd, (20_000, n))
    power = (paired_t(diffs).p < ALPHA).mean()
    assert power == pytest.approx(0.8, abs=0.015)


def test_detectable_difference_of_a_comparison_uses_its_observed_spread():
    method = pd.Series([2.01, 2.12, 1.93, 2.05, 1.99], index=[1, 2, 3, 4, 5])
    baseline = pd.Series([2.00, 2.10, 1.90, 2.06, 1.96], index=[1, 2, 3, 4, 5])
    row = compare(method, baseline)
    d = (method - baseline).to_numpy()
    assert row["test"] == "paired" and row["n"] == 5
    assert row["detectable"] == pytest.approx(
        detectable_difference(d.std(ddof=1) / math.sqrt(5), 4))


def test_detectable_is_found_at_the_holm_level_each_comparison_needs():
    """In a table of m comparisons the one with the i-th smallest p is held to alpha/(m-i+1):
    its detectable difference has 80% power there (checked by simulation), and the same
    comparison in a larger table detects less."""
    rng = np.random.default_rng(3)
    baseline = pd.Series(2.0 + rng.normal(0, 0.01, 5), index=[1, 2, 3, 4, 5])
    methods = [baseline + shift + rng.normal(0, 0.004, 5) for shift in (0.05, 0.02, 0.003)]
    alone = verdicts(pd.DataFrame([compare(methods[0], baseline)]))
    table = verdicts(pd.DataFrame([compare(m, baseline) for m in methods]))
    ranked = table.sort_values("p")
    for i, (_, row) in enumerate(ranked.iterrows()):  # the i-th smallest p: alpha / (3 - i)
        assert row["detectable"] == pytest.approx(
            detectable_difference(row["se"], row["dof"], ALPHA / (3 - i)))
    assert table.loc[0, "detectable"] > alone.loc[0, "detectable"]
    row = ranked.iloc[0]
    sd = row["se"] * math.sqrt(5)
    diffs = np.random.default_rng(7).normal(row["detectable"], sd, (20_000, 5))
    assert (paired_t(diffs).p < ALPHA / 3).mean() == pytest.approx(0.8, abs=0.015)


def test_fewer_than_three_seeds_are_never_a_verdict():
    two = pd.Series([2.0, 2.1], index=[1, 2])
    rows = pd.DataFrame([compare(two - 0.5, two)])
    assert rows.loc[0, "test"] == "paired" and rows.loc[0, "n"] == 2
    assert verdicts(rows).loc[0, "conclusive"] == "n/a"


def test_mismatched_seeds_fall_back_to_welch():
    method = pd.Series([1.50, 1.52, 1.49], index=[1, 2, 3])
    baseline = pd.Series([2.00, 2.02, 1.99], index=[4, 5, 6])
    row = compare(method, baseline)
    assert row["test"] == "welch" and row["n"] == 3
    assert row["p"] == pytest.approx(stats.ttest_ind(method, baseline, equal_var=False).pvalue)
    assert verdicts(pd.DataFrame([row])).loc[0, "conclusive"] == "yes"
    # Sharing >= 3 seeds still pairs, over the shared ones.
    shared = compare(pd.Series([1.5, 1.6, 1.4, 1.5], index=[1, 2, 3, 4]),
                     pd.Series([2.0, 2.1, 1.9], index=[1, 2, 3]))
    assert shared["test"] == "paired" and shared["n"] == 3


# Synthetic run records: a grid on tuning seed 0, then seeds 1-5 at each method's best.


def record(method, lr, seed, loss, status="completed", sweep="study", **extra):
    adapter, optimizer = method.split("/")[:2]
    row = {
        "sweep": sweep, "run_id": f"r{next(_ids)}", "method": method, "adapter.name": adapter,
        "optimizer.name": optimizer, "optimizer.lr": lr, "seed": seed, "status": status,
        "final_eval_loss": loss if status == "completed" else math.nan,
        "model.d_model": 32, "data.name": "builtin", **extra,
    }
    return {**row, "meta.config_id": fixture_config_id(row)}


def study(per_seed: dict[str, list[float]], grid=(1e-3, 3e-3, 1e-2)) -> list[dict]:
    """Per method: seed 0 at each grid LR (the middle one best), then seeds 1.. at 3e-3."""
    rows = []
    for method, reported in per_seed.items():
        rows += [record(method, lr, 0, 2.5 if lr != 3e-3 else 2.0) for lr in grid]
        rows += [record(method, 3e-3, s, loss) for s, loss in enumerate(reported, start=1)]
    return rows


def tabulate(rows, **kwargs) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GridEdgeWarning)
        return tuned_table(pd.DataFrame(rows), **kwargs).set_index("method")


SEED_LOSSES = [2.31, 2.12, 2.45, 2.20, 2.38]  # seeds 1-5: a seed spread of ~0.13


def test_records_are_paired_on_the_reporting_seeds_only():
    better = [x - 0.01 + e for x, e in zip(SEED_LOSSES, [0.002, -0.003, 0.001, -0.002, 0.0])]
    t = tabulate(study({"lora/adamw": SEED_LOSSES, "lora/muon": better}))
    row = t.loc["lora/muon"]
    ref = stats.ttest_rel(better, SEED_LOSSES)
    assert row["seeds"] == "1, 2, 3, 4, 5" and row["tuning_seeds"] == "0"
    assert row["test"] == "paired" and row["n"] == 5
    assert row["delta"] == pytest.approx(np.mean(np.subtract(better, SEED_LOSSES)))
    assert row["p"] == pytest.approx(ref.pvalue) and row["p_holm"] == pytest.approx(ref.pvalue)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(ref.confidence_interval()))
    assert row["conclusive"] == "yes" and row["ci_high"] < 0
    assert row["mean"] == pytest.approx(np.mean(better))  # seed 0 (the grid) is not reported
    assert t.loc["lora/adamw", "conclusive"] == "baseline"


def test_holm_runs_over_every_comparison_of_the_table():
    t = tabulate(study({"lora/adamw": SEED_LOSSES,
                        "lora/muon": [x - 0.01 for x in SEED_LOSSES[:4]] + [2.37],
                        "lora/sgd": [x + 0.003 for x in SEED_LOSSES[:4]] + [2.40]}))
    raw = t.loc[["lora/muon", "lora/sgd"], "p"].to_numpy()
    assert t.loc[["lora/muon", "lora/sgd"], "p_holm"].to_numpy() == pytest.approx(holm(raw))


def test_a_diverged_reporting_seed_is_shown_and_never_helps_the_method():
    better = [x - 0.05 for x in SEED_LOSSES[:4]]
    rows = study({"lora/adamw": SEED_LOSSES, "lora/muon": better})
    rows.append(record("lora/muon", 3e-3, 5, None, status="diverged"))
    row = tabulate(rows).loc["lora/muon"]
    assert row["seeds"] == "1, 2, 3, 4, 5 (diverged)"
    assert row["mean"] == math.inf and row["delta"] == math.inf
    assert row["n"] == 4 and row["ci_high"] < 0  # the four finished seeds favour the method...
    assert row["conclusive"] == "no"  # ...but it diverged on seed 5: not conclusively better


def test_two_untuned_seeds_give_n_a_and_report_both_seeds():
    """The default sweep: one config per method, seeds 0 and 1, so nothing tuned."""
    rows = [record(m, 1e-3, s, loss + (0.3 if m == "full/sgd" else 0))
            for m in ("full/adamw", "full/sgd") for s, loss in enumerate([2.0, 2.1])]
    t = tabulate(rows)
    assert t.loc["full/sgd", "seeds"] == "0, 1" and t.loc["full/sgd", "tuning_seeds"] == ""
    assert t.loc["full/sgd", "conclusive"] == "n/a"


def test_test_loss_is_reported_when_the_records_have_it(tmp_path):
    rows = study({"lora/adamw": SEED_LOSSES, "lora/muon": SEED_LOSSES})
    for row in rows:
        row["final_test_loss"] = row["final_eval_loss"] + (0.1 if row["method"] == "lora/muon"
                                                           else 0.0)
    t = tabulate(rows)
    assert t.loc["lora/muon", "loss"] == "final_test_loss"
    assert t.loc["lora/muon", "delta"] == pytest.approx(0.1)
    assert t.loc["lora/muon", "hyperparameters"] == "optimizer.lr=0.003"  # selected on eval


def test_the_protocol_paragraph_says_how_the_verdict_is_made(tmp_path):
    t = tuned_table(pd.DataFrame(study({"lora/adamw": SEED_LOSSES, "lora/muon": SEED_LOSSES})))
    text = write_tuned(t, tmp_path, "study")[0].read_text()
    for words in ("paired by seed", "t distribution", "two-sided paired t-test", "Welch",
                  "Holm", "n/a when n < 3", "80% power", "no difference larger than",
                  "over seeds 1, 2, 3, 4, 5", "tuning seed 0 is left out", "eval loss",
                  "(diverged)", "negative = the method has the lower loss"):
        assert words in text, words
    assert "| p_holm |" in text and "| detectable |" in text and "bootstrap" not in text


def test_the_report_calls_an_untuned_two_seed_sweep_a_smoke_demonstration():
    from analysis.report import finding

    rows = [record(m, 1e-3, s, loss + (0.3 if m == "full/sgd" else 0), sweep="default")
            for m in ("full/adamw", "full/sgd") for s, loss in enumerate([2.0, 2.1])]
    text = finding(tuned_table(pd.DataFrame(rows)))
    assert "smoke demonstration" in text and "2 seeds" in text
    assert "differ conclusively after Holm's correction (1 has too few seeds" in text


def test_mean_t_interval_from_summary_statistics_is_scipys():
    """The interval of a mean from (mean, sd, n) alone is scipy's t interval of the values."""
    from analysis.verdict import mean_t

    values = np.array([2.51, 2.49, 2.53, 2.50, 2.47])
    got = mean_t(values.mean(), values.std(ddof=1), len(values))
    low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(),
                                 scale=stats.sem(values))
    assert (float(got.low), float(got.high)) == pytest.approx((low, high))
    assert np.isnan(mean_t(2.5, np.nan, 1).low)  # one value: no interval
