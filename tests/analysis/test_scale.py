"""Verdicts across scale and the token-equivalent speedup (analysis/scale.py) on synthetic run
tables with known answers."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.scale import (
    RANGE_FACTOR,
    describe,
    fit_power_law,
    reporting_budgets,
    scale_selection,
    scale_table,
    speedup_of,
    write_scale,
)
from analysis.tables import GridEdgeWarning
from tests.analysis.test_selection import run

# The baseline's law: L(D) = A D^-B + C, D in tokens (steps x batch 8 x seq_len 128).
A, B, C = 320.0, 0.5, 2.0
BATCH, SEQ = 8, 128
STEPS = (100, 200, 400, 800, 1600)  # the ladder: D = 102,400 ... 1,638,400 tokens
SEEDS = (1, 2, 3, 4, 5)  # reporting seeds; seed 0 tunes
PARAMS = 10_000  # trainable parameters of every method


def law(tokens):
    return A * np.power(np.asarray(tokens, dtype=float), -B) + C


def noise(seed: int, salt: int) -> float:
    """Per-seed noise: a part shared by every method and budget at that seed (seed s of every run
    sees the same batches) and a small part of the run's own."""
    shared = np.random.default_rng(seed).normal(0, 0.01)
    own = np.random.default_rng(1000 * seed + salt).normal(0, 0.003)
    return float(shared + own)


def ladder_run(method, steps, seed, loss, lr=1e-3, **extra):
    return run(method, lr, seed, loss, **{
        "trainer.max_steps": steps, "trainer.batch_size": BATCH, "model.seq_len": SEQ,
        "final_test_loss": loss, "trainable_params": PARAMS, "study.baseline": "",
        **extra})


def ladder(methods: dict, steps=STEPS, grid_steps=50) -> pd.DataFrame:
    """The study protocol at every budget: two LRs on the tuning seed (the worse one 0.1 higher),
    the better one on the reporting seeds; and a short grid (`grid_steps`) on the tuning seed
    alone. `methods`: name -> loss at D tokens (before noise)."""
    rows = []
    for salt, (method, loss_at) in enumerate(methods.items()):
        for s in steps:
            tokens = s * BATCH * SEQ
            rows.append(ladder_run(method, s, 0, loss_at(tokens) + noise(0, salt)))
            rows.append(ladder_run(method, s, 0, loss_at(tokens) + 0.1, lr=1e-2))
            rows += [ladder_run(method, s, seed, loss_at(tokens) + noise(seed, 100 * salt + s))
                     for seed in SEEDS]
        if grid_steps:
            rows += [ladder_run(method, grid_steps, 0, 3.5 + lr, lr=lr) for lr in (1e-3, 1e-2)]
    return pd.DataFrame(rows)


def table_of(df, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GridEdgeWarning)
        return scale_table(df, **kwargs)


# ------------------------------------------------------------------------------- the fit
def test_fit_recovers_the_law_and_its_inverse():
    tokens = np.array(STEPS, dtype=float) * BATCH * SEQ
    fit = fit_power_law(tokens, law(tokens))
    assert fit.ok
    assert (fit.a, fit.b, fit.c) == pytest.approx((A, B, C), rel=1e-3)
    # the inverse: D_base for the law's own loss at 1.3 D is 1.3 D
    assert fit.tokens_for(law(1.3 * tokens[2])) == pytest.approx(1.3 * tokens[2], rel=1e-4)


def test_fit_fails_with_two_budgets_or_a_flat_baseline():
    assert "3 needed" in fit_power_law([1e5, 2e5], [3.0, 2.8]).reason
    flat = fit_power_law([1e5, 2e5, 4e5, 8e5], [2.5, 2.6, 2.5, 2.6])
    assert not flat.ok
    assert math.isnan(speedup_of(flat, 2.4, 1e5)[0])


def test_speedup_beyond_the_fit_is_a_bound_never_a_number():
    tokens = np.array(STEPS, dtype=float) * BATCH * SEQ
    fit = fit_power_law(tokens, law(tokens))
    d_min, d_max = tokens.min(), tokens.max()
    # below c: no budget reaches it
    assert speedup_of(fit, C - 0.05, d_max) == (
        pytest.approx(math.nan, nan_ok=True), f"> {RANGE_FACTOR * d_max / d_max:.3g}")
    # reachable only beyond D_max x RANGE_FACTOR: still a bound
    value, bound = speedup_of(fit, float(law(3 * d_max)), d_min)
    assert math.isnan(value) and bound == f"> {RANGE_FACTOR * d_max / d_min:.3g}"
    # worse than the baseline at D_min / RANGE_FACTOR (and diverged): "<"
    assert speedup_of(fit, float(law(d_min / 3)), d_min)[1] == f"< {1 / RANGE_FACTOR:.3g}"
    assert speedup_of(fit, math.inf, d_min)[1] == f"< {1 / RANGE_FACTOR:.3g}"
    # inside the range: D_base / D
    assert speedup_of(fit, float(law(1.5 * d_min)), d_min) == (pytest.approx(1.5, rel=1e-4), "")


def test_a_baseline_no_power_law_describes_is_read_off_its_own_means():
    """A baseline whose loss falls faster at each doubling (2.47, 2.27, 1.93: concave in log D,
    as riemannian_attention's short cosine budgets) with a seed spread of about 0.01: the best
    a D^-b + c (c >= 0) misses its means by more than their 95% intervals, so the speedup is
    read off the baseline's own means, linear in log D between budgets, and the fit's line says
    so. A method 0.05 lower: at 100 steps it has the baseline's loss at 100 x 2^(0.05/0.20)
    steps (speedup 1.19), at 200 at 200 x 2^(0.05/0.34) (1.11); at 400, lower than the
    baseline's loss at any budget: the bound > 1, never extrapolated."""
    curve = {100: 2.47, 200: 2.27, 400: 1.93}
    df = ladder({"lora/adamw": lambda d: curve[round(d / (BATCH * SEQ))],
                 "lora/muon": lambda d: curve[round(d / (BATCH * SEQ))] - 0.05},
                steps=tuple(curve))
    scale = table_of(df, resamples=200)
    fit = scale.fits[("lora/adamw", None)]
    assert fit.ok and "a power law does not describe these budgets" in fit.why
    muon = scale.table[scale.table["method"] == "lora/muon"].set_index("tokens")
    steps = {s * BATCH * SEQ: s for s in curve}
    first, second, last = sorted(steps)
    assert muon.loc[first, "speedup"] == pytest.approx(2 ** (0.05 / 0.20), abs=0.04)
    assert muon.loc[second, "speedup"] == pytest.approx(2 ** (0.05 / 0.34), abs=0.04)
    assert muon.loc[first, "speedup_lo"] < muon.loc[first, "speedup"] < muon.loc[
        first, "speedup_hi"]
    assert math.isnan(muon.loc[last, "speedup"]) and muon.loc[last, "speedup_bound"] == "> 1"
    assert (muon["speedup_from"] == "interpolated").all()
    assert muon["delta"].to_numpy() == pytest.approx(-0.05, abs=0.02)
    assert "speedups read off the baseline's own means instead" in describe(scale)
    # a baseline whose mean does not fall with every budget: no speedup at all, and why
    flat = {**curve, 400: 2.30}
    df = ladder({"lora/adamw": lambda d: flat[round(d / (BATCH * SEQ))],
                 "lora/muon": lambda d: flat[round(d / (BATCH * SEQ))] - 0.05},
                steps=tuple(flat))
    scale = table_of(df, resamples=0)
    assert scale.table["speedup"].isna().sum() == len(flat)  # muon's rows
    assert "does not fall with every budget" in describe(scale)


# ------------------------------------------------------------------------------ the table
@pytest.fixture(scope="module")
def synthetic():
    """AdamW on the law; Muon reaching at D the baseline's loss at 1.3 D; Riemannian Adam below
    the law's asymptote c, lower than any budget reaches."""
    df = ladder({"lora/adamw": law, "lora/muon": lambda d: law(1.3 * d),
                 "lora/riemannian_adam": lambda d: C - 0.05})
    return df, table_of(df, resamples=400)


def test_speedup_of_a_method_that_matches_the_baseline_at_1_3x_the_tokens(synthetic):
    """Records from L(D) = A D^-B + C (per-seed noise) at five budgets; a method whose loss at D
    is the baseline's at 1.3 D: speedup 1.3 inside its bootstrap interval at every interior
    budget, the interval narrow (not a vacuous one), and the baseline's own speedup 1."""
    _, scale = synthetic
    t = scale.table
    muon = t[t["method"] == "lora/muon"].set_index("tokens")
    tokens = [s * BATCH * SEQ for s in STEPS]
    for d in tokens[1:-1]:
        row = muon.loc[d]
        assert row["speedup_bound"] == ""
        assert row["speedup"] == pytest.approx(1.3, abs=0.1)
        assert row["speedup_lo"] < 1.3 < row["speedup_hi"], row
        assert row["speedup_hi"] - row["speedup_lo"] < 0.5
        assert row["resamples"] > 350  # nearly every refit succeeds
    base = t[t["method"] == "lora/adamw"]
    assert (base["speedup"] == 1).all() and (base["conclusive"] == "baseline").all()
    fit = scale.fits[("lora/adamw", None)]
    assert fit.ok and fit.n == len(STEPS)
    assert fit.b == pytest.approx(B, rel=0.25) and fit.c == pytest.approx(C, abs=0.05)


def test_a_method_better_than_anything_the_fit_reaches_gets_a_lower_bound(synthetic):
    _, scale = synthetic
    t = scale.table
    rows = t[t["method"] == "lora/riemannian_adam"]
    fit = scale.fits[("lora/adamw", None)]
    assert len(rows) == len(STEPS)
    for r in rows.itertuples():
        assert r.speedup_bound == f"> {fit.d_max * RANGE_FACTOR / r.tokens:.3g}"
        assert math.isnan(r.speedup) and math.isnan(r.speedup_lo) and math.isnan(r.speedup_hi)
        assert r.speedup_interval == r.speedup_bound


def test_paired_delta_and_interval_equal_a_hand_computation(synthetic):
    df, scale = synthetic
    t = scale.table.set_index(["method", "tokens"])
    steps = 400
    tokens = steps * BATCH * SEQ
    at = df[(df["trainer.max_steps"] == steps) & df["seed"].isin(SEEDS)]
    losses = {m: g.set_index("seed")["final_test_loss"].sort_index()
              for m, g in at.groupby("method")}
    d = (losses["lora/muon"] - losses["lora/adamw"]).to_numpy()
    row = t.loc[("lora/muon", tokens)]
    assert row["n"] == len(SEEDS) and row["test"] == "paired"
    assert row["delta"] == pytest.approx(d.mean())
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    assert (row["delta_lo"], row["delta_hi"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert row["p"] == pytest.approx(stats.ttest_rel(losses["lora/muon"],
                                                     losses["lora/adamw"]).pvalue)
    assert row["tokens_per_param"] == pytest.approx(tokens / PARAMS)


def test_holm_runs_over_every_comparison_of_the_table(synthetic):
    """p_holm: Holm's step-down adjustment over all (method, budget) comparisons at once,
    recomputed by hand; conclusive = p_holm < 0.05 with n >= 3."""
    _, scale = synthetic
    t = scale.table
    compared = t[t["test"] != ""]
    assert len(compared) == 2 * len(STEPS)  # two methods at five budgets: one family
    p = compared["p"].to_numpy()
    m = len(p)
    order = np.argsort(p)
    adjusted, running = np.empty(m), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    assert compared["p_holm"].to_numpy() == pytest.approx(adjusted)
    expected = np.where(adjusted < 0.05, "yes", "no")
    assert list(compared["conclusive"]) == list(expected)
    # the 1.3x method is conclusively lower at some budget; Riemannian Adam everywhere
    assert (compared[compared["method"] == "lora/riemannian_adam"]["conclusive"] == "yes").all()


def test_only_reporting_budgets_make_a_ladder():
    """The grid's short tuning runs (seed 0 only) are no budget; one reporting budget plus a
    grid writes no _scale output, nor does a sweep with one budget."""
    df = ladder({"lora/adamw": law, "lora/muon": lambda d: law(1.3 * d)}, steps=(400,))
    selection = scale_selection(df)
    assert sorted({int(selection.row(m)["budget.tokens"]) for m in selection.choices}) == [
        50 * BATCH * SEQ, 400 * BATCH * SEQ]
    assert reporting_budgets(selection) == [400 * BATCH * SEQ]
    assert table_of(df) is None
    one = ladder({"lora/adamw": law, "lora/muon": lambda d: law(1.3 * d)}, steps=(400,),
                 grid_steps=0)
    assert table_of(one) is None


def test_one_budget_writes_nothing(tmp_path):
    df = ladder({"lora/adamw": law, "lora/muon": lambda d: law(1.3 * d)}, steps=(400,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GridEdgeWarning)
        assert write_scale(df, tmp_path, "s") == []
    assert not list(tmp_path.iterdir())
    # records that state no budget (no trainer.max_steps, batch_size, seq_len, tokens): none
    assert table_of(df.drop(columns=["trainer.max_steps"])) is None


def test_each_budget_is_chosen_on_its_own():
    """At the small budget lr 1e-2 wins on the tuning seed, at the large one 1e-3: each budget's
    row reports its own choice (the one selection rule with the budget a row key)."""
    rows = []
    for steps, best in ((100, 1e-2), (400, 1e-3)):
        for method in ("lora/adamw", "lora/muon"):
            for lr in (1e-3, 1e-2):
                rows.append(ladder_run(method, steps, 0, 2.5 if lr == best else 2.7, lr=lr))
            rows += [ladder_run(method, steps, s, 2.5 + 0.01 * s, lr=best) for s in SEEDS]
    t = table_of(pd.DataFrame(rows)).table.set_index(["method", "tokens"])
    assert t.loc[("lora/muon", 100 * BATCH * SEQ), "config"] == "optimizer.lr=0.01"
    assert t.loc[("lora/muon", 400 * BATCH * SEQ), "config"] == "optimizer.lr=0.001"
    # two budgets: deltas, but no fit (3 needed), so no speedup and the baseline's 1
    assert t["speedup"].dropna().eq(1).all()


def test_rows_and_an_explicit_baseline_pair_each_row_with_the_baseline_at_its_budget():
    """study.rows = adapter.r: each (method, r, budget) is its own row, compared with the
    baseline at the same r and budget; an explicit baseline (another adapter) is used at every
    row, as in the tuned table; by default full/adamw is its own baseline."""
    rows = []
    for steps in (100, 400):
        for method, shift in (("lora/adamw", 0.0), ("full/adamw", -0.1)):
            for r in (4, 16):
                extra = {"adapter.r": r, "study.rows": "adapter.r"}
                rows += [ladder_run(method, steps, s, 3.0 - 0.001 * steps + shift + 0.01 * r
                                    + 0.01 * s, **extra) for s in SEEDS]
    df = pd.DataFrame(rows)
    t = table_of(df, baseline="lora/adamw", resamples=0).table.set_index(["method", "tokens"])
    full = t.loc[("full/adamw r=16", 400 * BATCH * SEQ)]
    assert full["baseline"] == "lora/adamw r=16"
    assert full["delta"] == pytest.approx(-0.1) and full["n"] == len(SEEDS)
    assert t.loc[("lora/adamw r=4", 100 * BATCH * SEQ), "conclusive"] == "baseline"
    default = table_of(df, resamples=0).table.set_index(["method", "tokens"])
    assert default.loc[("full/adamw r=4", 100 * BATCH * SEQ), "conclusive"] == "baseline"


def test_sizes_are_their_own_panels_and_fits(tmp_path):
    """Runs that differ in model.d_model: a size is its own row key, panel and fit."""
    frames = []
    for d_model, offset in ((32, 0.3), (64, 0.0)):
        df = ladder({"lora/adamw": lambda d, o=offset: law(d) + o,
                     "lora/muon": lambda d, o=offset: law(1.3 * d) + o},
                    steps=STEPS[:4], grid_steps=0)
        frames.append(df.assign(**{"model.d_model": d_model}))
    df = pd.concat(frames, ignore_index=True)
    # configs differ by d_model: a new config id per size
    from tests.conftest import fixture_config_id

    df["meta.config_id"] = [fixture_config_id(r) for r in df.to_dict("records")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GridEdgeWarning)
        paths = write_scale(df, tmp_path, "s", resamples=100)
    assert {p.name for p in paths} >= {"s_scale.csv", "s_scale.md", "s_scale.png",
                                       "s_speedup.png"}
    t = pd.read_csv(tmp_path / "s_scale.csv", keep_default_na=False, na_values=[""])
    for column in ("method", "size", "tokens", "tokens_per_param", "delta", "delta_lo",
                   "delta_hi", "conclusive", "speedup", "speedup_lo", "speedup_hi",
                   "speedup_bound"):
        assert column in t
    assert len(t) == 2 * 2 * 4 and set(t["size"]) == {32, 64}
    muon = t[(t["method"] == "lora/muon") & t["speedup_bound"].isna()]
    assert len(muon) >= 6 and muon["speedup"].to_numpy() == pytest.approx(1.3, abs=0.1)
    md = (tmp_path / "s_scale.md").read_text()
    # one fit per size, each finding its own asymptote (the 32-wide law sits 0.3 higher)
    c32, c64 = (float(md.split(f"at d_model={w}: L(D) = ")[1].split(" + ")[1].split(" over")[0])
                for w in (32, 64))
    assert c32 == pytest.approx(C + 0.3, abs=0.05) and c64 == pytest.approx(C, abs=0.05)


def test_python_m_analysis_writes_the_scale_outputs_of_a_budget_ladder(tmp_path):
    """End to end, a plain sweep (no study block, nothing tuned: every seed reports) at two
    budgets: `python -m analysis` writes its _scale table and figure, and REPORT.md shows them."""
    from tests.analysis.test_analysis import write_run
    from tests.conftest import run_analysis

    for evals in (2, 4):
        for optimizer, scale in (("adamw", 1.0), ("muon", 0.9)):
            for seed in range(3):
                run_id = f"lora-{optimizer}-s{seed}-{evals}"
                run_dir = write_run(
                    tmp_path / "runs", "ladder", optimizer=optimizer, seed=seed,
                    losses=[3.0] * evals + [2.0 + scale / evals + 0.01 * seed],
                    model={"name": "gpt_tiny", "d_model": 32, "seq_len": 16},
                    trainer={"max_steps": 10 * evals, "batch_size": 4},
                    meta={"run_id": run_id, "method": f"lora/{optimizer}"})
                run_dir.rename(run_dir.with_name(run_id))  # one folder per budget
    figures = tmp_path / "figures"
    run_analysis(tmp_path / "runs", figures)
    table = pd.read_csv(figures / "ladder_scale.csv")
    assert sorted(table["tokens"].unique()) == [10 * e * 4 * 16 for e in (2, 4)]
    muon = table[table["method"] == "lora/muon"].set_index("tokens")
    assert muon.loc[2 * 10 * 4 * 16, "delta"] == pytest.approx(-0.05)  # (0.9 - 1) / 2
    report = (figures / "REPORT.md").read_text()
    assert "ladder_scale.md" in report and "![ladder_scale](ladder_scale.png)" in report


def test_a_studys_ladder_feeds_the_scale_table_and_its_own_runs_the_tuned_table(tmp_path):
    """A study sweep holding its reporting-budget runs and its ladder's (study.stage
    ladder@<size>@<budget>, at two widths study.sizes declares): the tuned table is the study's
    own runs' (nothing of the ladder's budgets or widths), the scale table the ladder's, one
    panel per width; a width study.sizes does not declare is still refused."""
    from analysis.records import IncompatibleRunsError, check_compatible, load_runs
    from tests.analysis.test_analysis import write_run
    from tests.conftest import run_analysis

    sizes = {"d32": ["model.d_model=32"], "d64": ["model.d_model=64"]}

    def study(stage=None):
        return {"name": "s", "baseline": "lora/adamw", "tuning_seeds": [0], "sizes": sizes,
                **({"stage": stage} if stage else {})}

    for optimizer, gap in (("adamw", 0.0), ("muon", -0.1)):
        for seed in range(4):  # the study's own runs: 3 evaluations (20 steps)
            run_dir = write_run(tmp_path / "runs", "s", optimizer=optimizer, seed=seed,
                                losses=[3.0, 2.8, 2.5 + gap + 0.01 * seed], study=study(),
                                model={"name": "gpt_tiny", "d_model": 32, "seq_len": 16})
            run_dir.rename(run_dir.with_name(f"{run_dir.name}-own"))
        for width in (32, 64):
            for evals in (2, 4, 8):
                for seed in range(4):
                    run_dir = write_run(
                        tmp_path / "runs", "s", optimizer=optimizer, seed=seed,
                        model={"name": "gpt_tiny", "d_model": width, "seq_len": 16},
                        losses=[3.0] * evals + [2.0 + 1.0 / evals + gap + 0.01 * seed],
                        study=study(f"ladder@d{width}@{10 * evals}"),
                        meta={"run_id": f"{optimizer}-s{seed}-{width}-{evals}",
                              "method": f"lora/{optimizer}"})
                    run_dir.rename(run_dir.with_name(f"{optimizer}-s{seed}-{width}-{evals}"))
    figures = tmp_path / "figures"
    run_analysis(tmp_path / "runs", figures)
    tuned = pd.read_csv(figures / "s_tuned.csv").set_index("method")
    assert list(tuned.index) == ["lora/adamw", "lora/muon"]
    # one configuration a method: nothing tuned, every seed reports (seeds 0-3, 20 steps)
    assert tuned.loc["lora/muon", "mean"] == pytest.approx(2.4 + 0.015)
    scale = pd.read_csv(figures / "s_scale.csv")
    assert sorted(scale["size"].unique()) == [32, 64]
    assert sorted(scale["tokens"].unique()) == [10 * e * 4 * 16 for e in (2, 4, 8)]
    assert scale[scale["method"] == "lora/muon"]["delta"].to_numpy() == pytest.approx(-0.1)
    runs = load_runs(tmp_path / "runs")
    runs.loc[0, "model.seq_len"] = 32
    with pytest.raises(IncompatibleRunsError, match="model.seq_len"):
        check_compatible(runs)
