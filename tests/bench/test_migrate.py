"""python -m bench.tracking.migrate: records of an earlier format brought to the current one."""

from __future__ import annotations

import time

import yaml

from analysis.records import load_runs
from bench.record import RECORD_FORMAT, read_record
from bench.run import run
from bench.tracking.migrate import main as migrate
from tests.conftest import compose, run_dirs


def _as_format_1(run_dir, drop=(), **meta):
    """Rewrite a record as an older bench wrote it: no record_format, `drop`ped keys."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["meta"].pop("record_format")
    config["meta"].update(meta)
    for key in drop:
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        del node[last]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def test_a_key_a_record_lacks_gets_the_default_that_reproduces_what_it_ran(tmp_path, tiny):
    run(compose(tiny))
    run(compose([*tiny, "seed=1", "metrics.hessian.every=6", "metrics.hessian.iters=2"]))
    plain, measured = sorted(run_dirs(tmp_path / "runs"), key=lambda d: "s1" in d.name)
    for d in (plain, measured):
        _as_format_1(d, drop=["metrics.hessian.batch_size", "adapter.rslora"])
    assert migrate([str(tmp_path / "runs")]) == 0
    plain_cfg, measured_cfg = read_record(plain).config, read_record(measured).config
    assert plain_cfg["adapter"]["rslora"] is False  # the schema default
    assert plain_cfg["metrics"]["hessian"]["batch_size"] is None
    # before the key existed, the Hessian was taken on the whole training batch
    assert measured_cfg["metrics"]["hessian"]["batch_size"] == 4
    assert plain_cfg["meta"]["record_format"] == measured_cfg["meta"]["record_format"] == (
        RECORD_FORMAT)


def test_a_relaunch_under_a_new_id_moves_aside_and_nothing_is_deleted(tmp_path, tiny):
    run(compose(tiny))
    (d,) = run_dirs(tmp_path / "runs")
    old = d.with_name(d.name.rsplit("-", 1)[0] + "-0ld1d000")
    d.rename(old)
    _as_format_1(old, drop=["adapter.rslora"], overrides=["seed=0"])  # older code: fewer keys
    time.sleep(0.01)
    run(compose([*tiny, "trainer.log_every=4"]))  # same computation, a new folder
    (new,) = [x for x in run_dirs(tmp_path / "runs") if x != old]
    _as_format_1(new, overrides=["seed=0"])
    old.touch()  # file times are no evidence (a clone resets them)
    assert migrate([str(tmp_path / "runs")]) == 0
    assert run_dirs(tmp_path / "runs") == [new]
    assert (old.parent / ".superseded" / old.name / "summary.json").is_file()
    assert len(load_runs(tmp_path / "runs")) == 1


def test_a_record_of_the_old_format_is_not_taken_for_a_new_run(tmp_path, tiny):
    """find_record reuses a completed sibling record only at the current format: an older
    record may lack a key whose absence meant another computation (migrate it first)."""
    run(compose(tiny))
    (d,) = run_dirs(tmp_path / "runs")
    old = d.with_name(d.name.rsplit("-", 1)[0] + "-0ld1d000")
    d.rename(old)
    _as_format_1(old)
    run(compose(tiny))
    assert (d / "summary.json").is_file()  # trained again in its own folder
    assert migrate([str(tmp_path / "runs"), "--dry"]) == 0
    assert "record_format" not in read_record(old).config["meta"]  # --dry wrote nothing
