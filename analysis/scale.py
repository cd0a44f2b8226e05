"""Verdicts across scale: each method against its baseline at every budget (and model size) of a
sweep, and the token-equivalent speedup (docs/design.md §8, "Scale").

**Budgets.** A run's budget is its token count D = trainer.max_steps x trainer.batch_size x
model.seq_len (config columns; the record's `tokens` column where those are absent). A sweep's
runs can differ in budget for two reasons: a budget ladder (`study.budgets`), or a study's short
grid on the tuning seeds before its reporting budget. Only budgets at which the sweep *reports*
make a ladder: a budget reports where some method's chosen configuration there has a seed the
tables report (not a left-out tuning seed; with nothing tuned, every seed reports). So a grid's
short tuning runs never make a ladder, and a sweep with fewer than two reporting budgets gets no
`_scale` output.

**Selection.** The one rule (`analysis.selection.select_sweep`) with the budget (and the model
size, `model.d_model`, where the runs differ in it) as row keys after the study's own
`study.rows`: each (method, row, budget, size) is chosen on its own and reports the losses the
selection reports (`Selection.losses`: per reporting seed, +inf for a diverged one).

**Comparison.** At each budget (and size) each method is compared with the baseline (the tuned
table's: `study.baseline`, else AdamW on the same adapter) by `analysis.verdict.compare`, paired
by seed: delta = mean over seeds of (method - baseline), [delta_lo, delta_hi] its 95% t interval
(n - 1 df), p; Holm's correction over every comparison of this table (every method, budget and
size: `analysis.verdict.verdicts`), conclusive = yes for p_holm < 0.05 with n >= 3.

**Token-equivalent speedup** (Wen, Hall, Ma, Liang, "Fantastic Pretraining Optimizers and
Where to Find Them", arXiv 2509.02046; their code: marin-community/marin,
experiments/optimizer_sweep/Analysis/speedup_estimation.py, fits the AdamW baseline per model
size L(D) = alpha D^-B + beta over its data budgets, takes each optimizer's effective budget
D_eff = ((L - beta) / alpha)^(-1/B) at its observed loss and the speedup D_eff / D). Here, per
baseline series (the baseline with its `study.rows` row, at one model size):

- fit L(D) = a D^-b + c to the baseline's mean reported loss at each reporting budget with a
  finite mean (at least FIT_MIN_BUDGETS of them), by least squares (scipy.optimize.curve_fit,
  trf) with bounds a > 0, b in [B_MIN, B_MAX], 0 <= c < the smallest observed mean; the fit
  fails (no speedup, the Markdown says why) with fewer budgets, when curve_fit raises or
  returns a non-finite value, or when b sits at B_MIN (the baseline's loss does not fall with
  tokens over the ladder, so no budget can be read off it);
- for a method with mean loss L_m at budget D: D_base = L^-1(L_m) = (a / (L_m - c))^(1/b), the
  baseline tokens that reach L_m, and speedup = D_base / D (> 1: the method needs fewer tokens);
- never extrapolated: D_base must lie in [D_min / RANGE_FACTOR, D_max x RANGE_FACTOR] (the
  fitted budgets' range widened by one doubling each side). A loss below L(D_max x RANGE_FACTOR)
  (including any loss at or below c, which no budget reaches) is reported as the bound
  `> (D_max x RANGE_FACTOR) / D`, a loss above L(D_min / RANGE_FACTOR) as `< (D_min /
  RANGE_FACTOR) / D`, in `speedup_bound`, with speedup, speedup_lo and speedup_hi NaN;
- interval: a paired bootstrap over seeds (RESAMPLES resamples, numpy generator seeded
  BOOTSTRAP_SEED): draw the panel's reporting seeds with replacement (the same draw for every
  method and budget, since seed s of every run sees the same batches), recompute the baseline's
  mean per budget, refit, recompute the method's mean and its D_base (clipped to the range
  above), and take the 2.5th and 97.5th percentiles of D_base / D over the resamples whose fit
  succeeded; an end at the range's limit is open (NaN in speedup_lo / speedup_hi, "< x" or
  "> x" in the Markdown's interval);
- the baseline's own rows have speedup 1 (its interval [1, 1]) by definition;
- where the fit misses the baseline's own mean at some budget by more than that mean's 95% t
  interval (`misfit`: three budgets and three parameters allow a near-exact fit, so a miss
  means the bounds bind and the losses do not fall like a D^-b + c), the speedup is read off the
  baseline's own means instead (`Interpolation`: linear in log D between adjacent budgets,
  within its budgets only, bounds beyond; it needs means that fall with every budget), the same
  way and with the same bootstrap; `speedup_from` says which ("power law" | "interpolated").
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, stats

from analysis.markdown import markdown_table
from analysis.records import lm_runs, run_tokens, trainable_params
from analysis.selection import Selection, declared_rows, row_suffix, select_sweep
from analysis.verdict import ALPHA, CONFIDENCE, MIN_SEEDS, compare, judge_table

BUDGET = "budget.tokens"  # the column this module adds: a run's token budget (a row key)
SIZE = "model.d_model"  # a model size is its width; its own panel where the runs differ in it
FIT_MIN_BUDGETS = 3  # a*D^-b + c has three parameters
B_MIN, B_MAX = 1e-4, 10.0  # bounds of the fitted exponent
RANGE_FACTOR = 2.0  # D_base is read off the fit within [D_min / 2, D_max * 2], never beyond
RESAMPLES = 1000
BOOTSTRAP_SEED = 0

COLUMNS = ["method", "size", "tokens", "trainable_params", "tokens_per_param", "config",
           "n_seeds", "mean", "baseline", "test", "n", "delta", "delta_lo", "delta_hi", "p",
           "p_holm", "conclusive", "speedup", "speedup_lo", "speedup_hi", "speedup_bound",
           "speedup_from", "resamples"]


# ------------------------------------------------------------------------------ budgets
def with_budget(df: pd.DataFrame) -> pd.DataFrame:
    """The LM runs with a known budget, with it as the integer column BUDGET (an exact integer,
    so that a budget's row name is exact)."""
    runs = lm_runs(df)
    tokens = run_tokens(runs)
    known = tokens.notna() & np.isfinite(tokens) & (tokens > 0)
    return runs[known].assign(**{BUDGET: tokens[known].round().astype("int64")})


def scale_rows(df: pd.DataFrame) -> list[str]:
    """The row keys of the scale selection: the study's own `study.rows`, then the budget, then
    the model size where the runs differ in it."""
    declared = declared_rows(df)
    sizes = df[SIZE].nunique(dropna=True) if SIZE in df else 0
    return declared + [BUDGET] + ([SIZE] if sizes > 1 and SIZE not in declared else [])


def scale_selection(df: pd.DataFrame, tuning_seeds=None) -> Selection:
    """The one selection rule with each budget (and size) its own table row."""
    runs = with_budget(df)
    return select_sweep(runs, tuning_seeds, rows=scale_rows(runs))


def reports(losses: pd.Series, left_out) -> bool:
    """Whether a row of a selection reports, from its reported losses (`Selection.losses`): its
    chosen configuration has a seed that is not a left-out tuning seed (any seed, where nothing
    was tuned)."""
    return len(losses) > 0 and not set(losses.index) <= set(left_out)


def reporting_budgets(selection: Selection, losses: dict | None = None) -> list[int]:
    """The budgets at which some row of the scale selection reports (`reports`); `losses`:
    each row's `Selection.losses`, where the caller has them."""
    losses = losses if losses is not None else {m: selection.losses(m)
                                                for m in selection.choices}
    return sorted({int(selection.chosen(m)[BUDGET].iloc[0]) for m in selection.choices
                   if reports(losses[m], selection.left_out)})


# ---------------------------------------------------------------------------- the fit
@dataclass
class Fit:
    """L(D) = a D^-b + c fitted to a baseline's mean loss at its budgets (D in tokens); a, b, c
    NaN and `reason` set where the fit failed."""

    a: float
    b: float
    c: float
    d_min: float  # the smallest and largest budget fitted
    d_max: float
    n: int  # budgets fitted
    rmse: float = math.nan
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason

    def loss(self, tokens):
        """L(D) = a D^-b + c."""
        return self.a * np.power(np.asarray(tokens, dtype=float), -self.b) + self.c

    @property
    def limits(self) -> tuple[float, float]:
        """The budgets D_base may take: [D_min / RANGE_FACTOR, D_max x RANGE_FACTOR]."""
        return self.d_min / RANGE_FACTOR, self.d_max * RANGE_FACTOR

    def refit(self, tokens, means) -> Fit:
        """The fit to resampled baseline means (the bootstrap), started from this one, read
        within this one's limits."""
        refit = fit_power_law(tokens, means, start=(self.a * self.d_min ** -self.b, self.b,
                                                    self.c))
        refit.d_min, refit.d_max = self.d_min, self.d_max
        return refit

    def tokens_for(self, loss):
        """D_base = L^-1(loss) = (a / (loss - c))^(1/b), clipped to `limits`: a loss at or below
        c (never reached) maps to the upper limit, +inf (diverged) to the lower one; NaN stays
        NaN."""
        loss = np.asarray(loss, dtype=float)
        low, high = self.limits
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            excess = loss - self.c
            d = np.where(excess > 0, np.power(self.a / excess, 1.0 / self.b), np.inf)
        return np.where(np.isnan(loss), np.nan, np.clip(d, low, high))


@dataclass
class Interpolation:
    """Where no power law describes the baseline (`misfit`): its own mean losses, linear in
    log D between adjacent budgets, read only within its budgets (a loss below its lowest mean
    is the bound `> D_max / D`, above its highest `< D_min / D`). Needs means that fall with
    every budget (`reason` says where they do not). The same interface as `Fit` for
    `speedup_of`, `bootstrap_speedups` and `interval`."""

    tokens: np.ndarray  # ascending budgets
    means: np.ndarray  # the baseline's mean loss at each
    why: str  # why the power law was not used
    reason: str = ""

    @classmethod
    def of(cls, tokens, means, why: str) -> Interpolation:
        d, y = np.asarray(tokens, dtype=float), np.asarray(means, dtype=float)
        keep = np.isfinite(d) & np.isfinite(y)
        order = np.argsort(d[keep])
        d, y = d[keep][order], y[keep][order]
        reason = ""
        if len(d) < 2:
            reason = "fewer than 2 budgets with a finite baseline loss"
        elif not (np.diff(y) < 0).all():
            reason = "the baseline's mean loss does not fall with every budget"
        return cls(d, y, why, reason)

    @property
    def ok(self) -> bool:
        return not self.reason

    @property
    def n(self) -> int:
        return len(self.tokens)

    @property
    def limits(self) -> tuple[float, float]:
        return float(self.tokens[0]), float(self.tokens[-1])

    def loss(self, tokens):
        """The baseline's mean at D, linear in log D between budgets (its end values beyond)."""
        return np.interp(np.log(np.asarray(tokens, dtype=float)), np.log(self.tokens),
                         self.means)

    def tokens_for(self, loss):
        """D_base: the inverse of `loss`, clipped to `limits` (+inf: the lower one; NaN stays)."""
        loss = np.asarray(loss, dtype=float)
        log_d = np.interp(np.where(np.isnan(loss), 0.0, loss), self.means[::-1],
                          np.log(self.tokens[::-1]))
        return np.where(np.isnan(loss), np.nan, np.exp(log_d))

    def refit(self, tokens, means) -> Interpolation:
        return Interpolation.of(tokens, means, self.why)


def _model(x, a, b, c):
    return a * np.power(x, -b) + c


def _initial(x: np.ndarray, y: np.ndarray, c_max: float) -> list[float]:
    """A starting point for curve_fit: for c on a grid below the smallest loss, the line through
    (log x, log(y - c)) by least squares gives b and a; the (a, b, c) with the least squared error
    in y."""
    best, start = math.inf, [max(y[0] - y[-1], 1e-3), 0.5, 0.5 * c_max]
    for c in c_max * np.array([0.0, 0.5, 0.8, 0.9, 0.95, 0.99]):
        slope, intercept = np.polyfit(np.log(x), np.log(y - c), 1)
        a, b = math.exp(intercept), -slope
        if not (B_MIN <= b <= B_MAX):
            continue
        sse = float(((_model(x, a, b, c) - y) ** 2).sum())
        if sse < best:
            best, start = sse, [a, b, c]
    return start


def fit_power_law(tokens, losses, start=None) -> Fit:
    """Least-squares fit of L(D) = a D^-b + c to (tokens, losses) (losses finite, > 0).

    In scaled units x = D / D_min (so a is O(loss) and well conditioned): y = A x^-b + c, then
    a = A D_min^b. Bounds: A > 0, B_MIN <= b <= B_MAX, 0 <= c < min(y) (the asymptote lies
    below every observed loss). `start`: (A, b, c) to start from (the bootstrap starts from the
    full sample's fit), else `_initial`."""
    d = np.asarray(tokens, dtype=float)
    y = np.asarray(losses, dtype=float)
    keep = np.isfinite(d) & np.isfinite(y)
    d, y = d[keep], y[keep]
    order = np.argsort(d)
    d, y = d[order], y[order]
    nan = math.nan
    if len(np.unique(d)) < FIT_MIN_BUDGETS:
        return Fit(nan, nan, nan, nan, nan, len(d),
                   reason=f"{len(d)} budget(s) with a finite baseline loss, "
                          f"{FIT_MIN_BUDGETS} needed")
    d_min, d_max = float(d[0]), float(d[-1])
    if y.min() <= 0:
        return Fit(nan, nan, nan, d_min, d_max, len(d), reason="a loss <= 0")
    x = d / d_min
    c_max = float(y.min()) * (1 - 1e-9)
    lower, upper = [1e-12, B_MIN, 0.0], [np.inf, B_MAX, c_max]
    p0 = list(start) if start is not None else _initial(x, y, c_max)
    p0 = [min(max(v, lo), hi) for v, lo, hi in zip(p0, lower, upper)]
    p0[2] = min(p0[2], c_max * (1 - 1e-6))  # strictly inside, as trf needs
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            (big_a, b, c), _ = optimize.curve_fit(_model, x, y, p0=p0, bounds=(lower, upper),
                                                  method="trf", max_nfev=2000)
    except (RuntimeError, ValueError) as error:
        return Fit(nan, nan, nan, d_min, d_max, len(d), reason=f"curve_fit failed: {error}")
    if not all(np.isfinite([big_a, b, c])):
        return Fit(nan, nan, nan, d_min, d_max, len(d), reason="a non-finite parameter")
    if b <= B_MIN * 1.001:
        return Fit(nan, nan, nan, d_min, d_max, len(d),
                   reason="flat: the fitted exponent is at its lower bound (the baseline's loss "
                          "does not fall with tokens over these budgets)")
    rmse = float(np.sqrt(np.mean((_model(x, big_a, b, c) - y) ** 2)))
    return Fit(float(big_a * d_min ** b), float(b), float(c), d_min, d_max, len(d), rmse)


def misfit(fit: Fit, tokens, losses: list[pd.Series]) -> str:
    """Why the fit does not describe the baseline it was fitted to ("" where it does): at some
    budget its L(D) lies outside the CONFIDENCE t interval of the baseline's mean there (its
    seeds' losses; a budget with fewer than 2 finite seeds is not judged). Three budgets and
    three parameters make a near-exact fit possible, so a miss means the bounds bind: the
    losses do not fall like a D^-b + c with c >= 0 over these budgets (too few tokens, or a
    schedule effect), and a speedup read off that curve would be the curve's, not the data's."""
    for d, seed_losses in zip(tokens, losses):
        x = seed_losses[np.isfinite(seed_losses)].to_numpy(dtype=float)
        if len(x) < 2:
            continue
        half = (stats.t.ppf(0.5 + CONFIDENCE / 2, len(x) - 1) * x.std(ddof=1)
                / math.sqrt(len(x)))
        off = float(fit.loss(d)) - x.mean()
        if abs(off) > half:
            return (f"the best L(D) = {fit.a:.4g} D^-{fit.b:.4g} + {fit.c:.4g} misses the "
                    f"baseline's mean at {d:,.0f} tokens by {off:+.3g}, outside its "
                    f"{CONFIDENCE:.0%} interval (+-{half:.2g}): a power law does not describe "
                    "these budgets")
    return ""


def speedup_of(fit: Fit, loss: float, tokens: float) -> tuple[float, str]:
    """(speedup, bound) of a method with mean loss `loss` at budget `tokens`: D_base / D with
    D_base = `Fit.tokens_for`; where D_base would leave the fit's limits, (NaN, "> x") or
    (NaN, "< x") with x the limit / D. (NaN, "") without a fit or a loss."""
    if not fit.ok or not (isinstance(loss, float | int) and not math.isnan(loss)):
        return math.nan, ""
    low, high = fit.limits
    if loss < float(fit.loss(high)):  # at or below c too: no budget in range reaches it
        return math.nan, f"> {high / tokens:.3g}"
    if loss > float(fit.loss(low)):  # +inf (a diverged seed) too
        return math.nan, f"< {low / tokens:.3g}"
    return float(fit.tokens_for(loss)) / tokens, ""


# ----------------------------------------------------------------------------- bootstrap
def seed_matrix(series: list[pd.Series], seeds: list[int]) -> np.ndarray:
    """(len(series), len(seeds)) losses, NaN where a series has no such seed."""
    return np.array([s.reindex(seeds).to_numpy(dtype=float) for s in series]).reshape(
        len(series), len(seeds))


def resampled_means(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Means of each row of `values` (k, S) under each resample's seed counts (R, S): (R, k).

    mean_r = sum_s counts[r, s] x_s / sum_s counts[r, s] over the seeds s the row has (NaN
    where the resample drew none of them); +inf where it drew a diverged (+inf) seed."""
    present = ~np.isnan(values)
    infinite = np.isinf(values)
    finite = np.where(present & ~infinite, values, 0.0)
    drawn = counts @ present.T.astype(float)  # (R, k)
    with np.errstate(divide="ignore", invalid="ignore"):
        means = (counts @ finite.T) / drawn
    means = np.where(drawn > 0, means, np.nan)
    return np.where((counts @ infinite.T.astype(float)) > 0, np.inf, means)


def bootstrap_speedups(base_tokens: np.ndarray, base_values: np.ndarray, fit: Fit,
                       method_tokens: np.ndarray, method_values: np.ndarray,
                       resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED
                       ) -> tuple[np.ndarray, int]:
    """(R_ok, m) resampled speedups D_base / D of m (method, budget) rows, and R_ok: the
    resamples whose refit succeeded.

    base_values (k, S): the baseline's loss per budget (k) and seed (S); method_values (m, S):
    each row's loss per seed, the same S seeds (NaN: not run). Each resample draws S seed indices
    with replacement (one draw shared by every row: a paired bootstrap), recomputes the
    baseline's means per budget and refits (from the full fit), then each row's mean and
    D_base (`Fit.tokens_for`, clipped to the full fit's limits)."""
    n_seeds = base_values.shape[1]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    counts = np.zeros((resamples, n_seeds))
    np.add.at(counts, (np.repeat(np.arange(resamples), n_seeds), draws.ravel()), 1.0)
    base_means = resampled_means(base_values, counts)  # (R, k)
    method_means = resampled_means(method_values, counts)  # (R, m)
    out = []
    for r in range(resamples):
        y = base_means[r]
        ok = np.isfinite(y)
        # the limits stay the full sample's: every resample reads D_base off the same range
        refit = fit.refit(base_tokens[ok], y[ok])
        if not refit.ok:
            continue
        out.append(refit.tokens_for(method_means[r]) / method_tokens)
    return np.array(out).reshape(len(out), len(method_tokens)), len(out)


def interval(speedups: np.ndarray, fit: Fit, tokens: float) -> tuple[float, float, str, str]:
    """(lo, hi, lo_bound, hi_bound): the CONFIDENCE percentile interval of one row's resampled
    speedups (NaN ones left out); an end at a limit of the fit's range is open: NaN with its
    bound ("< x" / "> x")."""
    values = speedups[np.isfinite(speedups)]
    if not len(values):
        return math.nan, math.nan, "", ""
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    low, high = (limit / tokens for limit in fit.limits)
    lo_bound = hi_bound = ""
    if lo <= low * (1 + 1e-9):
        lo, lo_bound = math.nan, f"< {low:.3g}"
    if hi >= high * (1 - 1e-9):
        hi, hi_bound = math.nan, f"> {high:.3g}"
    return float(lo), float(hi), lo_bound, hi_bound


# -------------------------------------------------------------------------------- table
@dataclass
class Scale:
    """A sweep's scale table (one row per reporting method, budget and size; COLUMNS plus
    `speedup_interval`, its Markdown form) and the baseline fits, by (baseline, size)."""

    table: pd.DataFrame
    fits: dict[tuple[str, object], Fit | Interpolation]
    has_sizes: bool
    resamples: int
    loss: str  # the summary column reported (analysis.selection.reported_loss)


def scale_table(df: pd.DataFrame, baseline: str | None = None, tuning_seeds=None,
                resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Scale | None:
    """The scale table of one sweep's runs (module docstring); None where fewer than two
    budgets report. ``baseline``: a method (without rows) every row is compared with, as in
    `analysis.tables.tuned_table`; default AdamW on the same adapter and row."""
    if with_budget(df)[BUDGET].nunique() < 2:  # one budget (or none known): nothing to select
        return None
    sel = scale_selection(df, tuning_seeds)
    # each row's reported losses and chosen runs, once (every lookup filters the whole sweep)
    losses_of = {name: sel.losses(name) for name in sel.choices}
    if len(reporting_budgets(sel, losses_of)) < 2:
        return None
    reporting = {name for name, losses in losses_of.items() if reports(losses, sel.left_out)}
    declared = [k for k in sel.row_keys if k not in (BUDGET, SIZE)]
    has_sizes = SIZE in sel.row_keys
    methods = sel.runs.groupby("method")[["adapter", "optimizer", "row"]].first()
    display = {}  # row name -> the method with its study.rows row, without budget and size
    for name in sel.choices:
        first = sel.chosen(name).iloc[:1]
        display[name] = str(first["base"].iloc[0]) + (
            row_suffix(first, declared).iloc[0] if declared else "")
    rows = []
    for name in sel.choices:
        if name not in reporting:
            continue
        chosen = sel.chosen(name)
        first = chosen.iloc[0]
        full_base = (baseline + methods.loc[name, "row"] if baseline
                     else sel.default_baseline(name))
        losses = losses_of[name]
        finite = losses[np.isfinite(losses)]
        tokens = int(first[BUDGET])
        trainable = trainable_params(chosen[chosen["seed"].isin(losses.index)])
        row = {
            "row_name": name, "baseline_row": full_base or "",
            "method": display[name],
            "size": first[SIZE] if has_sizes else None,
            "tokens": tokens, "trainable_params": trainable,
            "tokens_per_param": tokens / trainable if trainable > 0 else math.nan,
            "config": sel.choices[name].label, "n_seeds": len(losses),
            "mean": float(losses.mean()) if len(losses) else math.nan,
            "baseline": "", "test": "", "n": None, "delta": math.nan, "delta_lo": math.nan,
            "delta_hi": math.nan, "p": math.nan, "p_holm": math.nan, "conclusive": "n/a",
            "consistent": True, "speedup": math.nan, "speedup_lo": math.nan,
            "speedup_hi": math.nan, "speedup_bound": "", "speedup_from": "", "resamples": 0,
            "lo_bound": "", "hi_bound": "",
        }
        if len(finite) < len(losses):
            row["mean"] = math.inf
        if full_base:  # the baseline as the table names it (without budget and size)
            suffix = display[name][len(str(first["base"])):]
            row["baseline"] = (baseline + suffix if baseline else display.get(full_base, ""))
        if full_base == name:
            row.update(conclusive="baseline", speedup=1.0, speedup_lo=1.0, speedup_hi=1.0)
        elif full_base in reporting:
            result = compare(losses, losses_of[full_base])
            row.update(test=result["test"], n=result["n"], delta=result["delta"],
                       delta_lo=result["ci_low"], delta_hi=result["ci_high"], p=result["p"],
                       consistent=result["consistent"])
        rows.append(row)
    table = judge_table(pd.DataFrame(rows))
    fits = _speedups(table, losses_of, resamples, seed)
    table = table.sort_values(["size", "method", "tokens"] if has_sizes else ["method", "tokens"],
                              kind="stable").reset_index(drop=True)
    table["speedup_interval"] = [_interval_text(r) for r in table.itertuples()]
    table = table.astype({"n": "Int64"})
    return Scale(table, fits, has_sizes, resamples, sel.loss_key)


def _speedups(table: pd.DataFrame, losses_of: dict, resamples: int, seed: int) -> dict:
    """Fill the speedup columns of `table` in place (`losses_of`: each row name's reported
    losses); the fits, by (baseline, size)."""
    fits = {}
    for (base, size), panel in table.groupby(["baseline", table["size"].astype(object)],
                                             sort=True, dropna=False):
        if not base:
            continue
        size = None if pd.isna(size) else size
        own = panel[panel["method"] == base].sort_values("tokens")
        base_losses = [losses_of[n] for n in own["row_name"]]
        means = np.array([s.mean() for s in base_losses], dtype=float)
        fit = fit_power_law(own["tokens"].to_numpy(dtype=float), means)
        if fit.ok:
            why = misfit(fit, own["tokens"].to_numpy(dtype=float), base_losses)
            if why:  # the baseline's own means, interpolated, stand in for the curve
                fit = Interpolation.of(own["tokens"].to_numpy(dtype=float), means, why)
        fits[(base, size)] = fit
        table.loc[panel.index, "speedup_from"] = (
            "" if not fit.ok else "interpolated" if isinstance(fit, Interpolation)
            else "power law")
        if not fit.ok:
            continue
        others = panel[panel["method"] != base]
        for i, r in others.iterrows():
            value, bound = speedup_of(fit, float(r["mean"]), float(r["tokens"]))
            table.loc[i, ["speedup", "speedup_bound"]] = [value, bound]
        if others.empty or resamples <= 0:
            continue
        # the paired bootstrap over the panel's reporting seeds
        finite_budget = np.isfinite(means)
        other_losses = [losses_of[n] for n in others["row_name"]]
        seeds = sorted({int(s) for s in pd.concat(base_losses + other_losses).index})
        speedups, ok = bootstrap_speedups(
            own["tokens"].to_numpy(dtype=float)[finite_budget],
            seed_matrix([s for s, f in zip(base_losses, finite_budget) if f], seeds),
            fit, others["tokens"].to_numpy(dtype=float), seed_matrix(other_losses, seeds),
            resamples, seed)
        for j, (i, r) in enumerate(others.iterrows()):
            table.loc[i, "resamples"] = ok
            if table.loc[i, "speedup_bound"] or not ok:  # a bound has no interval
                continue
            lo, hi, lo_bound, hi_bound = interval(speedups[:, j], fit, float(r["tokens"]))
            table.loc[i, ["speedup_lo", "speedup_hi", "lo_bound", "hi_bound"]] = [
                lo, hi, lo_bound, hi_bound]
    return fits


def _interval_text(row) -> str:
    """"1.30 [1.21, 1.42]", "> 4.00", "2.10 [1.50, > 4.00]"; "" without a speedup."""
    if row.speedup_bound:
        return row.speedup_bound
    if pd.isna(row.speedup):
        return ""
    lo = row.lo_bound or ("" if pd.isna(row.speedup_lo) else f"{row.speedup_lo:.3g}")
    hi = row.hi_bound or ("" if pd.isna(row.speedup_hi) else f"{row.speedup_hi:.3g}")
    return f"{row.speedup:.3g}" + (f" [{lo}, {hi}]" if lo and hi else "")


# ---------------------------------------------------------------------------- writing
def write_scale(df: pd.DataFrame, figures: str | Path, sweep: str, baseline: str | None = None,
                tuning_seeds=None, resamples: int = RESAMPLES) -> list[Path]:
    """``<sweep>_scale.csv`` and ``.md`` and the figures ``<sweep>_scale`` and
    ``<sweep>_speedup`` (analysis.scale_plots); [] where fewer than two budgets report."""
    from analysis.scale_plots import scale_figure, speedup_figure

    scale = scale_table(df, baseline, tuning_seeds, resamples)
    if scale is None:
        return []
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    table = scale.table
    columns = [c for c in COLUMNS if scale.has_sizes or c != "size"]
    csv, md = figures / f"{sweep}_scale.csv", figures / f"{sweep}_scale.md"
    table[columns].to_csv(csv, index=False)
    shown = ["method", "size", "tokens", "tokens_per_param", "config", "n_seeds", "mean",
             "baseline", "n", "delta", "delta_lo", "delta_hi", "p_holm", "conclusive",
             "speedup_interval"]
    shown = [c for c in shown if scale.has_sizes or c != "size"]
    md.write_text(f"# {sweep}: verdicts across scale\n\n" + describe(scale) + "\n\n"
                  + markdown_table(table[shown].rename(
                      columns={"speedup_interval": "speedup [95%]"})) + "\n")
    return [md, csv] + scale_figure(scale, figures, sweep) + speedup_figure(scale, figures,
                                                                             sweep)


def describe(scale: Scale) -> str:
    """The Markdown's text: what each column is, and every baseline fit."""
    table = scale.table
    budgets = ", ".join(f"{int(t):,}" for t in sorted(table["tokens"].unique()))
    m = int(table["p"].notna().sum())
    text = (
        f"Each method at each budget it reports ({budgets} tokens = trainer.max_steps x "
        "trainer.batch_size x model.seq_len"
        + ("; each model width `size` (model.d_model) its own panel" if scale.has_sizes else "")
        + f"), its `{scale.loss}` at the configuration the selection rule chooses at that "
        "budget alone, over the seeds its row reports (the tuning seeds left out; only "
        "budgets where some method reports on such seeds appear, so a grid's short tuning "
        "runs are not a budget here). "
        "tokens_per_param = tokens / the method's trainable parameters. delta = mean over "
        "seeds of (method - baseline), paired by seed at the same budget (< 0: the method's "
        f"loss is lower), [delta_lo, delta_hi] its {CONFIDENCE:.0%} t interval (n - 1 df); "
        f"p_holm = Holm's adjustment over this table's {m} comparison{'s' * (m != 1)} (every "
        f"method, budget and size); conclusive = yes for p_holm < {ALPHA} with n >= {MIN_SEEDS}."
        "\n\n"
        "speedup (token-equivalent, Wen et al., arXiv 2509.02046): per baseline and size, "
        "L(D) = a D^-b + c is fitted to the baseline's mean loss at its budgets (least squares, "
        f"a > 0, b > 0, 0 <= c < its lowest mean; >= {FIT_MIN_BUDGETS} budgets); a method with "
        "mean loss L_m at budget D has speedup D_base / D with D_base = ((L_m - c) / a)^(-1/b), "
        "the baseline tokens that reach L_m (> 1: the method needs fewer tokens; the baseline "
        f"itself: 1). D_base is read only within [D_min / {RANGE_FACTOR:g}, D_max x "
        f"{RANGE_FACTOR:g}] of the fitted budgets: beyond, the speedup is a bound (> x: the "
        "method's loss is lower than the fit reaches there, c included; < x: higher), never "
        f"extrapolated. [95%]: percentiles of a paired bootstrap over seeds ({scale.resamples} "
        f"resamples, seed {BOOTSTRAP_SEED}: the seeds drawn with replacement, the baseline's "
        "means refitted and the method's mean recomputed on each draw); an end at the range's "
        "limit is a bound.")
    lines = []
    for (base, size), fit in scale.fits.items():
        where = f"`{base}`" + (f" at d_model={size}" if size is not None else "")
        if isinstance(fit, Interpolation):
            lines.append(f"- {where}: no power law ({fit.why}); "
                         + (f"speedups read off the baseline's own means instead, linear in "
                            f"log D between adjacent budgets ({fit.n} budgets, "
                            f"{fit.limits[0]:,.0f} to {fit.limits[1]:,.0f} tokens; a loss "
                            "beyond them is a bound)." if fit.ok
                            else f"no interpolation either ({fit.reason}), so no speedup."))
        elif fit.ok:
            lines.append(f"- {where}: L(D) = {fit.a:.4g} D^-{fit.b:.4g} + {fit.c:.4g} over "
                         f"{fit.n} budgets ({fit.d_min:,.0f} to {fit.d_max:,.0f} tokens; rms "
                         f"residual {fit.rmse:.2g}).")
        else:
            lines.append(f"- {where}: no fit ({fit.reason}), so no speedup.")
    return text + ("\n\nFits:\n\n" + "\n".join(lines) if lines else "")
