"""Run records on disk -> tables, figures and REPORT.md (`python -m analysis`)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from analysis.__main__ import main
from analysis.records import (
    IncompatibleRunsError,
    NoRunsError,
    check_compatible,
    load_curves,
    load_runs,
)
from bench.record import config_digest  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def write_run(root, sweep, adapter="lora", optimizer="adamw", lr=1e-3, seed=0, losses=(3, 2.5, 2),
              status="completed", summary=True, truncate=False, extra_metrics=None, **config):
    """A run record as training writes it (docs/design.md §3); evals every 10 steps, 1 s a step."""
    run_id = f"{adapter}-{optimizer}-lr{lr}-s{seed}"
    run_dir = Path(root) / sweep / run_id
    run_dir.mkdir(parents=True)
    cfg = {
        "seed": seed, "sweep": sweep, "out_dir": str(root), "task": config.pop("task", "lm"),
        "model": {"name": "gpt_tiny", "d_model": config.pop("d_model", 32), "n_layer": 2,
                  "n_head": 2, "attention": {"geometry": "euclidean", "block": False}},
        "data": {"name": "builtin", "domain": "stdlib"},
        "adapter": {"name": adapter, "r": 4, "alpha": 8, "target_modules": ["q", "k", "v", "o"]},
        "optimizer": {"name": optimizer, "lr": lr, "manifold_lr": None, "weight_decay": 0.0},
        "trainer": {"max_steps": 10 * (len(losses) - 1), "batch_size": 4},
        "metrics": {"target_loss": 2.4},
        "meta": {"run_id": run_id, "method": f"{adapter}/{optimizer}", "data_hash": "abc"},
    }
    cfg.update(config)
    cfg["meta"].setdefault("config_id", config_digest(
        {k: v for k, v in cfg.items() if k != "meta"}, {}, leave_out=("seed",)))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    lines = []
    for i, loss in enumerate(losses):
        step = 10 * i
        record = {"step": step, "tokens": 512 * step, "wall_s": float(step), "train/loss": loss,
                  "eval/loss": loss, "lr": lr, **(extra_metrics or {})}
        lines.append(json.dumps(record))
    if truncate:
        lines.append('{"step": 999, "train/lo')
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + ("" if truncate else "\n"))
    if summary:
        bad = status in ("diverged", "failed")
        reached = [10 * i for i, v in enumerate(losses) if v <= 2.4]
        (run_dir / "summary.json").write_text(json.dumps({
            "status": status, "final_eval_loss": None if bad else losses[-1],
            "best_eval_loss": min(losses), "steps": 10 * (len(losses) - 1),
            "steps_to_target": reached[0] if reached and not bad else None,
            "tokens_per_s": 1000.0, "error": "loss is nan" if bad else None,
            "diverged_step": 10 * (len(losses) - 1) if bad else None,
        }))
    return run_dir


def comparison(root, sweep="cmp"):
    """LoRA/AdamW vs LoRA/Riemannian Adam, 3 seeds each; one AdamW seed diverged."""
    for seed in range(3):
        write_run(root, sweep, seed=seed, losses=(3, 2.5, 2.0 + 0.01 * seed),
                  status="diverged" if seed == 2 else "completed")
        write_run(root, sweep, optimizer="riemannian_adam", seed=seed,
                  losses=(3, 2.2, 1.8 + 0.01 * seed), extra_metrics={"cond/kappa": 10.0 + seed})


def test_load_runs_flattens_config_and_summary(tmp_path):
    comparison(tmp_path)
    write_run(tmp_path, "other", seed=0)
    df = load_runs(tmp_path)
    assert len(df) == 7
    assert {"optimizer.lr", "model.d_model", "adapter.target_modules", "status", "final_eval_loss",
            "run_dir", "method", "sweep"} <= set(df.columns)
    assert df["adapter.target_modules"].iloc[0] == "q,k,v,o"
    assert set(df["method"]) == {"lora/adamw", "lora/riemannian_adam"}
    assert len(load_runs(tmp_path, sweep="other")) == 1


def test_load_curves_is_tidy(tmp_path):
    comparison(tmp_path)
    curves = load_curves(load_runs(tmp_path))
    assert list(curves.columns) == ["run_id", "sweep", "step", "tokens", "wall_s", "metric",
                                    "value"]
    kappa = curves[curves["metric"] == "cond/kappa"]
    assert len(kappa) == 9 and set(kappa["value"]) == {10.0, 11.0, 12.0}


def test_truncated_last_metrics_line_is_skipped(tmp_path):
    write_run(tmp_path, "s", truncate=True, summary=False)
    df = load_runs(tmp_path)
    assert df.loc[0, "status"] == "incomplete"
    curves = load_curves(df)
    assert curves["step"].max() == 20


@pytest.mark.parametrize("make", [lambda p: p, lambda p: p / "missing"])
def test_empty_or_missing_runs_dir_raises_a_clear_error(tmp_path, make):
    with pytest.raises(NoRunsError, match=r"no run records under .*make run"):
        load_runs(make(tmp_path))


def test_incompatible_configs_are_refused_naming_the_key(tmp_path, capsys):
    write_run(tmp_path, "s", d_model=32)
    write_run(tmp_path, "s", optimizer="sgd", d_model=64)
    with pytest.raises(IncompatibleRunsError, match=r"model\.d_model: 32, 64"):
        check_compatible(load_runs(tmp_path))
    assert main([f"runs={tmp_path}", f"figures={tmp_path / 'fig'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.d_model" in err[0]
    assert not (tmp_path / "fig").exists()


def _declare(run_dir, **study):
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["study"] = {"name": "x", "stages": ["grid:x"], **study}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_the_baseline_comes_from_the_records_from_any_directory(tmp_path, monkeypatch, capsys):
    """study.baseline in the records picks the sweep's baseline; baseline= still wins; records
    without a study block compare with AdamW on the same adapter."""
    import pandas as pd

    runs = tmp_path / "runs"
    for seed in range(2):
        for adapter, optimizer in (("full", "adamw"), ("lora", "adamw"), ("lora", "sgd")):
            write_run(runs, "declared", adapter=adapter, optimizer=optimizer, seed=seed)
            write_run(runs, "plain", adapter=adapter, optimizer=optimizer, seed=seed)
    for run_dir in (runs / "declared").iterdir():
        _declare(run_dir, baseline="full/adamw")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    def baselines(*extra):
        assert main([f"runs={runs}", f"figures={tmp_path / 'fig'}", *extra]) == 0
        return {sweep: dict(zip(table["method"], table["baseline"].fillna("")))
                for sweep in ("declared", "plain")
                for table in [pd.read_csv(tmp_path / "fig" / f"{sweep}_tuned.csv")]}

    got = baselines()
    assert got["declared"] == dict.fromkeys(("full/adamw", "lora/adamw", "lora/sgd"),
                                            "full/adamw")
    assert got["plain"] == {"full/adamw": "full/adamw", "lora/adamw": "lora/adamw",
                            "lora/sgd": "lora/adamw"}
    got = baselines("baseline=lora/sgd")
    assert set(got["declared"].values()) == set(got["plain"].values()) == {"lora/sgd"}


def test_records_declaring_different_baselines_are_refused(tmp_path, capsys):
    runs = tmp_path / "runs"
    _declare(write_run(runs, "s", adapter="full"), baseline="full/adamw")
    _declare(write_run(runs, "s"), baseline="lora/adamw")
    assert main([f"runs={runs}", f"figures={tmp_path / 'fig'}"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: sweep 's': its records declare different baselines (full/adamw, lora/adamw); "
        "pass baseline=<method>")


def test_cli_writes_figures_tables_and_report(tmp_path, capsys):
    comparison(tmp_path / "runs")
    write_run(tmp_path / "runs", "cmp", optimizer="riemannian_adam", lr=1e-2, seed=0,
              losses=(3, 2.9, 2.8))  # another LR, worse: not drawn, still listed
    write_run(tmp_path / "runs", "cmp", adapter="toy", task="toy", seed=0)  # not an LM run
    study = tmp_path / "experiments" / "cmp"
    study.mkdir(parents=True)
    study.joinpath("README.md").write_text(
        "# cmp\n\n**Question:** does geometry help LoRA?\n\n## Protocol\n\nthree seeds\n")
    fig = tmp_path / "fig"
    code = main([f"runs={tmp_path / 'runs'}", f"figures={fig}",
                 f"experiments={tmp_path / 'experiments'}", "logy=true"])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("cmp_loss_vs_step.png", "cmp_loss_vs_step.pdf", "cmp_loss_vs_time.png",
                 "cmp_loss_vs_time.pdf", "cmp_steps_to_target.png", "cmp_kappa_vs_step.png",
                 "cmp_summary.md", "cmp_tuned.md", "cmp_tuned.csv", "REPORT.md"):
        assert (fig / name).stat().st_size > 0, name
        assert str(fig / name) in out
    assert not (fig / "cmp_balora_gap_vs_step.png").exists()  # no balora/gap logged

    summary = (fig / "cmp_summary.md").read_text()
    diverged = [line for line in summary.splitlines() if "| diverged |" in line]
    assert len(diverged) == 1 and "lora/adamw" in diverged[0] and "loss is nan" in diverged[0]
    assert summary.count("| lora/riemannian_adam |") == 4  # every run listed, not only the tuned

    tuned = (fig / "cmp_tuned.md").read_text()
    assert "lora/riemannian_adam" in tuned and "baseline" in tuned

    report = (fig / "REPORT.md").read_text()
    assert "does geometry help LoRA?" in report
    for name in ("cmp_loss_vs_step.png", "cmp_loss_vs_time.png", "cmp_steps_to_target.png"):
        assert f"]({name})" in report
    assert "lora/riemannian_adam" in report and "| diverged |" in report


def test_balora_gap_is_drawn_when_logged(tmp_path, capsys):
    for seed in range(2):
        write_run(tmp_path, "b", adapter="balora", seed=seed, extra_metrics={"balora/gap": 0.0})
    assert main([f"runs={tmp_path}", f"figures={tmp_path / 'fig'}", "sweep=b"]) == 0
    assert (tmp_path / "fig" / "b_balora_gap_vs_step.png").exists()
    report = (tmp_path / "fig" / "REPORT.md").read_text()
    assert "b_balora_gap_vs_step.png" in report and "Runs of sweep `b`" in report


def test_all_runs_diverged_are_still_drawn_and_reported(tmp_path, capsys):
    for seed in range(2):
        write_run(tmp_path, "d", seed=seed, losses=(3.0,), status="diverged")
    assert main([f"runs={tmp_path}", f"figures={tmp_path / 'fig'}"]) == 0
    assert (tmp_path / "fig" / "d_loss_vs_step.png").exists()
    assert "diverged or failed at every setting" in (tmp_path / "fig" / "REPORT.md").read_text()


def test_cli_rejects_unknown_arguments_and_missing_runs(tmp_path, capsys):
    assert main(["bogus=1"]) == 2
    assert "unknown argument" in capsys.readouterr().err
    assert main([f"runs={tmp_path / 'none'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run records" in err[0]


class FakeRun:
    def __init__(self, run_dir):
        self.id = self.name = run_dir.name
        self.group, self.state = "w", "finished"
        self.config = yaml.safe_load((run_dir / "config.yaml").read_text())
        self.summary_metrics = json.loads((run_dir / "summary.json").read_text())
        self.lines = (run_dir / "metrics.jsonl").read_text().splitlines()

    def scan_history(self):
        return [{"_step": i, **json.loads(line)} for i, line in enumerate(self.lines)]


class FakeApi:
    def __init__(self, root):
        self.root = root

    def runs(self, project, filters=None):
        return [FakeRun(p.parent) for p in sorted(self.root.glob("*/*/config.yaml"))]


def test_wandb_source_rebuilds_the_same_table(tmp_path):
    from analysis.wandb_source import load_wandb

    comparison(tmp_path, sweep="w")
    local = load_runs(tmp_path)
    runs, curves = load_wandb("x/y", api=FakeApi(tmp_path))
    assert list(runs["run_id"]) == list(local["run_id"])
    assert list(runs["status"]) == list(local["status"])
    assert runs["final_eval_loss"].equals(local["final_eval_loss"])
    local_curves = load_curves(local)
    assert len(curves) == len(local_curves)
    assert set(curves["metric"]) == set(local_curves["metric"])


@pytest.mark.parametrize(("api_key", "args"), [(None, []), ("0" * 40, ["timeout=3"])])
def test_wandb_source_without_server_fails_fast_with_one_line(tmp_path, api_key, args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_BASE_URL="http://127.0.0.1:9", WANDB_MODE="offline", HOME=str(tmp_path),
               WANDB_CONFIG_DIR=str(tmp_path / "wandb"), WANDB_DIR=str(tmp_path))
    if api_key:
        env["WANDB_API_KEY"] = api_key
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "analysis", "source=wandb", "project=x/y", *args,
         f"figures={tmp_path / 'fig'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert time.monotonic() - start < 20
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach W&B ("), proc.stderr
    assert not (tmp_path / "fig").exists()


@pytest.mark.parametrize("readme", [
    "# s\n\n## Question\n\nIs BaLoRA faster?\n\n## Protocol\n\nx\n",
    "# s\n\nQuestion: Is BaLoRA faster?\n",
    "# s\n\nIs BaLoRA faster?\n\nMore text.\n",
])
def test_report_question_comes_from_the_study_readme(tmp_path, readme):
    from analysis.report import question

    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "README.md").write_text(readme)
    assert question("s", tmp_path) == "Is BaLoRA faster?"
    assert "no study README" in question("other", tmp_path)


def test_heatmap_over_lr_and_scale_marks_diverged_cells(tmp_path):
    import yaml as _yaml

    from analysis.plots import lr_scale_heatmap

    for i, alpha in enumerate((4, 16)):
        for lr in (1e-3, 1e-2):
            diverged = alpha == 16 and lr == 1e-2
            run_dir = write_run(tmp_path, "hm", lr=lr, seed=i, losses=(3, 2.0 + lr + alpha / 100),
                                status="diverged" if diverged else "completed")
            cfg = _yaml.safe_load((run_dir / "config.yaml").read_text())
            cfg["adapter"]["alpha"] = alpha
            (run_dir / "config.yaml").write_text(_yaml.safe_dump(cfg))
    df = load_runs(tmp_path)
    paths = lr_scale_heatmap(df, None, tmp_path / "fig", "hm")
    assert [p.name for p in paths] == ["hm_lr_scale_heatmap.png", "hm_lr_scale_heatmap.pdf"]
    assert lr_scale_heatmap(load_runs(tmp_path).head(1), None, tmp_path / "fig2", "x") == []


def test_heatmap_draws_the_grid_budget_only(tmp_path):
    """A long stage's runs (more steps) are not grid cells: here the grid (20 steps) tried one
    alpha only, so there is no lr x alpha/r panel, although the 40-step runs tried another."""
    import yaml as _yaml

    from analysis.plots import lr_scale_heatmap

    for alpha, losses in ((4, (3, 2.5, 2.1)), (16, (3, 2.5, 2.2, 2.0, 1.9))):
        for lr in (1e-3, 1e-2):
            run_dir = write_run(tmp_path, "hm", lr=lr, seed=0, losses=losses)
            cfg = _yaml.safe_load((run_dir / "config.yaml").read_text())
            cfg["adapter"]["alpha"] = alpha
            (run_dir / "config.yaml").write_text(_yaml.safe_dump(cfg))
            run_dir.rename(run_dir.with_name(f"{run_dir.name}-a{alpha}"))
    runs = load_runs(tmp_path)
    assert sorted(runs["trainer.max_steps"].unique()) == [20, 40]
    assert lr_scale_heatmap(runs, None, tmp_path / "fig", "hm") == []


def test_tuned_tables_are_logged_to_wandb_offline(tmp_path):
    comparison(tmp_path / "runs")
    env = {**os.environ, "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path)}
    env.pop("WANDB_MODE", None)
    proc = subprocess.run([sys.executable, "-m", "analysis", f"runs={tmp_path / 'runs'}",
                           f"figures={tmp_path / 'fig'}", "wandb_tables=offline"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (run_file,) = (tmp_path / "fig" / "wandb").glob("offline-run-*/run-*.wandb")
    assert run_file.stat().st_size > 0




def test_curvature_cost_is_the_estimates_share_of_the_runs_time():
    """Two runs of 100 s and 300 s of logged wall clock (the estimates kept off it); one spent
    10 s + 40 s on curvature estimates: 50 s of 450 s in all."""
    import pandas as pd

    from analysis.tables import curvature_cost

    runs = pd.DataFrame({"run_id": ["a", "b"]})
    rows = [("a", 10, 50.0, "train/loss", 2.0), ("a", 20, 100.0, "train/loss", 1.9),
            ("b", 0, 0.0, "cost/hessian_s", 10.0), ("b", 20, 300.0, "cost/hessian_s", 40.0),
            ("c", 20, 999.0, "cost/hessian_s", 99.0)]  # another sweep's run: not counted
    curves = pd.DataFrame(rows, columns=["run_id", "step", "wall_s", "metric", "value"])
    text = curvature_cost(runs, curves)
    assert "in 1 of 2 runs" in text and "0.8 min" in text and "11.1%" in text and "0.12 h" in text
    # a summary's wall_s (final evaluations counted) wins over the last logged one: 150 s + 400 s
    text = curvature_cost(runs.assign(wall_s=[150.0, 400.0]), curves)
    assert "0.8 min" in text and "8.3%" in text and "0.17 h" in text
    assert curvature_cost(runs, curves[curves["metric"] != "cost/hessian_s"]) == ""
