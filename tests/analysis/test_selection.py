"""The tuning protocol (docs/design.md §8) on run tables with known answers."""

import itertools
import math
import warnings

import pandas as pd
import pytest

from analysis.records import ArgumentError, IncompatibleRunsError
from analysis.selection import select_sweep
from analysis.tables import GridEdgeWarning, tuned_table
from tests.conftest import fixture_config_id

_ids = itertools.count()


def run(method, lr, seed, loss, status="completed", sweep="s", **extra):
    """A run-table row as analysis.records.load_runs gives it (with bench's meta.config_id)."""
    adapter, optimizer = method.split("/")[:2]
    row = {
        "sweep": sweep, "run_id": f"run{next(_ids)}", "method": method,
        "adapter.name": adapter, "optimizer.name": optimizer, "optimizer.lr": lr, "seed": seed,
        "status": status, "final_eval_loss": loss if status == "completed" else math.nan,
        "model.d_model": 32, "data.name": "builtin", **extra,
    }
    return {**row, "meta.config_id": fixture_config_id(row)}


def table(rows, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GridEdgeWarning)
        return tuned_table(pd.DataFrame(rows), **kwargs).set_index("method")


def seeds(method, lr, losses, **extra):
    return [run(method, lr, i, loss, **extra) for i, loss in enumerate(losses)]


def test_clear_winner_is_conclusive_with_the_right_sign():
    rows = (seeds("lora/adamw", 1e-3, [2.00, 2.01, 1.99])
            + seeds("lora/riemannian_adam", 1e-3, [1.80, 1.81, 1.79])
            + seeds("lora/sgd", 1e-3, [2.50, 2.52, 2.49]))
    t = table(rows)
    assert t.loc["lora/adamw", "conclusive"] == "baseline"
    better = t.loc["lora/riemannian_adam"]
    assert better["conclusive"] == "yes" and better["baseline"] == "lora/adamw"
    assert better["delta"] == pytest.approx(-0.2) and better["ci_high"] < 0
    worse = t.loc["lora/sgd"]
    assert worse["conclusive"] == "yes" and worse["ci_low"] > 0
    assert t.loc["lora/adamw", "n_seeds"] == 3
    assert t.loc["lora/adamw", "std"] == pytest.approx(0.01)


def test_tie_inside_noise_is_not_conclusive():
    rows = (seeds("lora/adamw", 1e-3, [2.00, 2.10, 1.90, 2.05])
            + seeds("lora/riemannian_adam", 1e-3, [2.02, 1.92, 2.08, 1.98]))
    row = table(rows).loc["lora/riemannian_adam"]
    assert row["conclusive"] == "no"
    assert row["ci_low"] < 0 < row["ci_high"]


def test_one_seed_per_side_is_never_conclusive():
    rows = seeds("lora/adamw", 1e-3, [2.0]) + seeds("lora/riemannian_adam", 1e-3, [1.0])
    assert table(rows).loc["lora/riemannian_adam", "conclusive"] == "n/a"


def test_config_whose_tuning_seed_diverged_is_not_chosen():
    rows = (seeds("lora/adamw", 1e-3, [2.0, 2.1, 2.0])
            + [run("lora/adamw", 1e-2, 0, None, "diverged")]
            + [run("lora/adamw", 1e-2, s, 1.5) for s in (1, 2)])
    row = table(rows).loc["lora/adamw"]
    assert row["optimizer.lr"] == 1e-3
    assert row["n_configs"] == 2 and row["n_diverged"] == 0
    assert row["mean"] == pytest.approx(2.05)  # reported over seeds 1, 2 (seed 0 tuned)


def test_all_configs_diverged_gives_infinite_mean():
    rows = ([run("full/adamw", lr, s, None, "diverged") for lr in (1e-2, 1e-1) for s in (0, 1)]
            + seeds("full/riemannian_sgd", 1e-3, [2.0, 2.0]))
    t = table(rows)
    assert t.loc["full/adamw", "mean"] == math.inf
    assert t.loc["full/adamw", "n_diverged"] == 2
    # Beating a baseline that diverged everywhere: too few seeds here for a verdict.
    assert t.loc["full/riemannian_sgd", "conclusive"] == "n/a"
    assert t.loc["full/riemannian_sgd", "delta"] == -math.inf


def test_failed_runs_count_like_diverged_and_incomplete_runs_are_ignored():
    rows = ([run("lora/adamw", 1e-3, 0, None, "failed")]
            + [run("lora/adamw", 1e-3, s, 2.0) for s in (1, 2)]
            + seeds("lora/adamw", 3e-3, [2.2, 2.2])
            + [run("lora/adamw", 3e-3, 2, None, "incomplete")])
    row = table(rows).loc["lora/adamw"]
    assert row["optimizer.lr"] == 3e-3 and row["n_seeds"] == 1  # seed 0 tuned, seed 2 unfinished


def test_best_value_on_grid_edge_warns_and_is_marked():
    rows = sum((seeds("lora/adamw", lr, [loss, loss + 0.01])
                for lr, loss in [(1e-4, 3.0), (1e-3, 2.5), (1e-2, 2.0)]), [])
    with pytest.warns(GridEdgeWarning, match=r"lora/adamw: best optimizer.lr=0.01"):
        t = tuned_table(pd.DataFrame(rows))
    assert t.loc[0, "edge"] == "optimizer.lr"


def test_best_value_inside_grid_or_short_grid_does_not_warn():
    inside = sum((seeds("lora/adamw", lr, [loss]) for lr, loss in
                  [(1e-4, 3.0), (1e-3, 2.0), (1e-2, 2.5)]), [])
    short = sum((seeds("lora/adamw", lr, [loss]) for lr, loss in [(1e-3, 3.0), (1e-2, 2.0)]), [])
    for rows in (inside, short):
        with warnings.catch_warnings():
            warnings.simplefilter("error", GridEdgeWarning)
            t = tuned_table(pd.DataFrame(rows))
        assert t.loc[0, "edge"] == ""


def test_a_best_rate_at_an_end_of_those_rerun_at_the_long_budget_is_marked():
    """The grid (200 steps) tried 1e-4..1e-2; the long stage (800 steps) reran 1e-3, 3e-3, 1e-2
    and 1e-3 won there: an edge at 800 steps that the grid could extend (1e-4, 3e-4 untried)."""
    grid = [run("lora/adamw", lr, 0, 2.0, **{"trainer.max_steps": 200})
            for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)]
    long = [run("lora/adamw", lr, 0, loss, **{"trainer.max_steps": 800})
            for lr, loss in ((1e-3, 1.7), (3e-3, 1.8), (1e-2, 1.9))]
    report = [run("lora/adamw", 1e-3, s, 1.7, **{"trainer.max_steps": 800}) for s in (1, 2, 3)]
    with pytest.warns(GridEdgeWarning, match=r"best optimizer.lr@800=0.001 is on the edge"):
        t = tuned_table(pd.DataFrame(grid + long + report))
    assert t.loc[0, "edge"] == "optimizer.lr@800"
    walked = [run("lora/adamw", 3e-4, 0, 1.75, **{"trainer.max_steps": 800})]
    with warnings.catch_warnings():
        warnings.simplefilter("error", GridEdgeWarning)
        assert tuned_table(pd.DataFrame(grid + long + walked + report)).loc[0, "edge"] == ""


def test_between_configs_with_reporting_seeds_the_tuning_seed_selects_not_the_reported_ones():
    """A walked long stage can leave two configs with all reporting seeds: the protocol's choice
    is the lower seed-0 (validation) loss, even where the reporting seeds' mean is higher."""
    rows = (seeds("lora/adamw", 1e-3, [1.8, 2.0, 2.0, 2.0])     # mean 1.95
            + seeds("lora/adamw", 3e-4, [1.7, 2.1, 2.1, 2.1]))  # mean 2.0, seed 0 lower
    row = table(rows).loc["lora/adamw"]
    assert row["optimizer.lr"] == 3e-4 and row["mean"] == pytest.approx(2.1)
    # as recorded: the reporting seeds' extra measurements give them another meta.config_id
    for r in rows:
        r["meta.config_id"] = f"{r['optimizer.lr']}-{'tune' if r['seed'] == 0 else 'report'}"
    row = table(rows).loc["lora/adamw"]
    assert row["optimizer.lr"] == 3e-4 and row["mean"] == pytest.approx(2.1)


def test_alpha_and_manifold_lr_are_tuned_when_they_vary():
    rows = []
    for alpha, mlr, loss in [(8, 0.1, 2.2), (16, 0.1, 2.0), (8, 0.3, 2.1), (16, 0.3, 2.3)]:
        rows += seeds("lora/riemannian_adam", 1e-3, [loss, loss],
                      **{"adapter.alpha": alpha, "optimizer.manifold_lr": mlr})
    row = table(rows).loc["lora/riemannian_adam"]
    assert (row["adapter.alpha"], row["optimizer.manifold_lr"]) == (16, 0.1)
    assert row["n_configs"] == 4
    assert "adapter.alpha=16" in row["hyperparameters"]
    assert "optimizer.manifold_lr=0.1" in row["hyperparameters"]


def test_named_baseline_is_used_for_every_row():
    rows = (seeds("lora/adamw", 1e-3, [2.0, 2.0]) + seeds("full/adamw", 1e-3, [1.5, 1.6])
            + seeds("lora/riemannian_adam", 1e-3, [1.8, 1.8]))
    t = table(rows, baseline="full/adamw")
    assert set(t["baseline"]) == {"full/adamw"}
    assert t.loc["full/adamw", "conclusive"] == "baseline"
    assert t.loc["lora/riemannian_adam", "delta"] > 0
    with pytest.raises(ArgumentError, match="baseline 'nope/adamw'"):
        table(rows, baseline="nope/adamw")


def test_default_baseline_is_adamw_on_the_same_adapter():
    rows = (seeds("lora/adamw", 1e-3, [2.0, 2.0]) + seeds("full/adamw", 1e-3, [1.5, 1.6])
            + seeds("full/riemannian_adam", 1e-3, [1.8, 1.8])
            + seeds("balora/riemannian_adam", 1e-3, [1.8, 1.8]))
    t = table(rows)
    assert t.loc["full/riemannian_adam", "baseline"] == "full/adamw"
    assert t.loc["balora/riemannian_adam", "baseline"] == ""
    assert t.loc["balora/riemannian_adam", "conclusive"] == "n/a"


def test_incompatible_architectures_are_refused_naming_the_key():
    rows = (seeds("lora/adamw", 1e-3, [2.0])
            + seeds("lora/sgd", 1e-3, [2.0], **{"model.d_model": 64}))
    with pytest.raises(IncompatibleRunsError, match="model.d_model"):
        table(rows)


def test_attention_geometry_may_differ_between_methods():
    rows = (seeds("full/adamw", 1e-3, [2.0], **{"model.attention.geometry": "euclidean"})
            + seeds("full/riemannian_adam/fixed_rank_embedded", 1e-3, [2.0],
                    **{"model.attention.geometry": "fixed_rank_embedded"}))
    assert len(table(rows)) == 2


def test_sweeps_are_tabulated_separately():
    rows = (seeds("lora/adamw", 1e-3, [2.0, 2.0]) + seeds("lora/adamw", 1e-3, [2.0, 2.0], sweep="t",
                                                           **{"model.d_model": 64}))
    t = tuned_table(pd.DataFrame(rows))
    assert list(t["sweep"]) == ["s", "t"]


def test_best_runs_are_all_seeds_of_the_chosen_config():
    rows = seeds("lora/adamw", 1e-3, [2.0, 2.0]) + seeds("lora/adamw", 1e-2, [2.5, 2.5])
    chosen = select_sweep(pd.DataFrame(rows)).chosen_runs()
    assert set(chosen["optimizer.lr"]) == {1e-3} and len(chosen) == 2


def test_two_stage_protocol_reports_the_config_run_with_more_seeds():
    """Grid on seed 0, seeds 1, 2 at its best: a lucky one-seed config does not win."""
    rows = (seeds("lora/adamw", 1e-3, [2.0, 2.3, 2.4])  # the grid's best at seed 0, then worse
            + seeds("lora/adamw", 1e-2, [2.1]) + seeds("lora/adamw", 1e-4, [2.5]))
    table = tuned_table(pd.DataFrame(rows))
    row = table[table["method"] == "lora/adamw"].iloc[0]
    assert row["optimizer.lr"] == 1e-3 and row["n_seeds"] == 2  # seeds 1, 2 report


def test_non_semantic_settings_do_not_split_a_config():
    rows = [run("lora/adamw", 1e-3, seed, 2.0 + 0.01 * seed, **{
        "trainer.threads": seed + 1, "trainer.progress": seed == 0,
        "study.name": f"s{seed}", "trainer.log_every": 10 * (seed + 1)}) for seed in range(3)]
    got = table(rows)
    assert got.loc["lora/adamw", "n_configs"] == 1 and got.loc["lora/adamw", "n_seeds"] == 3


def test_records_are_grouped_by_the_config_they_state():
    """Two configs that differ only in a key the table does not show (the eval cadence) are two
    configurations: the records' `meta.config_id` says so."""
    rows = [run("lora/adamw", 1e-3, seed, loss, **{"trainer.eval_every": every})
            for every, seeds, losses in ((10, (1, 2), [2.0, 2.1]), (20, (3, 4), [1.9, 2.0]))
            for seed, loss in zip(seeds, losses)]
    stated = table(rows).loc["lora/adamw"]
    assert (stated["n_configs"], stated["n_seeds"], stated["mean"]) == (2, 2, pytest.approx(1.95))


def test_tuning_seeds_come_from_the_records_study_block():
    """A sweep whose records state study.tuning_seeds=[1] leaves seed 1 out (not seed 0); where
    records run under successive protocols state different ones, every seed any of them tuned
    on is left out."""
    rows = [run("lora/adamw", lr, seed, 2.0 + lr + 0.01 * seed, **{"study.tuning_seeds": "1"})
            for lr in (1e-3, 1e-2) for seed in (0, 1, 2, 3)]
    row = tuned_table(pd.DataFrame(rows)).iloc[0]
    assert row["seeds"] == "0, 2, 3" and row["tuning_seeds"] == "1"
    rows[0]["study.tuning_seeds"] = "0,2"
    row = tuned_table(pd.DataFrame(rows)).iloc[0]
    assert row["seeds"] == "3" and row["tuning_seeds"] == "0,1,2"


def test_final_kappa_is_the_median_over_the_reported_seeds_where_it_is_defined():
    """Reporting seeds measured their Hessian at the end: the table's kappa is the median of the
    defined ones (an indefinite Hessian has no kappa), over the seeds it reports only."""
    def measured(kappa, kappa_gn=None):
        return {"final_sharpness/lambda_max": 1.0, "final_cond/kappa": kappa,
                "final_cond/gn/lambda_max": 1.0, "final_cond/gn/kappa": kappa_gn}

    rows = (seeds("lora/adamw", 1e-3, [2.0]) + seeds("lora/adamw", 1e-2, [2.2])  # grid, seed 0
            + [run("lora/adamw", 1e-3, s, 2.0 + s / 100, **measured(k, g))
               for s, k, g in ((1, 10.0, 3.0), (2, 30.0, 1.0), (3, None, 2.0), (4, 20.0, None),
                               (5, 1e6, 5.0))]
            + [run("lora/sgd", 1e-3, s, 2.5, **measured(None)) for s in range(1, 6)]
            + [run("full/adamw", 1e-3, s, 2.6) for s in range(1, 6)])  # measured nothing
    got = table(rows)
    assert got.loc["lora/adamw", "kappa"] == 25.0  # median of 10, 30, 20, 1e6
    assert got.loc["lora/adamw", "kappa_seeds"] == "4/5"
    assert math.isnan(got.loc["lora/sgd", "kappa"]) and got.loc["lora/sgd", "kappa_seeds"] == "0/5"
    assert math.isnan(got.loc["full/adamw", "kappa"]) and got.loc["full/adamw", "kappa_seeds"] == ""
    assert got.loc["lora/adamw", "kappa_gn"] == 2.5  # median of 3, 1, 2, 5 (seed 4 singular)
    assert got.loc["lora/adamw", "kappa_gn_seeds"] == "4/5"
    assert math.isnan(got.loc["lora/sgd", "kappa_gn"])
    assert got.loc["lora/sgd", "kappa_gn_seeds"] == "0/5"
    assert got.loc["full/adamw", "kappa_gn_seeds"] == ""


def test_hosts_name_the_processors_of_the_reported_seeds_only():
    """Where the reported runs executed (`meta.host`), per row and in the reporting sentence;
    the tuning seed's host is not reported, and a record older than `meta.host` is counted."""
    from analysis.tables import reporting

    def on(cpu):
        return {"meta.host.cpu": cpu, "meta.host.cpu_capability": "AVX512"}

    rows = (seeds("lora/adamw", 1e-3, [2.0], **on("family 23")) + seeds("lora/adamw", 1e-2, [2.2])
            + [run("lora/adamw", 1e-3, s, 2.0, **on("family 26")) for s in range(1, 4)]
            + [run("lora/sgd", 1e-3, s, 2.5, **on("family 25")) for s in range(1, 3)]
            + [run("lora/sgd", 1e-3, 3, 2.5)])
    got = table(rows)
    assert got.loc["lora/adamw", "hosts"] == "family 26 AVX512"
    assert got.loc["lora/adamw", "hosts_unstated"] == 0
    assert got.loc["lora/sgd", "hosts"] == "family 25 AVX512"
    assert got.loc["lora/sgd", "hosts_unstated"] == 1
    text = reporting(got.reset_index())
    assert "executed on 2 processors (`meta.host`: family 25 AVX512; family 26 AVX512)" in text
    assert "1 more predate" in text and "family 23" not in text
    one = table(seeds("lora/adamw", 1e-3, [2.0, 2.1, 2.2]) + seeds("lora/sgd", 1e-3, [2.0] * 3))
    assert "3 reported runs predate" not in reporting(one.reset_index())  # untuned: 6 runs
    assert "Its 6 reported runs predate `meta.host`" in reporting(one.reset_index())


def test_study_rows_split_each_method_by_rank_with_the_baseline_at_the_same_rank():
    """study.rows = [adapter.r] (balora_rank): every (method, r) is tuned and reported alone and
    compared with the baseline at the same r, paired by seed."""
    rows = []
    for r, lr_best in ((4, 1e-3), (8, 3e-3)):
        for method, shift in (("lora/adamw", 0.0), ("balora/adamw", -0.01 * r)):
            for lr in (1e-3, 3e-3):  # the grid on seed 0: lr_best wins at each rank
                loss = 2.0 + r / 100 + shift + (0 if lr == lr_best else 0.5)
                rows.append(run(method, lr, 0, loss, **{"adapter.r": r, "study.rows": "adapter.r"}))
            for seed in range(1, 6):
                loss = 2.0 + r / 100 + shift + seed / 1000
                rows.append(run(method, lr_best, seed, loss,
                                **{"adapter.r": r, "study.rows": "adapter.r"}))
    got = table(rows, baseline="lora/adamw")
    assert sorted(got.index) == ["balora/adamw r=4", "balora/adamw r=8", "lora/adamw r=4",
                                 "lora/adamw r=8"]
    for r, lr_best in ((4, 1e-3), (8, 3e-3)):
        row = got.loc[f"balora/adamw r={r}"]
        assert row["baseline"] == f"lora/adamw r={r}" and row["optimizer.lr"] == lr_best
        assert row["delta"] == pytest.approx(-0.01 * r) and row["n"] == 5
        assert row["row"] == f"r={r}" and row["seeds"] == "1, 2, 3, 4, 5"
    assert got.loc["lora/adamw r=8", "conclusive"] == "baseline"


def test_loss_vs_rank_figure_draws_each_method_at_each_rank(tmp_path):
    from analysis.plots import loss_vs_rows

    rows = [run(m, 1e-3, s, 2.0 + r / 100 + s / 1000,
                **{"adapter.r": r, "study.rows": "adapter.r"})
            for m in ("lora/adamw", "balora/adamw") for r in (4, 16) for s in range(1, 4)]
    got = tuned_table(pd.DataFrame(rows), baseline="lora/adamw")
    selection = select_sweep(pd.DataFrame(rows))
    (path,) = [p for p in loss_vs_rows(got, tmp_path, "rank", selection) if p.suffix == ".png"]
    assert path.name == "rank_loss_vs_r.png" and path.stat().st_size > 0
    plain = pd.DataFrame(seeds("lora/adamw", 1e-3, [2.0, 2.1]))
    assert loss_vs_rows(tuned_table(plain), tmp_path, "plain",
                        select_sweep(plain)) == []  # no study.rows: no figure


def test_best_runs_choose_each_table_row_apart():
    """With study.rows each (method, r) has its own chosen config (the figures and the summary's
    `tuned` marks): lr 1e-3 wins at r = 4, 3e-3 at r = 8, for both methods."""
    rows = []
    for r, lr_best in ((4, 1e-3), (8, 3e-3)):
        for method in ("lora/adamw", "balora/adamw"):
            for lr in (1e-3, 3e-3):
                loss = 2.0 + (0 if lr == lr_best else 0.5)
                rows += seeds(method, lr, [loss] * 3, **{"adapter.r": r, "study.rows": "adapter.r"})
    chosen = select_sweep(pd.DataFrame(rows)).chosen_runs()
    assert len(chosen) == 12  # 2 methods x 2 ranks x 3 seeds
    assert set(map(tuple, chosen[["adapter.r", "optimizer.lr"]].to_numpy())) == {(4, 1e-3),
                                                                               (8, 3e-3)}
    assert chosen["base"].isin(["lora/adamw", "balora/adamw"]).all()  # the records' names
    assert set(chosen["method"]) == {f"{m} r={r}" for m in ("lora/adamw", "balora/adamw")
                                     for r in (4, 8)}  # chosen per table row


def test_near_ties_are_the_configs_within_the_tuning_seeds_spread_of_the_choice():
    """Two tuning seeds (0, 1): lr 1e-3 is chosen (mean 2.02, spread 0.04); 3e-3 (mean 2.04)
    is within the spread, 1e-2 (2.11) is not; with only seed 0 tuning, the spread is 0."""
    rows = []
    for lr, tune in ((1e-3, (2.00, 2.04)), (3e-3, (2.05, 2.03)), (1e-2, (2.10, 2.12))):
        rows += [run("lora/adamw", lr, s, loss) for s, loss in enumerate(tune)]
    rows += [run("lora/adamw", 1e-3, s, 2.0 + s / 100) for s in range(2, 7)]
    row = table(rows, tuning_seeds=(0, 1)).loc["lora/adamw"]
    assert row["optimizer.lr"] == 1e-3
    assert row["near_ties"] == "optimizer.lr=0.003 (+0.0200)"
    for r in rows:  # as recorded: the reporting seeds' runs under another meta.config_id
        r["meta.config_id"] = f"{r['optimizer.lr']}-{'tune' if r['seed'] < 2 else 'report'}"
    assert table(rows, tuning_seeds=(0, 1)).loc["lora/adamw", "near_ties"] == (
        "optimizer.lr=0.003 (+0.0200)")
    one = [r for r in rows if r["seed"] != 1]
    assert table(one, tuning_seeds=(0,)).loc["lora/adamw", "near_ties"] == ""
    tied = one + [run("lora/adamw", 3e-4, 0, 2.00)]  # the same seed-0 loss: an exact tie
    assert table(tied, tuning_seeds=(0,)).loc["lora/adamw", "near_ties"] == (
        "optimizer.lr=0.0003 (+0.0000)")


def test_each_row_states_its_scale_in_tokens_per_trainable_parameter():
    """tokens = steps x batch x sequence length of the reported runs; / trainable_params."""
    scale = {"trainer.max_steps": 800, "trainer.batch_size": 8, "model.seq_len": 128}
    rows = (seeds("lora/adamw", 1e-3, [2.0, 2.1, 2.2, 2.3], trainable_params=32768, **scale)
            + seeds("full/adamw", 1e-3, [1.9, 2.0, 2.1, 2.2], trainable_params=262144, **scale))
    t = table(rows)
    assert t.loc["lora/adamw", "tokens"] == 800 * 8 * 128
    assert t.loc["lora/adamw", "tokens_per_param"] == pytest.approx(800 * 8 * 128 / 32768)
    assert t.loc["full/adamw", "tokens_per_param"] == pytest.approx(800 * 8 * 128 / 262144)
