"""`python -m experiments`: the studies' YAMLs, their plan, and the commands of each stage
computed from synthetic records (the smoke runs of every study: tests/e2e/test_study_smoke.py)."""

from __future__ import annotations

import json

import pytest
import yaml

from bench.record import config_digest
from experiments.__main__ import discover, load_experiment, stages, sweep_of
from tests.conftest import ROOT as REPO

STUDIES, _ = discover()


def test_every_stage_finds_its_sweep_folder():
    expected = {"balora_toy": "balora_toy", "balora_finetune_full": "balora_finetune",
                "riemannian_attention_adamw": "riemannian_attention",
                "adapters_x_optimizers_riemannian": "adapters_x_optimizers"}
    for name, study in STUDIES.items():
        for _, stage in stages(study):
            experiment = stage.partition("@")[0]  # riemannian_attention@cosine: a variant
            assert sweep_of(experiment) == expected.get(experiment, name), experiment
            block = load_experiment(experiment).study
            assert (block.name, block.baseline) == (name, study.baseline), experiment


def test_plan_lists_every_study_with_its_run_count(tmp_path, capsys):
    from experiments.__main__ import main

    assert main(["--plan", "--out-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    totals = {line.split()[0]: int(line.split()[3]) for line in lines if "all stages" in line}
    # the grids (4 adapters x 3 toy optimizers; 7 + 2 x 5 x 5 + 4 x 5 x 5 LR x alpha;
    # 2 x 8 + 2 x 5 x 6 + 21 + 2 x 6 x 6 + 2 x 7 x 9 + 5 x 5 x 3), plus, with no grid run yet,
    # for one method per stage: 3 learning rates of a long stage, 5 reporting seeds of a seeds stage
    # a long stage: the best and two neighbours of each tuned knob on the 2 tuning seeds,
    # (1 + 2 k) x 2 runs for one method until a grid ran; k counts the grid's swept rates and
    # alpha/r, LoRA+'s ratio, and the study's `tune` knobs (weight decay; the AdamW part's LR of
    # the Riemannian and Muon rows; alpha/r of the Riemannian LoRA arms and SmolLM2's arms)
    long = lambda k: (1 + 2 * k) * 2  # noqa: E731
    assert totals == {"balora_toy": 12,
                      # grids 7 + 50 + 4 x 25; long: full (lr, wd), five LoRA-type (+ alpha)
                      # ladders (full, LoRA/BaLoRA): 3 budgets x 11 runs, one method each
                      "balora_finetune": 7 + 50 + 4 * 25 + long(2) + 5 * long(3) + 6 * 5
                      + 2 * 3 * 11,
                      # grids 6 + 50 + 7; long: AdamW (lr, wd), Riemannian (manifold lr, AdamW
                      # part lr, wd), Muon (lr, wd, AdamW part lr), each also under cosine
                      # ladders (AdamW, Muon, the design points): 3 sizes x 3 budgets x
                      # (3 rates x 2 tuning seeds + 5 reporting seeds), one method each
                      # the 2026 optimizers' three grids of 2 x 7 (lr, wd, AdamW part lr), the
                      # AdEMAMix/Schedule-Free one extended by 2.5e-4 to 2 x 8
                      "riemannian_attention": 6 + 50 + 7 + 2 * (long(2) + 2 * long(3)) + 6 * 5
                      + 3 * 3 * 3 * 11 + 3 * (14 + long(3) + 5) + 2,
                      # long: full (lr, wd), LoRA (+ alpha), Riemannian (manifold lr, alpha,
                      # wd), Muon and preconditioned (lr, alpha, wd), LoRA+ (+ ratio)
                      # ladders: six stages, 3 budgets x 11 runs, one method each
                      # the 2026 optimizers: LoRA-RITE (lr, alpha, wd), SOAP/MuonH on full
                      # (lr, wd; full trains attention only: no AdamW part)
                      "adapters_x_optimizers": 16 + 60 + 21 + 72 + 126 + 75
                      + long(2) + 4 * long(3) + long(4) + 6 * 5 + 4 * 3 * 11
                      + 60 + long(3) + 5 + 16 + long(2) + 5 + 2 * 3 * 11,
                      "smollm2_finetune": 4 + 8 + 4 + 4 + 4 + 5 * long(3) + 5 * 5,
                      "balora_rank": 2 * 210 + 240 + 245 + 3 * 5 + 3 * 11}


def _conf(tmp_path, monkeypatch, files: dict[str, str]):
    """The experiments module over a copy of conf/ whose experiments are `files` (each a global
    package, as every experiment YAML is)."""
    import shutil

    import experiments.__main__ as experiments

    shutil.copytree(REPO / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("experiment"))
    conf = tmp_path / "conf" / "experiment"
    conf.mkdir(parents=True)
    for name, text in files.items():
        (conf / f"{name}.yaml").write_text("# @package _global_\n" + text)
    monkeypatch.setattr(experiments, "CONF", conf)
    monkeypatch.setattr(experiments, "ROOT", tmp_path)
    return experiments


@pytest.mark.parametrize(("files", "error"), [
    ({"a": "study:\n  name: a\n"},
     "conf/experiment/a.yaml: study.stages is empty; list its stages, each one of "
     "grid:<experiment>, long:<experiment>, seeds:<experiment>, ladder:<experiment>"),
    ({"a": "study:\n  name: a\n  stages: [grid:b]\n"},
     "conf/experiment/a.yaml: study.stages entry 'grid:b' names no experiment "
     "(no conf/experiment/b.yaml)"),
    ({"a": "study:\n  name: a\n  stages: [run:a]\n"},
     "conf/experiment/a.yaml: study.stages entry 'run:a'; allowed: grid:<experiment>, "
     "long:<experiment>, seeds:<experiment>, ladder:<experiment>"),
    ({"a": "study:\n  name: a\n  stages: [grid:a, long:a]\n"},
     "conf/experiment/a.yaml: a long stage needs study.long, the overrides of the reporting "
     "budget (trainer.max_steps=...)"),
    ({"a": "study:\n  name: a\n  stage_list: [grid:a]\n"},
     "conf/experiment/a.yaml: unknown key study.stage_list; allowed keys of study: name, "
     "baseline, stages, long, reporting, from_baseline, variants, variant_methods, "
     "seconds_per_run, tuning_seeds, reporting_seeds, smoke, rows, tune, grid_extend, budgets, "
     "sizes, ladder_methods, stage"),
    ({"a": "study:\n  name: a\n  stages: [grid:a, ladder:a]\n"},
     "conf/experiment/a.yaml: a ladder stage needs study.budgets, the trainer.max_steps of each "
     "budget"),
    ({"a": "study:\n  name: a\n  stages: [grid:a]\n", "b": "study:\n  name: a\n"},
     "conf/experiment/b.yaml: study.name='a' but a.yaml's study.stages do not list it"),
    ({"a": "study:\n  name: a\n  stages: [grid:a]\n", "b": "study:\n  name: c\n"},
     "conf/experiment/b.yaml: study.name='c' is not a study; studies: a (a study is "
     "conf/experiment/<name>.yaml with study.name=<name>)"),
    ({"a": "study:\n  name: a\n  baseline: full/adamw\n  stages: [grid:a, grid:b]\n",
      "b": "study:\n  name: a\n"},
     "conf/experiment/b.yaml: study.baseline=None differs from its study's ('full/adamw' in "
     "a.yaml)"),
    ({"a": "study:\n  name: a\n  stages: [grid:a, grid:b]\n", "b": "sweep: a\n"},
     "conf/experiment/b.yaml is a stage of study a but its study.name is not 'a'"),
])
def test_a_broken_study_is_an_error_not_a_skip(tmp_path, monkeypatch, capsys, files, error):
    experiments = _conf(tmp_path, monkeypatch, files)
    assert experiments.main(["--plan"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {error}"


def test_a_stage_inherits_its_study_and_a_plain_experiment_is_named(tmp_path, monkeypatch,
                                                                    capsys):
    experiments = _conf(tmp_path, monkeypatch, {
        "a": "sweep: a\nstudy:\n  name: a\n  stages: [grid:a, grid:a_more]\n",
        "a_more": "defaults:\n  - a\n  - _self_\nhydra:\n  sweeper:\n    params:\n"
                  "      seed: 0,1\n",
        "plain": "sweep: p\n"})
    studies, loose = experiments.discover()
    assert list(studies) == ["a"] and loose == ["plain"]
    assert experiments.sweep_of("a_more") == "a" and experiments.count_runs("a_more") == 2
    assert experiments.main(["--plan", "--out-dir", str(tmp_path)]) == 0
    assert "not part of a study (no study block): plain" in capsys.readouterr().err


def _record(out, sweep, name, method, overrides, loss, lr, seed=0, **config):
    """A finished seed run's record as bench.run writes it (the keys the stages read; more of
    its config in `config`)."""
    run_dir = out / sweep / name
    run_dir.mkdir(parents=True)
    config = {**config, "seed": seed, "optimizer": {"lr": lr},
              "meta": {"method": method, "overrides": [*overrides, f"seed={seed}"],
                       "config_id": config_digest({"overrides": overrides}, {})}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed",
                                                      "final_eval_loss": loss}))


STAGED = {
    "s": "sweep: s\nstudy:\n  name: s\n  baseline: full/adamw\n"
         "  stages: [grid:s_base, long:s_base, grid:s, long:s, seeds:s_base, seeds:s]\n"
         "  long: [trainer.max_steps=40]\n  reporting: [metrics.hessian.every=20]\n"
         "  from_baseline: {s: [optimizer.lr]}\n"
         "hydra:\n  sweeper:\n    params:\n      optimizer.manifold_lr: 1e-3,3e-3,1e-2\n",
    "s_base": "sweep: s\nstudy:\n  name: s\n  baseline: full/adamw\n"
              "hydra:\n  sweeper:\n    params:\n      optimizer.lr: 3e-2,1e-3,1e-2,3e-3\n",
}


def _args(command, kind, exp):
    """A stage command's arguments after `python -m bench.run -m`, without the study.stage
    it must carry (the runs' W&B job_type): kind[@variant]."""
    variant = exp.partition("@")[2]
    stage = [o for o in command if o.startswith("study.stage=")]
    assert stage == [f"study.stage={kind}" + (f"@{variant}" if variant else "")], command
    return [o for o in command[4:] if not o.startswith("study.stage=")]


def _stage_commands(tmp_path, monkeypatch, files, name):
    """(the experiments module over these files, cmd(kind, experiment) -> the stage's commands
    without `python -m bench.run -m`, the runs folder) for study `name`."""
    experiments = _conf(tmp_path, monkeypatch, files)
    study = experiments.discover()[0][name]
    out = tmp_path / "runs"

    def cmd(kind, exp):
        return [_args(c, kind, exp) for c in experiments.commands(kind, exp, out, study)]

    return experiments, cmd, out


def test_long_stage_reruns_the_best_rate_and_its_neighbours_and_seeds_take_its_best(
        tmp_path, monkeypatch, capsys):
    _, cmd, out = _stage_commands(tmp_path, monkeypatch, STAGED, "s")
    # the Riemannian grid needs the baseline's tuned LR first: nothing runs, and it says why
    assert cmd("grid", "s") == []
    assert "takes optimizer.lr from the baseline full/adamw" in capsys.readouterr().err
    base = ["+experiment=s_base", "adapter=full"]
    for lr, loss in (("1e-3", 2.0), ("3e-3", 1.9), ("1e-2", 2.1), ("3e-2", 2.5)):
        _record(out, "s", f"b-{lr}", "full/adamw", [*base, f"optimizer.lr={lr}"], loss, float(lr))
    # the grid's best (3e-3) and its neighbours in the grid's sorted values, at the long budget
    assert cmd("long", "s_base") == [[*base, "optimizer.lr=1e-3,3e-3,1e-2",
                                      "trainer.max_steps=40", "seed=0", f"out_dir={out}"]]
    # before the long stage, the baseline's tuned LR is its grid's best; after, the long best
    assert cmd("grid", "s") == [["+experiment=s", "optimizer.lr=0.003", f"out_dir={out}"]]
    for lr, loss in (("1e-3", 1.7), ("3e-3", 1.8), ("1e-2", 1.75)):
        _record(out, "s", f"bl-{lr}", "full/adamw",
                [*base, f"optimizer.lr={lr}", "trainer.max_steps=40"], loss, float(lr))
    assert cmd("grid", "s") == [["+experiment=s", "optimizer.lr=0.001", f"out_dir={out}"]]
    # a resumed long stage: its own (lower-loss, longer) runs are not grid runs
    assert cmd("long", "s_base") == [[*base, "optimizer.lr=1e-3,3e-3,1e-2",
                                      "trainer.max_steps=40", "seed=0", f"out_dir={out}"]]
    # the Riemannian grid's best is on the grid's edge: one neighbour only
    riem = ["+experiment=s", "optimizer.lr=0.001", "optimizer=riemannian_adam"]
    for lr, loss in (("1e-3", 1.6), ("3e-3", 1.65), ("1e-2", 1.9)):
        _record(out, "s", f"r-{lr}", "full/riemannian_adam",
                [*riem, f"optimizer.manifold_lr={lr}"], loss, 0.001)
    assert cmd("long", "s") == [[*riem, "optimizer.manifold_lr=1e-3,3e-3",
                                 "trainer.max_steps=40", "seed=0", f"out_dir={out}"]]
    # seeds: the long stage's best (not the grid's, which ran a shorter budget), the reporting
    # overrides and the reporting seeds
    assert cmd("seeds", "s_base") == [[*base, "optimizer.lr=1e-3", "trainer.max_steps=40",
                                       "metrics.hessian.every=20", "seed=1,2,3,4,5",
                                       f"out_dir={out}"]]
    assert cmd("seeds", "s") == []  # its long stage has not run yet
    assert "run its long stage first" in capsys.readouterr().err


def test_a_long_stage_walks_on_while_its_best_rate_is_an_end_of_those_it_ran(tmp_path,
                                                                           monkeypatch):
    files = {**STAGED, "s_base": STAGED["s_base"].replace("3e-2,1e-3,1e-2,3e-3",
                                                          "1e-4,3e-4,1e-3,3e-3,1e-2")}
    experiments, _, out = _stage_commands(tmp_path, monkeypatch, files, "s")
    study = experiments.discover()[0]["s"]
    base, long = ["+experiment=s_base", "adapter=full"], "trainer.max_steps=40"
    for lr, loss in (("1e-4", 2.3), ("3e-4", 2.1), ("1e-3", 2.0), ("3e-3", 1.9), ("1e-2", 2.2)):
        _record(out, "s", f"g-{lr}", "full/adamw", [*base, f"optimizer.lr={lr}"], loss, float(lr))
    stage = experiments.stage_commands("long", "s_base", out, study)
    tail = [long, "seed=0", f"out_dir={out}"]
    assert _args(next(stage), "long", "s_base") == [*base, "optimizer.lr=1e-3,3e-3,1e-2", *tail]
    for lr, loss in (("1e-3", 1.7), ("3e-3", 1.8), ("1e-2", 1.9)):  # the lowest rate wins
        _record(out, "s", f"l-{lr}", "full/adamw", [*base, f"optimizer.lr={lr}", long], loss,
                float(lr))
    # 1e-3 is an end of the rates run at the long budget but not of the grid: one more below
    assert _args(next(stage), "long", "s_base") == [*base, "optimizer.lr=3e-4,1e-3,3e-3", *tail]
    _record(out, "s", "l-3e-4", "full/adamw", [*base, "optimizer.lr=3e-4", long], 1.75, 3e-4)
    assert next(stage, None) is None  # 1e-3 is now between two rates it beat: the walk stops
    assert _args(experiments.commands("seeds", "s_base", out, study)[0], "seeds", "s_base") == [
        *base, "optimizer.lr=1e-3", long, "metrics.hessian.every=20", "seed=1,2,3,4,5",
        f"out_dir={out}"]


VARIANTS = {
    "v": "sweep: v\nstudy:\n  name: v\n  baseline: full/adamw\n"
         "  stages: [grid:v, long:v, long:v@cosine, grid:v_muon, long:v_muon, seeds:v, "
         "seeds:v@cosine, seeds:v_muon]\n"
         "  long: [trainer.max_steps=40]\n"
         "  variants: {cosine: [trainer.lr_schedule=warmup_cosine]}\n"
         "  variant_methods: {cosine: [full/adamw]}\n"
         "  from_baseline: {v_muon: [optimizer.adamw_lr=optimizer.lr]}\n"
         "hydra:\n  sweeper:\n    params:\n      optimizer.lr: 1e-3,3e-3,1e-2\n",
    "v_muon": "defaults:\n  - v\n  - _self_\n",
}


def test_a_variant_reruns_the_grid_best_with_its_overrides_and_keeps_to_its_methods(
        tmp_path, monkeypatch, capsys):
    experiments, cmd, out = _stage_commands(tmp_path, monkeypatch, VARIANTS, "v")
    adamw, riem = ["+experiment=v", "adapter=full"], ["+experiment=v", "optimizer=riemannian"]
    for lr, loss in (("1e-3", 2.0), ("3e-3", 1.9), ("1e-2", 2.1)):
        _record(out, "v", f"a-{lr}", "full/adamw", [*adamw, f"optimizer.lr={lr}"], loss,
                float(lr))
        _record(out, "v", f"r-{lr}", "full/riemannian", [*riem, f"optimizer.lr={lr}"], loss,
                float(lr))
    cosine = "trainer.lr_schedule=warmup_cosine"
    # the variant's long stage: the grid's best and its neighbours, long + variant overrides,
    # for its methods only (full/riemannian is not one of them)
    assert cmd("long", "v@cosine") == [[*adamw, "optimizer.lr=1e-3,3e-3,1e-2",
                                        "trainer.max_steps=40", cosine, "seed=0",
                                        f"out_dir={out}"]]
    assert len(cmd("long", "v")) == 2  # the plain long stage: every method
    long = "trainer.max_steps=40"
    _record(out, "v", "al-1e-3", "full/adamw", [*adamw, "optimizer.lr=1e-3", long], 1.7, 1e-3)
    _record(out, "v", "ac-3e-3", "full/adamw", [*adamw, "optimizer.lr=3e-3", long, cosine], 1.6,
            3e-3)
    # the variant's long best is its grid best (3e-3): the walk adds nothing
    study = experiments.discover()[0]["v"]
    assert len(list(experiments.stage_commands("long", "v@cosine", out, study))) == 1
    # seeds: the plain stage never takes the variant's (lower) run, the variant only its own
    assert cmd("seeds", "v")[0] == [*adamw, "optimizer.lr=1e-3", long, "seed=1,2,3,4,5",
                                    f"out_dir={out}"]
    assert cmd("seeds", "v@cosine") == [[*adamw, "optimizer.lr=3e-3", long, cosine,
                                         "seed=1,2,3,4,5", f"out_dir={out}"]]
    # the Muon grid takes the baseline's tuned LR (its plain long stage's best) as adamw_lr
    assert cmd("grid", "v_muon") == [["+experiment=v_muon", "optimizer.adamw_lr=0.001",
                                      f"out_dir={out}"]]
    # a variant nobody declared, or on a grid stage, is an error naming the declared ones
    bad = _conf(tmp_path / "bad", monkeypatch, {**VARIANTS, "v": VARIANTS["v"].replace(
        "seeds:v@cosine", "seeds:v@warm")})
    assert bad.main(["--plan"]) == 2
    assert ("study.stages entry 'seeds:v@warm': a variant (@name) needs a long or seeds stage "
            "and an entry in study.variants (declared: cosine)") in capsys.readouterr().err


def test_a_study_with_rows_finds_its_baseline_in_the_baseline_row(tmp_path, monkeypatch):
    """With study.rows the baseline's method key carries its row ("full/adamw
    lr_schedule=warmup_constant"); the Muon grid still takes the baseline's tuned LR."""
    files = {**VARIANTS, "v": VARIANTS["v"].replace(
        "  long: [", "  rows: [trainer.lr_schedule]\n  long: [")}
    _, cmd, out = _stage_commands(tmp_path, monkeypatch, files, "v")
    adamw, long = ["+experiment=v", "adapter=full"], "trainer.max_steps=40"
    for lr, loss in (("1e-3", 1.7), ("3e-3", 1.8)):
        _record(out, "v", f"al-{lr}", "full/adamw", [*adamw, f"optimizer.lr={lr}", long], loss,
                float(lr), trainer={"lr_schedule": "warmup_constant"})
    assert cmd("grid", "v_muon") == [["+experiment=v_muon", "optimizer.adamw_lr=0.001",
                                      f"out_dir={out}"]]


def test_a_variant_long_stage_takes_the_baseline_keys_from_the_baseline_under_that_variant(
        tmp_path, monkeypatch, capsys):
    """The Muon grid ran with the plain baseline's tuned LR as its AdamW part; its cosine long
    stage sets that part to the cosine baseline's tuned LR, which differs."""
    files = {**VARIANTS, "v": VARIANTS["v"].replace(
        "grid:v_muon, long:v_muon,", "grid:v_muon, long:v_muon, long:v_muon@cosine,").replace(
        "cosine: [full/adamw]", "cosine: [full/adamw, full/muon]")}
    experiments, cmd, out = _stage_commands(tmp_path, monkeypatch, files, "v")
    study = experiments.discover()[0]["v"]
    adamw, long = ["+experiment=v", "adapter=full"], "trainer.max_steps=40"
    cosine = "trainer.lr_schedule=warmup_cosine"
    _record(out, "v", "al-1e-3", "full/adamw", [*adamw, "optimizer.lr=1e-3", long], 1.7, 1e-3)
    muon = ["+experiment=v_muon", "optimizer=muon", "optimizer.adamw_lr=0.001"]
    for lr, loss in (("1e-3", 2.0), ("3e-3", 1.5), ("1e-2", 2.1)):
        _record(out, "v", f"m-{lr}", "full/muon", [*muon, f"optimizer.lr={lr}"], loss,
                float(lr))
    # no cosine baseline yet: nothing runs, and it says why
    assert cmd("long", "v_muon@cosine") == []
    assert "takes optimizer.adamw_lr=optimizer.lr from the baseline full/adamw@cosine" in (
        capsys.readouterr().err)
    for lr, loss in (("1e-3", 1.8), ("3e-3", 1.6), ("1e-2", 1.9)):
        _record(out, "v", f"ac-{lr}", "full/adamw", [*adamw, f"optimizer.lr={lr}", long, cosine],
                loss, float(lr))
    tail = [long, cosine, "seed=0", f"out_dir={out}"]
    stage = experiments.stage_commands("long", "v_muon@cosine", out, study)
    assert _args(next(stage), "long", "v_muon@cosine") == ["+experiment=v_muon", "optimizer=muon",
                               "optimizer.lr=1e-3,3e-3,1e-2", "optimizer.adamw_lr=0.003", *tail]
    muon_cos = ["+experiment=v_muon", "optimizer=muon", "optimizer.adamw_lr=0.003", long, cosine]
    for lr, loss in (("1e-3", 1.9), ("3e-3", 1.4), ("1e-2", 1.95)):
        _record(out, "v", f"mc-{lr}", "full/muon", [*muon_cos, f"optimizer.lr={lr}"], loss,
                float(lr))
    assert next(stage, None) is None  # the best is between two rates it beat
    # the plain long stage keeps the plain baseline's value
    assert cmd("long", "v_muon")[0][:3] == muon


TUNED = {
    "t": "sweep: t\nstudy:\n  name: t\n  baseline: lora/adamw\n"
         "  stages: [grid:t, long:t, ladder:t]\n  long: [trainer.max_steps=40]\n"
         "  tuning_seeds: [0, 6]\n  tune: {optimizer.weight_decay: [0.0, 0.01, 0.1]}\n"
         "  budgets: [20, 80]\n"
         "hydra:\n  sweeper:\n    params:\n      optimizer.lr: 1e-3,3e-3,1e-2\n"
         "      adapter.alpha: 4,16,64\n      seed: '0'\n",
}


def _lora(out, name, lr, alpha, loss, seed=0, extra=(), wd=None):
    overrides = ["+experiment=t", "adapter=lora", f"optimizer.lr={lr}", f"adapter.alpha={alpha}",
                 *([f"optimizer.weight_decay={wd}"] if wd is not None else []), *extra]
    _record(out, "t", f"{name}-s{seed}", "lora/adamw", overrides, loss, float(lr), seed)


def test_a_long_stage_re_chooses_every_tuned_knob_on_both_tuning_seeds(tmp_path, monkeypatch):
    """The grid's LR and alpha and the study's weight decay: each swept around the grid's best
    (one command per knob), on the two tuning seeds."""
    _, cmd, out = _stage_commands(tmp_path, monkeypatch, TUNED, "t")
    for lr in ("1e-3", "3e-3", "1e-2"):
        for alpha in ("4", "16", "64"):
            _lora(out, f"g{lr}-{alpha}", lr, alpha, 2.0 if (lr, alpha) == ("3e-3", "16") else 2.5)
    base = ["+experiment=t", "adapter=lora"]
    tail = ["trainer.max_steps=40", "seed=0,6", f"out_dir={out}"]
    assert cmd("long", "t") == [
        [*base, "optimizer.lr=1e-3,3e-3,1e-2", "adapter.alpha=16", *tail],
        [*base, "optimizer.lr=3e-3", "adapter.alpha=4,16,64", *tail],
        [*base, "optimizer.lr=3e-3", "adapter.alpha=16", "optimizer.weight_decay=0,0.01", *tail]]


def test_a_grid_grows_past_an_edge_its_best_sits_on_and_stops_at_its_bound(tmp_path, monkeypatch,
                                                                           capsys):
    experiments, _, out = _stage_commands(tmp_path, monkeypatch, TUNED, "t")
    study = experiments.discover()[0]["t"]
    for lr in ("1e-3", "3e-3", "1e-2"):
        for alpha in ("4", "16", "64"):
            _lora(out, f"g{lr}-{alpha}", lr, alpha, 2.0 if (lr, alpha) == ("1e-2", "16") else 2.5)
    (ext,) = experiments.grid_extensions(out, study, "t")
    assert ext == ["+experiment=t", "adapter=lora", "optimizer.lr=0.03", "adapter.alpha=16"]
    assert "best optimizer.lr=0.01 is the grid's edge: also 0.03" in capsys.readouterr().err
    _lora(out, "g3e-2", "0.03", "16", 1.9)  # still the edge: one more, then the bound
    (ext,) = experiments.grid_extensions(out, study, "t")
    assert "optimizer.lr=0.09" in ext
    _lora(out, "g9e-2", "0.09", "16", 1.8)
    assert experiments.grid_extensions(out, study, "t") == []
    assert "still an edge after 2 extensions" in capsys.readouterr().err


def test_a_ladder_re_tunes_the_rate_per_budget_then_runs_the_reporting_seeds(tmp_path,
                                                                            monkeypatch):
    experiments, _, out = _stage_commands(tmp_path, monkeypatch, TUNED, "t")
    study = experiments.discover()[0]["t"]
    for lr in ("1e-3", "3e-3", "1e-2"):
        _lora(out, f"g{lr}", lr, "16", 2.0 if lr == "3e-3" else 2.5)
    ladder = experiments.stage_commands("ladder", "t", out, study)
    marks20 = experiments.ladder_marks(20)
    first = next(ladder)[4:]
    assert first == ["+experiment=t", "adapter=lora", "optimizer.lr=1e-3,3e-3,1e-2",
                     "adapter.alpha=16", *marks20, "seed=0,6", f"out_dir={out}"]
    for lr, loss in (("1e-3", 2.2), ("3e-3", 2.3), ("1e-2", 2.4)):  # the rate moves down
        for seed in (0, 6):
            _lora(out, f"l20-{lr}", lr, "16", loss, seed, marks20)
    # 1e-3 won at budget 20: its own neighbourhood next (the walk), then the reporting seeds
    walk = next(ladder)[4:]
    assert walk[2] == "optimizer.lr=1e-3,3e-3" and walk[-2] == "seed=0,6"
    seeds = next(ladder)[4:]
    assert seeds == ["+experiment=t", "adapter=lora", "optimizer.lr=1e-3", "adapter.alpha=16",
                     *marks20, "seed=1,2,3,4,5", f"out_dir={out}"]
    budget80 = next(ladder)[4:]  # the next budget starts from budget 20's best
    assert "optimizer.lr=1e-3,3e-3" in budget80 and "trainer.max_steps=80" in budget80


def test_a_size_ladder_runs_every_budget_at_every_size_for_its_carried_methods(tmp_path,
                                                                             monkeypatch):
    """study.sizes: each size starts from the long/grid best again, its model keys in every
    run's overrides and its name in the stage mark; study.ladder_methods: only those methods;
    a key the marks set (the schedule) replaces the best's own value."""
    files = {"t": TUNED["t"].replace(
        "  budgets: [20, 80]\n",
        "  budgets: [20]\n  ladder_methods: [lora/adamw]\n"
        "  sizes: {narrow: [model.d_model=32, model.n_head=2], wide: [model.d_model=64]}\n")}
    experiments, _, out = _stage_commands(tmp_path, monkeypatch, files, "t")
    study = experiments.discover()[0]["t"]
    for lr in ("1e-3", "3e-3", "1e-2"):
        _lora(out, f"g{lr}", lr, "16", 2.0 if lr == "3e-3" else 2.5,
              extra=["trainer.lr_schedule=warmup_constant"])
    _record(out, "t", "full", "full/adamw", ["+experiment=t", "adapter=full",
                                             "optimizer.lr=1e-2"], 1.0, 1e-2)  # not carried
    ladder = experiments.ladder_batches("t", out, study)
    narrow = experiments.ladder_marks(20, ("narrow", ["model.d_model=32", "model.n_head=2"]))
    assert narrow[:2] == ["model.d_model=32", "model.n_head=2"]
    assert narrow[-1] == "study.stage=ladder@narrow@20"
    (first,) = next(ladder)  # lora/adamw only, the cosine schedule in place of the constant one
    assert first[4:] == ["+experiment=t", "adapter=lora", "optimizer.lr=1e-3,3e-3,1e-2",
                         "adapter.alpha=16", *narrow, "seed=0,6", f"out_dir={out}"]
    for lr, loss in (("1e-3", 2.4), ("3e-3", 2.2), ("1e-2", 2.3)):
        for seed in (0, 6):
            _lora(out, f"n-{lr}", lr, "16", loss, seed, narrow)
    (seeds,) = next(ladder)
    assert seeds[-3:] == [*narrow[-1:], "seed=1,2,3,4,5", f"out_dir={out}"]
    assert "optimizer.lr=3e-3" in seeds
    wide = experiments.ladder_marks(20, ("wide", ["model.d_model=64"]))
    (first_wide,) = next(ladder)  # the wide size starts from the grid's best, not narrow's
    assert first_wide[4:] == ["+experiment=t", "adapter=lora", "optimizer.lr=1e-3,3e-3,1e-2",
                              "adapter.alpha=16", *wide, "seed=0,6", f"out_dir={out}"]
    assert not any("d_model=32" in o for o in first_wide)


def test_a_ladder_takes_the_baselines_tuned_values_at_the_same_budget(tmp_path, monkeypatch,
                                                                      capsys):
    """study.from_baseline in a ladder: the AdamW part's LR of the other experiment's runs is
    the baseline's ladder best at the same budget (and size), never the long stage's."""
    files = {
        "v": "sweep: v\nstudy:\n  name: v\n  baseline: full/adamw\n"
             "  stages: [grid:v_base, grid:v, ladder:v_base, ladder:v]\n"
             "  budgets: [20]\n  from_baseline: {v: [optimizer.lr]}\n"
             "hydra:\n  sweeper:\n    params:\n      optimizer.manifold_lr: 1e-3,3e-3,1e-2\n",
        "v_base": "sweep: v\nstudy:\n  name: v\n  baseline: full/adamw\n"
                  "hydra:\n  sweeper:\n    params:\n      optimizer.lr: 1e-3,3e-3,1e-2\n"}
    experiments, _, out = _stage_commands(tmp_path, monkeypatch, files, "v")
    study = experiments.discover()[0]["v"]
    base = ["+experiment=v_base", "adapter=full"]
    riem = ["+experiment=v", "adapter=full", "optimizer=riemannian_normalized",
            "optimizer.lr=0.003"]
    for lr in ("1e-3", "3e-3", "1e-2"):
        _record(out, "v", f"b{lr}", "full/adamw", [*base, f"optimizer.lr={lr}"],
                2.0 if lr == "3e-3" else 2.5, float(lr))
        _record(out, "v", f"r{lr}", "full/riemannian_normalized",
                [*riem, f"optimizer.manifold_lr={lr}"], 2.0 if lr == "1e-2" else 2.5,
                float(lr))
    assert list(experiments.ladder_batches("v", out, study)) == []
    assert "takes optimizer.lr from the baseline full/adamw, which has no ladder result" in (
        capsys.readouterr().err)
    marks = experiments.ladder_marks(20)
    for lr, loss in (("1e-3", 2.3), ("3e-3", 2.4), ("1e-2", 2.5)):  # 1e-3 wins at 20 steps
        for seed in (0,):
            run = f"l{lr}-s{seed}"
            _record(out, "v", run, "full/adamw", [*base, f"optimizer.lr={lr}", *marks], loss,
                    float(lr), seed)
    (first,) = next(experiments.ladder_batches("v", out, study))
    assert first[4:] == ["+experiment=v", "adapter=full", "optimizer=riemannian_normalized",
                         "optimizer.manifold_lr=3e-3,1e-2", "optimizer.lr=0.001", *marks,
                         "seed=0", f"out_dir={out}"]


def test_a_ladder_slice_runs_only_its_sizes_and_methods_and_names_the_allowed_ones(
        tmp_path, monkeypatch, capsys):
    """--sizes/--methods narrow a ladder to a slice (the wide size only here; the full/adamw
    record's method is not in the slice), and a name the study does not declare is one line
    listing those it does, before anything runs."""
    files = {"t": TUNED["t"].replace(
        "  budgets: [20, 80]\n",
        "  budgets: [20]\n  ladder_methods: [lora/adamw, full/adamw]\n"
        "  sizes: {narrow: [model.d_model=32, model.n_head=2], wide: [model.d_model=64]}\n")}
    experiments, _, out = _stage_commands(tmp_path, monkeypatch, files, "t")
    study = experiments.discover()[0]["t"]
    for lr in ("1e-3", "3e-3", "1e-2"):
        _lora(out, f"g{lr}", lr, "16", 2.0 if lr == "3e-3" else 2.5)
    _record(out, "t", "full", "full/adamw", ["+experiment=t", "adapter=full",
                                             "optimizer.lr=1e-2"], 1.0, 1e-2)
    part = experiments.ladder_slice("t", study, "wide", "lora/adamw")
    assert list(part.sizes) == ["wide"] and part.ladder_methods == ["lora/adamw"]
    assert list(study.sizes) == ["narrow", "wide"]  # the study itself is unchanged
    (first,) = next(experiments.ladder_batches("t", out, part))
    wide = experiments.ladder_marks(20, ("wide", ["model.d_model=64"]))
    assert first[4:] == ["+experiment=t", "adapter=lora", "optimizer.lr=1e-3,3e-3,1e-2",
                         "adapter.alpha=16", *wide, "seed=0,6", f"out_dir={out}"]
    with pytest.raises(SystemExit):
        experiments.main(["t", "--plan", "--out-dir", str(out), "--sizes", "narow"])
    assert "--sizes='narow': study t has sizes narrow, wide" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        experiments.main(["t", "--plan", "--out-dir", str(out), "--methods", "lora/sgd"])
    assert "ladder_methods are lora/adamw, full/adamw" in capsys.readouterr().err


def test_experiments_and_study_overrides_narrow_what_runs_and_how_it_is_tuned(
        tmp_path, monkeypatch, capsys):
    """--experiments plans (and runs) only those experiments' stages; the command line's
    study.* overrides reach the study block the runner reads (tuning seeds, a knob left
    untuned by an empty candidate list), not only the runs; an unknown experiment is one line
    naming the study's."""
    files = {**STAGED, "s": STAGED["s"].replace(
        "  long: [", "  tune: {optimizer.weight_decay: [0.0, 0.1]}\n  long: [")}
    experiments = _conf(tmp_path, monkeypatch, files)
    monkeypatch.setattr(experiments, "STUDY_OVERRIDES", ())  # restored however the test ends
    out = str(tmp_path / "runs")

    def planned(*argv):
        assert experiments.main(["s", "--plan", "--out-dir", out, *argv]) == 0
        rows = [line.split() for line in capsys.readouterr().out.splitlines()]
        return {f"{r[1]} {r[2]}": int(r[-2]) for r in rows if r[0] == "s" and r[1] != "all"}

    # one tuning seed (the schema's default); the long stage stars the LR (grid) and weight decay
    assert planned("--experiments", "s_base") == {
        "grid s_base": 4, "long s_base": 5, "seeds s_base": 5}
    assert planned("--experiments", "s_base", "study.tuning_seeds=[0,6]")["long s_base"] == 10
    assert planned("--experiments", "s_base",
                   "++study.tune={optimizer.weight_decay:[]}")["long s_base"] == 3
    assert set(planned()) == {"grid s_base", "long s_base", "grid s", "long s", "seeds s_base",
                              "seeds s"}
    with pytest.raises(SystemExit):
        experiments.main(["s", "--plan", "--out-dir", out, "--experiments", "s_bsae"])
    assert ("--experiments='s_bsae': allowed: the stage experiments of s: s, s_base"
            in capsys.readouterr().err)
    assert experiments.main(["s", "--plan", "--out-dir", out, "study.tuning_sedes=[0]"]) == 2
    err = capsys.readouterr().err
    assert "Could not override 'study.tuning_sedes'" in err and "allowed keys of study: " in err
    assert "(command line: study.tuning_sedes=[0])" in err
