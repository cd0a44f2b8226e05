"""A sweep without a study block (issue 30, item 2): its swept keys are axes, not tuned knobs.

The issue's example: `python -m bench.run -m adapter=lora adapter.r=4,16` (which then also swept
the default sweep's optimizer=adamw,sgd seed=0,1). Its records declare no study (`study.name`
null); the analysis used to treat `adapter.r` as a tuned hyperparameter, keep r = 16, drop seed 0
as a "tuning seed" and report n = 1 per row.
"""

import itertools
import math
import warnings

import pandas as pd
import pytest

from analysis.selection import select_sweep, split_rows
from analysis.tables import GridEdgeWarning, tuned_table
from tests.conftest import fixture_config_id

_ids = itertools.count()


def run(method, seed, loss, study=None, **config):
    """A run-table row as analysis.records.load_runs gives it for a record whose config has the
    study block (`study.name` null: a plain sweep)."""
    adapter, optimizer = method.split("/")
    row = {"sweep": "mine", "run_id": f"run{next(_ids)}", "method": method,
           "adapter.name": adapter, "optimizer.name": optimizer, "seed": seed,
           "optimizer.lr": 1e-3 if optimizer == "adamw" else 0.1, "adapter.r": 8,
           "status": "completed", "final_eval_loss": loss, "model.d_model": 32,
           "study.name": study, "study.rows": "", **config}
    return {**row, "meta.config_id": fixture_config_id(row)}


def loss_of(method, r, seed):
    """Known losses: SGD 0.3 above AdamW, r = 16 0.05 below r = 4, seed s adds s / 100."""
    return 2.0 + (0.3 if method.endswith("sgd") else 0) - (0.05 if r == 16 else 0) + seed / 100


def issue_example(study=None, seeds=(0, 1)):
    return [run(m, s, loss_of(m, r, s), study, **{"adapter.r": r})
            for m in ("lora/adamw", "lora/sgd") for r in (4, 16) for s in seeds]


def table(rows, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GridEdgeWarning)
        return tuned_table(pd.DataFrame(rows), **kwargs).set_index("method")


def test_the_issues_example_reports_every_swept_config_over_all_its_seeds():
    got = table(issue_example())
    assert sorted(got.index) == ["lora/adamw r=16", "lora/adamw r=4", "lora/sgd r=16",
                                 "lora/sgd r=4"]
    for method in got.index:
        m, r = method.split(" r=")
        row = got.loc[method]
        assert row["seeds"] == "0, 1" and row["n_seeds"] == 2  # no tuning seed left out
        assert row["n_configs"] == 1 and row["row"] == f"r={r}"
        assert row["mean"] == pytest.approx((loss_of(m, int(r), 0) + loss_of(m, int(r), 1)) / 2)
        # compared with the first adapter's AdamW at the same r
        assert row["baseline"] == f"lora/adamw r={r}"
    sgd = got.loc["lora/sgd r=4"]
    assert sgd["delta"] == pytest.approx(0.3) and sgd["n"] == 2 and sgd["test"] == "paired"
    assert sgd["conclusive"] == "n/a"  # 2 seeds: never a verdict
    assert got.loc["lora/adamw r=16", "conclusive"] == "baseline"
    assert set(got["tuning_seeds"]) == {""}


def test_the_same_records_in_a_study_are_tuned_as_before():
    """Contrast: a study's records (study.name set) tune adapter.r on seed 0 and report seed 1."""
    got = table(issue_example(study="s"))
    assert sorted(got.index) == ["lora/adamw", "lora/sgd"]
    row = got.loc["lora/adamw"]
    assert row["adapter.r"] == 16 and row["seeds"] == "1" and row["n_configs"] == 2


def test_records_without_any_study_block_keep_the_tuning_rule():
    rows = [{k: v for k, v in r.items() if not k.startswith("study.")} for r in issue_example()]
    assert sorted(table(rows).index) == ["lora/adamw", "lora/sgd"]


def test_lora_and_balora_are_compared_without_baseline_and_baseline_wins():
    rows = [run(m, s, 2.0 + (0.02 if m.startswith("balora") else 0) + s / 100)
            for m in ("balora/adamw", "lora/adamw", "balora/sgd") for s in range(3)]
    got = table(rows)
    assert got.loc["balora/adamw", "baseline"] == "lora/adamw"  # lora before balora
    assert got.loc["balora/adamw", "delta"] == pytest.approx(0.02)
    assert got.loc["balora/sgd", "baseline"] == "lora/adamw"
    given = table(rows, baseline="balora/adamw")
    assert set(given["baseline"]) == {"balora/adamw"}
    assert given.loc["lora/adamw", "delta"] == pytest.approx(-0.02)


def test_the_default_sweep_compares_every_method_with_full_adamw():
    rows = [run(f"{a}/{o}", s, 2.0) for a in ("lora", "balora", "full") for o in ("adamw", "sgd")
            for s in (0, 1)]
    got = table(rows)
    assert set(got["baseline"]) == {"full/adamw"} and list(got["n_seeds"].unique()) == [2]
    assert all(" " not in m for m in got.index)  # nothing swept within a method: no row suffix


def test_the_first_adapter_without_adamw_at_those_values_gives_way_to_the_next():
    """full/adamw ran at r = 4 only: at r = 16 the baseline is LoRA's AdamW."""
    rows = ([run("full/adamw", s, 2.0, **{"adapter.r": 4}) for s in (0, 1)]
            + [run("full/adamw", s, 2.0, **{"adapter.r": 4, "optimizer.lr": 3e-3})
               for s in (0, 1)]
            + [run("lora/adamw", s, 2.1, **{"adapter.r": r}) for r in (4, 16) for s in (0, 1)])
    got = table(rows)
    assert sorted(got.index) == ["full/adamw lr=0.001", "full/adamw lr=0.003", "lora/adamw r=16",
                                 "lora/adamw r=4"]  # each names what it swept
    assert got.loc["lora/adamw r=4", "baseline"] == "full/adamw lr=0.001"  # r = 4, lr = 1e-3
    assert got.loc["lora/adamw r=16", "baseline"] == "lora/adamw r=16"
    # at the same values of the swept keys: an AdamW row at another lr is its own baseline
    assert got.loc["full/adamw lr=0.003", "conclusive"] == "baseline"


def test_another_optimizers_unset_knob_is_no_axis_of_adamw():
    """manifold_lr swept for Riemannian Adam, null for AdamW: AdamW's row has no suffix and is
    the baseline of each manifold_lr row."""
    rows = ([run("lora/adamw", s, 2.0, **{"optimizer.manifold_lr": None}) for s in (0, 1, 2)]
            + [run("lora/riemannian_adam", s, 1.9 + mlr, **{"optimizer.manifold_lr": mlr})
               for mlr in (0.01, 0.1) for s in (0, 1, 2)])
    got = table(rows)
    assert sorted(got.index) == ["lora/adamw", "lora/riemannian_adam manifold_lr=0.01",
                                 "lora/riemannian_adam manifold_lr=0.1"]
    row = got.loc["lora/riemannian_adam manifold_lr=0.1"]
    assert row["baseline"] == "lora/adamw" and row["delta"] == pytest.approx(0.0, abs=1e-12)
    assert got.loc["lora/riemannian_adam manifold_lr=0.01", "delta"] == pytest.approx(-0.09)


def test_figures_draw_each_swept_config_as_its_own_row(tmp_path):
    """The figures take their rows from the same rule: a panel per r, both r = 4 and r = 16
    drawn, every seed; the loss-vs-r figure exists (one numeric swept key)."""
    from analysis.plots import loss_vs_rows, row_panels

    rows = issue_example(seeds=(0, 1, 2))
    df = pd.DataFrame(rows)
    assert [row for row, _ in row_panels(df)] == ["r=4", "r=16"]
    selection = select_sweep(df)
    chosen = selection.chosen_runs()
    assert len(chosen) == len(rows) and chosen["reported"].all()
    assert selection.row_axis() == ("r", {"lora/adamw r=16": 16.0, "lora/adamw r=4": 4.0,
                                          "lora/sgd r=16": 16.0, "lora/sgd r=4": 4.0})
    written = loss_vs_rows(table(rows).reset_index(), tmp_path, "mine", selection)
    assert [p.name for p in written] == ["mine_loss_vs_r.png", "mine_loss_vs_r.pdf"]
    assert set(split_rows(df)["row"]) == {" r=4", " r=16"}


def test_a_run_that_diverged_still_counts_in_its_own_row():
    rows = issue_example()
    rows[0] = {**rows[0], "status": "diverged", "final_eval_loss": math.nan}
    got = table(rows)
    assert got.loc["lora/adamw r=4", "seeds"] == "0 (diverged), 1"
    assert got.loc["lora/adamw r=4", "mean"] == math.inf


def test_which_records_declare_a_study():
    """A name, stages, rows or non-default tuning seeds state a study's protocol; a plain run's
    block (all defaults, or only a declared baseline, as gpu_check's) does not; no block at all
    keeps the tuning rule."""
    from analysis.selection import declares_study

    plain = {"study.name": None, "study.stages": "", "study.rows": "", "study.tuning_seeds": "0",
             "study.baseline": None, "study.seconds_per_run": 30.0}
    cases = [({}, False), ({"study.baseline": "full/adamw"}, False),
             ({"study.name": "s"}, True), ({"study.stages": "grid:s"}, True),
             ({"study.rows": "adapter.r"}, True), ({"study.tuning_seeds": "1"}, True)]
    for change, expected in cases:
        assert declares_study(pd.DataFrame([{**plain, **change}, plain])) is expected, change
    assert declares_study(pd.DataFrame([{"seed": 0}])) is True
