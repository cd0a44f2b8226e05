"""One tidy table of runs and of steps (parquet), index.html, a REPORT.md that keeps every sweep,
and `--help` (issue 30, item 6), through `python -m analysis` on records written as training
writes them."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis.__main__ import DEFAULTS, main
from analysis.html import markdown_to_html
from tests.analysis.test_analysis import write_run


def records(root: Path) -> None:
    """Sweep "cmp": LoRA under AdamW and SGD, 3 seeds each (3 evaluations each); sweep
    "other": one run. Host stated on the AdamW runs only."""
    for seed in range(3):
        write_run(root, "cmp", seed=seed, losses=(3.0, 2.5, 2.0 + seed / 100),
                  meta={"run_id": f"lora-adamw-lr0.001-s{seed}", "method": "lora/adamw",
                        "data_hash": "abc", "host": {"cpu": "cpu X", "cpu_capability": "AVX2"}})
        write_run(root, "cmp", optimizer="sgd", seed=seed, losses=(3.0, 2.6, 2.1 + seed / 100))
    write_run(root, "other", seed=0)


def analyse(runs: Path, figures: Path, *extra: str) -> None:
    assert main([f"runs={runs}", f"figures={figures}", *extra]) == 0


def test_runs_parquet_is_one_row_per_run_with_config_summary_and_selection(tmp_path):
    records(tmp_path / "runs")
    analyse(tmp_path / "runs", tmp_path / "fig")
    runs = pd.read_parquet(tmp_path / "fig" / "runs.parquet")
    assert len(runs) == 7 and not runs.duplicated(["sweep", "run_id"]).any()
    assert set(runs["sweep"]) == {"cmp", "other"}
    row = runs.set_index("run_id").loc["lora-adamw-lr0.001-s2"]
    summary = json.loads((tmp_path / "runs" / "cmp" / "lora-adamw-lr0.001-s2" / "summary.json")
                         .read_text())
    assert row["final_eval_loss"] == summary["final_eval_loss"] == pytest.approx(2.02)
    assert row["best_eval_loss"] == summary["best_eval_loss"]
    assert row["optimizer.lr"] == 1e-3 and row["adapter.r"] == 4 and row["model.n_layer"] == 2
    assert row["adapter.target_modules"] == "q,k,v,o"  # a list of scalars, flattened
    assert (row["method"], row["seed"], row["status"]) == ("lora/adamw", 2, "completed")
    assert row["host"] == "cpu X AVX2" and pd.isna(runs.set_index("run_id").loc[
        "lora-sgd-lr0.001-s0", "host"])
    # nothing tuned (one config a method): every run is chosen and reported
    assert runs.loc[runs["sweep"] == "cmp", ["chosen", "reported"]].all().all()


def test_steps_parquet_is_one_row_per_logged_step(tmp_path):
    records(tmp_path / "runs")
    analyse(tmp_path / "runs", tmp_path / "fig")
    steps = pd.read_parquet(tmp_path / "fig" / "steps.parquet")
    lines = sum(len((p / "metrics.jsonl").read_text().splitlines())
                for p in (tmp_path / "runs").glob("*/*"))
    assert len(steps) == lines == 7 * 3
    one = steps[steps["run_id"] == "lora-sgd-lr0.001-s1"].sort_values("step")
    assert one["step"].tolist() == [0, 10, 20]
    assert one["eval/loss"].tolist() == pytest.approx([3.0, 2.6, 2.11])
    assert one["tokens"].tolist() == [0, 5120, 10240]
    assert set(one["method"]) == {"lora/sgd"} and set(one["seed"]) == {1}


def test_an_analysis_of_one_sweep_keeps_the_others_everywhere(tmp_path):
    """`sweep=cmp` after a full analysis: REPORT.md, index.html and both tables still hold
    sweep "other", and cmp's rows are replaced, not doubled."""
    records(tmp_path / "runs")
    analyse(tmp_path / "runs", tmp_path / "fig")
    first = (tmp_path / "fig" / "REPORT.md").read_text()
    analyse(tmp_path / "runs", tmp_path / "fig", "sweep=cmp")
    report = (tmp_path / "fig" / "REPORT.md").read_text()
    assert "## cmp" in report and "## other" in report
    assert report == first  # the same records: the same report
    runs = pd.read_parquet(tmp_path / "fig" / "runs.parquet")
    assert len(runs) == 7 and not runs.duplicated(["sweep", "run_id"]).any()
    assert len(pd.read_parquet(tmp_path / "fig" / "steps.parquet")) == 21
    index = (tmp_path / "fig" / "index.html").read_text()
    assert 'href="cmp_report.html"' in index and 'href="other_report.html"' in index


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("href", "src")]


def test_every_link_of_the_html_pages_is_a_file_next_to_them(tmp_path):
    records(tmp_path / "runs")
    analyse(tmp_path / "runs", tmp_path / "fig")
    fig = tmp_path / "fig"
    for page in ["index.html", "cmp_report.html", "other_report.html"]:
        parser = Links()
        parser.feed((fig / page).read_text())
        files = {link.split("#")[0] for link in parser.links if link.split("#")[0]}
        assert files, page
        for name in files:
            assert "/" not in name and (fig / name).is_file(), (page, name)
    page = (fig / "cmp_report.html").read_text()
    assert page.count("<table>") == len([p for p in fig.glob("cmp_*.md")])
    assert '<img src="cmp_loss_vs_step.png"' in page
    assert "<td>lora/sgd</td>" in page  # the tuned table, rendered


def test_markdown_to_html_renders_tables_and_escapes_everything_else():
    text = ("# t\n\nA `x<y` and [a](b.md), **bold** <script>.\n\n| a | b |\n|---|---|\n"
            "| 1 \\| 2 | <i> |\n\n- one\n- two")
    out = markdown_to_html(text)
    assert "<h1>t</h1>" in out and "<code>x&lt;y</code>" in out
    assert '<a href="b.md">a</a>' in out and "<strong>bold</strong>" in out
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "<td>1 | 2</td><td>&lt;i&gt;</td>" in out
    assert "<ul>\n<li>one</li>\n<li>two</li>\n</ul>" in out


def test_help_lists_every_key(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = re.findall(r"^  (\w+)=", out, flags=re.MULTILINE)
    assert listed == list(DEFAULTS)


def test_a_sweep_without_a_study_is_tabulated_per_swept_value(tmp_path):
    """The issue's example as records on disk (study.name null, adapter.r=4,16 x optimizer x
    seed 0, 1): four rows, both seeds each, in the tables, the parquet and the panels."""
    runs = tmp_path / "runs"
    for r in (4, 16):
        for optimizer in ("adamw", "sgd"):
            for seed in (0, 1):
                run_dir = write_run(runs, "mine", optimizer=optimizer, seed=seed, lr=1e-3,
                                    losses=(3.0, 2.5, 2.0 + r / 100 + seed / 100))
                cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
                cfg["adapter"]["r"] = r
                cfg["study"] = {"name": None, "baseline": None, "rows": [],
                                "tuning_seeds": [0]}
                cfg["meta"]["config_id"] = f"{optimizer}-{r}"
                new = run_dir.with_name(f"{run_dir.name}-r{r}")
                run_dir.rename(new)
                cfg["meta"]["run_id"] = new.name
                (new / "config.yaml").write_text(yaml.safe_dump(cfg))
    analyse(runs, tmp_path / "fig")
    tuned = pd.read_csv(tmp_path / "fig" / "mine_tuned.csv").set_index("method")
    assert sorted(tuned.index) == ["lora/adamw r=16", "lora/adamw r=4", "lora/sgd r=16",
                                   "lora/sgd r=4"]
    assert set(tuned["seeds"]) == {"0, 1"} and set(tuned["n_seeds"]) == {2}
    assert tuned.loc["lora/sgd r=16", "baseline"] == "lora/adamw r=16"
    table = pd.read_parquet(tmp_path / "fig" / "runs.parquet")
    assert table["reported"].all() and table["table_method"].nunique() == 4
    assert "declare no study" in (tmp_path / "fig" / "mine_tuned.md").read_text()
