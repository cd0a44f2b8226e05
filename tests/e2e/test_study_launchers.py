"""`python -m experiments <study> [overrides]` on any launcher: a whole study through submitit's
local executor (what SLURM runs), each stage waiting for its array; `--no-wait` starts a
study's next batch of commands in a detached process and exits, and the next invocation goes
on from there."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest

import experiments.__main__ as experiments
from tests.conftest import run_dirs
from tests.experiments.test_stages import STUDIES

pytestmark = pytest.mark.e2e


def test_a_whole_study_runs_on_the_submitit_local_executor(tmp_path):
    """balora_toy at its smoke size (the cheapest study: one grid stage, 2 runs): the stage's
    multirun returns once its array has ended, so the records are complete when it returns."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = tmp_path / "runs"
    code = experiments.main(["balora_toy", "--out-dir", str(out), *STUDIES["balora_toy"].smoke,
                             "hydra/launcher=submitit_local_test"])
    assert code == 0
    dirs = run_dirs(out)
    assert len(dirs) == 2
    assert all(json.loads((d / "summary.json").read_text())["status"] == "completed"
               for d in dirs)
    # each run was an array task of submitit's executor, not a run in the launching process
    assert len(list((out / "balora_toy" / ".submitit").glob("*/*_result.pkl"))) == 2


def _touch(path: Path, after: Path | None = None) -> list[str]:
    """A command that touches `path`, once `after` exists (the test lets it go)."""
    wait = (f"while not pathlib.Path({str(after)!r}).exists(): time.sleep(0.05)\n"
            if after else "")
    return [sys.executable, "-c",
            f"import pathlib, time\n{wait}pathlib.Path({str(path)!r}).touch()"]


def _land(flight: experiments.Flight, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not flight.rc.exists():
        assert time.time() < deadline, flight.log.read_text()
        time.sleep(0.1)


def test_no_wait_starts_each_batch_detached_and_the_next_call_goes_on(tmp_path, monkeypatch,
                                                                      capsys):
    """Two stages, the second computed from what the first left (as a long stage reads the
    grid's records): each call starts the next batch not done and exits at once."""
    marks, go = tmp_path / "marks", tmp_path / "go"
    marks.mkdir()
    grid = [_touch(marks / "a1", after=go), _touch(marks / "a2")]

    def batches(kind, stage, out_dir, study, overrides=()):
        if kind == "grid":
            yield grid
        elif (marks / "a1").exists() and (marks / "a2").exists():
            yield [_touch(marks / "b")]  # only once the grid's results exist

    monkeypatch.setattr(experiments, "stages", lambda study: [("grid", "g"), ("long", "g")])
    monkeypatch.setattr(experiments, "stage_batches", batches)
    monkeypatch.setattr(experiments, "plan", lambda *a, **k: 0.0)
    out = tmp_path / "runs"
    call = ["balora_toy", "--no-wait", "--out-dir", str(out)]
    flight = experiments.Flight(out, "balora_toy")

    assert experiments.main(call) == 0  # the grid's two commands start in one process
    assert "g: 2 command(s) started in process" in capsys.readouterr().out
    assert not (marks / "a1").exists()  # it returned before they ran
    assert experiments.main(call) == 0  # still in flight: nothing else starts
    assert "still running in process" in capsys.readouterr().err
    go.touch()
    _land(flight)
    assert experiments.main(call) == 0  # the grid done, the second stage starts
    assert "long g: 1 command(s) started" in capsys.readouterr().out
    _land(flight)
    assert (marks / "b").exists()
    assert experiments.main(call) == 0
    assert "study balora_toy: every stage has run" in capsys.readouterr().out
    state = json.loads(flight.path.read_text())
    assert state["flying"] is None and len(state["done"]) == 3


def test_a_landed_flight_counts_its_commands_done_only_when_they_ended(tmp_path):
    """Exit status 0 or 1 (some runs failed, recorded): done; another status, or a process gone
    without one (killed): not done, so the next call starts the batch again."""
    cmd = [sys.executable, "-m", "bench.run", "-m", "+experiment=x"]
    for status, done in (("1", [experiments.Flight.key(cmd)]), ("2", []), (None, [])):
        flight = experiments.Flight(tmp_path / str(status), "s")
        flight.flying = {"commands": [cmd], "pid": None, "host": socket.gethostname()}
        flight.save()
        if status is not None:
            flight.rc.write_text(status + "\n")
        landed = experiments.Flight(tmp_path / str(status), "s")
        assert landed.land() == (int(status) if status else None)
        assert landed.done == done and landed.flying is None
        assert experiments.Flight(tmp_path / str(status), "s").flying is None  # saved


def test_a_launch_log_sits_where_the_nodes_see_it_and_a_node_that_cannot_is_no_fault(
        tmp_path, monkeypatch, capsys):
    """The launch log (a launch's count of its runs' outcomes) is written by every run, on a
    cluster by array tasks on other machines: it lives under the working folder's .cache (shared
    like the code), not /tmp; a task that cannot reach it warns and its run is not failed."""
    from bench.run import LAUNCH_LOG, _note_launch, launch_scratch

    monkeypatch.chdir(tmp_path)
    with launch_scratch() as scratch:
        assert Path(scratch).parent == tmp_path / ".cache" / "launch"
    monkeypatch.setenv(LAUNCH_LOG, str(tmp_path / "another-machine" / "launch.jsonl"))
    _note_launch("run-id", "completed")
    assert "not writable here" in capsys.readouterr().err
