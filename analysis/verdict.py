"""The verdict of docs/design.md §8: is a method's loss different from the baseline's?

Sign convention: every difference is method - baseline, so a negative difference means the
method reached the lower (better) loss.

Seeds pair across methods (batches depend only on (seed, step)), so the comparison is a paired
t-test on the per-seed differences d_s = loss_method(s) - loss_baseline(s): the seed-to-seed
variance cancels. When the two arms do not share their seeds, Welch's unpaired t-test is the
fallback. Holm's step-down correction runs over every comparison of one table, and a verdict
needs >= MIN_SEEDS seeds (per arm) whatever its p-value says. Each comparison also states the
smallest difference its design could detect, so "not conclusive" reads as "no difference larger
than that".

Array functions take the seeds on the last axis, so a simulation of many studies is one call.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import optimize, stats

from analysis.records import pivot

ALPHA = 0.05  # two-sided level of every test, after Holm's correction
CONFIDENCE = 0.95  # of the t interval of the mean difference
POWER = 0.80  # of the detectable difference
MIN_SEEDS = 3  # fewer paired seeds (Welch: per arm) give "n/a", never a verdict


class TTest(NamedTuple):
    """A t-test of one mean difference; every field has the batch shape of the inputs."""

    mean: np.ndarray  # mean difference (method - baseline)
    low: np.ndarray  # CONFIDENCE interval of the mean difference from the t distribution
    high: np.ndarray
    p: np.ndarray  # two-sided p-value
    se: np.ndarray  # standard error of the mean difference
    df: np.ndarray  # degrees of freedom of its t distribution


def _t_test(mean, se, df) -> TTest:
    """t = mean / se ~ t(df) under no difference; interval mean -+ t_{(1+CONFIDENCE)/2, df} se."""
    mean, se, df = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (mean, se, df)))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / se
        p = 2 * stats.t.sf(np.abs(t), df)
        half = stats.t.ppf((1 + CONFIDENCE) / 2, df) * se
    # No spread and no difference (identical arms): no evidence of a difference.
    p = np.where((se == 0) & (mean == 0), 1.0, p)
    return TTest(mean, mean - half, mean + half, p, se, df)


def mean_t(mean, sd, n) -> TTest:
    """The t-test and CONFIDENCE interval of a mean of n values with sample sd (se = sd /
    sqrt(n), df = n - 1), from the summary statistics alone; NaN fields where n < 2."""
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _t_test(mean, np.asarray(sd, dtype=float) / np.sqrt(n), np.where(n >= 2, n - 1,
                                                                                  np.nan))


def paired_t(diffs) -> TTest:
    """Paired t-test of per-seed differences d (..., n): mean(d), se = sd(d) / sqrt(n), df = n - 1.

    Needs n >= 2 (else every field is NaN); agrees with ``scipy.stats.ttest_rel``.
    """
    d = np.asarray(diffs, dtype=float)
    n = d.shape[-1]
    if n < 2:
        nan = np.full(d.shape[:-1], math.nan)
        return TTest(nan, nan, nan, nan, nan, nan)
    se = d.std(axis=-1, ddof=1) / math.sqrt(n)
    return _t_test(d.mean(axis=-1), se, n - 1)


def welch_t(x, y) -> TTest:
    """Welch's t-test of mean(x) - mean(y), x (..., n1), y (..., n2), unequal variances.

    se^2 = v1 + v2 with v_i = s_i^2 / n_i; df (Welch-Satterthwaite) =
    (v1 + v2)^2 / (v1^2 / (n1 - 1) + v2^2 / (n2 - 1)). Needs n1, n2 >= 2 (else NaN).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n1, n2 = x.shape[-1], y.shape[-1]
    if min(n1, n2) < 2:
        nan = np.full(np.broadcast_shapes(x.shape[:-1], y.shape[:-1]), math.nan)
        return TTest(nan, nan, nan, nan, nan, nan)
    v1, v2 = x.var(axis=-1, ddof=1) / n1, y.var(axis=-1, ddof=1) / n2
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (v1 + v2) ** 2 / (v1 ** 2 / (n1 - 1) + v2 ** 2 / (n2 - 1))
    df = np.where((v1 == 0) & (v2 == 0), n1 + n2 - 2, df)  # no spread at all: the pooled df
    return _t_test(x.mean(axis=-1) - y.mean(axis=-1), np.sqrt(v1 + v2), df)


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values of the m tests on the last axis of p (..., m).

    With p_(1) <= ... <= p_(m): adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)), so the
    adjusted values keep the order of the raw ones and never exceed 1. Rejecting adjusted
    p < alpha keeps the family-wise error rate at alpha.
    """
    p = np.asarray(p, dtype=float)
    m = p.shape[-1]
    if m == 0:
        return p.copy()
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1) * (m - np.arange(m))
    adjusted = np.minimum(1.0, np.maximum.accumulate(ranked, axis=-1))
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, axis=-1)
    return out


def holm_levels(p) -> np.ndarray:
    """The level each of m tests is held to in Holm's step-down procedure: the test with the
    i-th smallest p (i = 1..m) is rejected at alpha / (m - i + 1) (NaN p: no level)."""
    p = np.asarray(p, dtype=float)
    levels = np.full(p.shape, math.nan)
    tested = np.flatnonzero(np.isfinite(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    levels[order] = ALPHA / (len(tested) - np.arange(len(tested)))
    return levels


def holm_detectable(p, se, dof, power: float = POWER) -> np.ndarray:
    """The smallest difference each comparison of a table detects with `power` at the Holm
    level its rank needs (`holm_levels`): a table with more comparisons detects less. A
    comparison without a p-value keeps the unadjusted level ALPHA."""
    levels = holm_levels(p)
    return np.array([detectable_difference(s, d, level if np.isfinite(level) else ALPHA, power)
                     for s, d, level in zip(se, dof, levels)])


def t_power(ncp, df, alpha: float = ALPHA) -> np.ndarray:
    """Power of the two-sided t-test when t ~ noncentral t(df, ncp):
    P(|t| > c) = P(t > c) + P(-t > c), c = t_{1 - alpha/2, df}, and -t ~ noncentral t(df, -ncp).
    (Written with sf twice: scipy's nct.cdf far in the lower tail returns NaN.)"""
    crit = stats.t.ppf(1 - alpha / 2, df)
    return stats.nct.sf(crit, df, ncp) + stats.nct.sf(crit, df, np.negative(ncp))


def detectable_difference(se, df, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest |mean difference| a two-sided t-test detects with ``power`` at level ``alpha``.

    A true difference delta makes t ~ noncentral t(df, ncp) with ncp = delta / se (paired: se =
    s / sqrt(n), df = n - 1 for n pairs whose differences have sd s). Solve
    t_power(ncp, df) = power for ncp (power grows with ncp), then delta = ncp * se.
    """
    if not (np.isfinite(se) and np.isfinite(df) and df > 0):
        return math.nan
    if se == 0:
        return 0.0
    high = 1.0
    while t_power(high, df, alpha) < power:  # bracket the root (df = 1 needs ncp near 16)
        high *= 2
    ncp = optimize.brentq(lambda c: t_power(c, df, alpha) - power, 0.0, high, xtol=1e-10)
    return float(ncp * se)


def _sign_of_divergence(method_inf, baseline_inf) -> float:
    """A seed where only one arm diverged: that arm lost it by an unbounded margin."""
    if method_inf and baseline_inf:
        return math.nan  # diverged seeds on both sides, not the same ones: no finite sign
    return math.inf if method_inf else -math.inf if baseline_inf else 0.0


def compare(method: pd.Series, baseline: pd.Series) -> dict:
    """One comparison of per-seed losses (index: seed; +inf: diverged; NaN: no result).

    Paired over the shared seeds when the arms have the same seeds or share >= MIN_SEEDS of
    them; else Welch on each arm's seeds. The test uses the seeds that finished (finite); a seed
    that diverged on one side only makes ``delta`` +inf (method diverged) or -inf (baseline),
    NaN when each side has one. ``n``: the paired seeds, or for Welch the smaller arm.
    """
    method, baseline = method.dropna(), baseline.dropna()
    shared = method.index.intersection(baseline.index)
    if set(method.index) == set(baseline.index) or len(shared) >= MIN_SEEDS:
        m, b = method.loc[shared].to_numpy(float), baseline.loc[shared].to_numpy(float)
        finite = np.isfinite(m) & np.isfinite(b)
        d = m[finite] - b[finite]  # (n,) paired differences of the seeds both arms finished
        test, result, n = "paired", paired_t(d), len(d)
        mean = d.mean() if n else math.nan
        # Both arms diverged on the same seed: a tie, neither side gains from it.
        diverged = _sign_of_divergence(bool((np.isinf(m) & np.isfinite(b)).any()),
                                       bool((np.isfinite(m) & np.isinf(b)).any()))
    else:
        m, b = method.to_numpy(float), baseline.to_numpy(float)
        mf, bf = m[np.isfinite(m)], b[np.isfinite(b)]
        test, result, n = "welch", welch_t(mf, bf), min(len(mf), len(bf))
        mean = mf.mean() - bf.mean() if n else math.nan
        diverged = _sign_of_divergence(bool(np.isinf(m).any()), bool(np.isinf(b).any()))
    return {
        "test": test,
        "n": n,
        "delta": float(mean) if diverged == 0 else diverged,
        "ci_low": float(result.low),
        "ci_high": float(result.high),
        "p": float(result.p),
        "detectable": detectable_difference(float(result.se), float(result.df)),
        # the test's standard error and degrees of freedom: `verdicts` makes detectable the
        # difference found at the Holm level the comparison needs in its table
        "se": float(result.se), "dof": float(result.df),
        # whether no diverged seed contradicts the direction of the seeds that finished
        "consistent": bool(diverged == 0 or np.sign(diverged) == np.sign(mean)),
    }


def verdicts(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Holm's p_holm over every comparison with a p-value, and ``conclusive`` for each.

    conclusive: "n/a" when n < MIN_SEEDS; "yes" when p_holm < ALPHA and no diverged seed points
    the other way; else "no". Expects the columns of ``compare``; returns a copy with p_holm and
    conclusive added (the family is the rows given: one table's comparisons), and, with the
    columns se and dof, detectable at each comparison's Holm level (`holm_detectable`).
    """
    out = comparisons.copy()
    p = out["p"].to_numpy(dtype=float)
    tested = np.isfinite(p)
    p_holm = np.full(len(out), math.nan)
    p_holm[tested] = holm(p[tested])
    out["p_holm"] = p_holm
    if {"se", "dof"} <= set(out.columns) and tested.any():
        out["detectable"] = holm_detectable(p, out["se"].to_numpy(float),
                                            out["dof"].to_numpy(float))
    enough = out["n"].to_numpy() >= MIN_SEEDS
    significant = (p_holm < ALPHA) & out["consistent"].to_numpy(dtype=bool)
    out["conclusive"] = np.where(~enough, "n/a", np.where(significant, "yes", "no"))
    return out


def judge_table(table: pd.DataFrame) -> pd.DataFrame:
    """A table's rows compared with a baseline (`test` set by `compare`) judged as one family
    (`verdicts`): their p_holm, conclusive and, where the table has se and dof, detectable
    written in place; those helper columns (and consistent) dropped."""
    compared = table["test"].ne("")
    if compared.any():
        judged = verdicts(table[compared])
        for col in ("p_holm", "conclusive", "detectable"):
            if col in judged:
                table.loc[compared, col] = judged[col]
    return table.drop(columns=[c for c in ("consistent", "se", "dof") if c in table])


# ------------------------------------------------------- paired difference at every step (budget)
def seed_curves(selection, curves: pd.DataFrame, method: str, metric: str) -> pd.DataFrame:
    """(step x seed) `metric` of a method's chosen configuration (an analysis.selection.
    Selection) over the seeds its table row reports; a seed recorded twice: the mean."""
    runs = selection.chosen(method)
    runs = runs[runs["seed"].fillna(0).astype(int).isin(selection.reported_seeds(method))]
    values = pivot(curves, runs["run_id"], metric)
    by_seed = dict(zip(runs["run_id"], runs["seed"].fillna(0).astype(int)))
    values = values.T.groupby(values.columns.map(by_seed)).mean().T
    return values.reindex(columns=sorted(set(values.columns)))


def paired_deltas(selection, curves: pd.DataFrame, baselines: dict[str, str],
                  metric: str) -> dict[str, pd.DataFrame]:
    """Per method of `baselines` (method -> its baseline, both methods of `selection`), its
    paired difference to the baseline at each evaluated step, over the seeds each row reports.

    At step t, over the seeds s both arms evaluated there with a finite loss (n_t of them):
    d_s(t) = loss_method(s, t) - loss_baseline(s, t); mean = mean_s d_s(t), and for n_t >= 2 the
    95% t interval [low, high] of `paired_t` (n_t - 1 degrees of freedom), NaN for n_t < 2.
    Returns {method: DataFrame(index=step; mean, low, high, n)}."""
    out = {}
    for method, baseline in baselines.items():
        m = seed_curves(selection, curves, method, metric)
        b = seed_curves(selection, curves, baseline, metric)
        shared, steps = m.columns.intersection(b.columns), m.index.intersection(b.index)
        d = m.loc[steps, shared] - b.loc[steps, shared]  # (steps, seeds) paired differences
        d = d.where(np.isfinite(d))
        rows = []
        for step, values in d.iterrows():
            v = values.dropna().to_numpy(dtype=float)  # (n_t,) the seeds both arms have at t
            if not len(v):
                continue
            test = paired_t(v)
            rows.append({"step": step, "mean": float(v.mean()), "low": float(test.low),
                         "high": float(test.high), "n": len(v)})
        out[method] = pd.DataFrame(rows, columns=["step", "mean", "low", "high", "n"]
                                   ).set_index("step")
    return out
