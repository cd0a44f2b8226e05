"""Who a run is: its config and the content of its inputs. Changed data is a new run; the same
data and config are skipped; force=true reruns a completed run on purpose."""

from __future__ import annotations

import yaml

from bench.run import run
from tests.conftest import compose, run_dirs


def _text_run(tmp_path, tiny, extra=()):
    notes = tmp_path / "notes.txt"
    return compose([*tiny, "data=text", f"data.paths=[{notes}]", *extra]), notes


def test_changed_data_is_a_new_run_and_the_same_data_is_skipped(tmp_path, tiny, capsys):
    cfg, notes = _text_run(tmp_path, tiny)
    notes.write_text("The quick brown fox jumps over the lazy dog. " * 400)
    assert run(cfg)["status"] == "completed"
    (first,) = run_dirs(tmp_path / "runs")
    run(cfg)
    assert "already completed, skipped" in capsys.readouterr().out
    with open(notes, "a") as f:  # a paragraph appended: other data, another run
        f.write("\nA new paragraph about a sleepy cat. " * 40)
    assert run(cfg)["status"] == "completed"
    second = [d for d in run_dirs(tmp_path / "runs") if d != first]
    assert len(second) == 1
    hashes = [yaml.safe_load((d / "config.yaml").read_text())["meta"]["data_hash"]
              for d in (first, second[0])]
    assert hashes[0] != hashes[1]


def test_force_reruns_a_completed_run_and_keeps_the_old_record_aside(tmp_path, tiny, capsys):
    first = run(compose(tiny))
    (run_dir,) = run_dirs(tmp_path / "runs")
    again = run(compose([*tiny, "force=true"]))
    assert again["status"] == "completed" and again["final_eval_loss"] == first[
        "final_eval_loss"]  # the same computation, done again
    out = capsys.readouterr().out
    assert "force=true, the completed record moved to" in out
    (aside,) = (run_dir.parent / ".superseded").iterdir()
    assert (aside / "summary.json").is_file() and run_dirs(tmp_path / "runs") == [run_dir]


def test_force_is_not_part_of_a_run_s_identity(tiny):
    from bench.tracking.identity import config_id, run_id

    assert run_id(compose([*tiny, "force=true"])) == run_id(compose(tiny))
    assert config_id(compose([*tiny, "force=true"])) == config_id(compose(tiny))
