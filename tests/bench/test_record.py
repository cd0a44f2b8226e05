"""Records you can trust (issue 14): checkpoints that cannot run code, finite floats, torn files."""

from __future__ import annotations

import json
import math
import random
import warnings

import numpy as np
import pytest
import torch

from analysis.records import INCOMPLETE, load_runs
from bench.config import ConfigError, validate
from bench.run import run
from bench.tracking.checkpoint import (
    load_checkpoint,
    rng_states,
    set_rng_states,
)
from tests.conftest import compose, read_jsonl, run_cli, run_dirs


class _Payload:
    """Unpickling this runs `exec`: creates the marker file (what a crafted checkpoint does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _files(run_dir):
    return {name: (run_dir / name).read_bytes()
            for name in ("summary.json", "metrics.jsonl", "checkpoint.pt")}


def _killed(run_dir):
    """Make a finished record look like one killed mid-run (summary status `running`)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "running"}))


# -- checkpoints ------------------------------------------------------------------------------
def test_a_checkpoint_holds_only_what_weights_only_loads(finished):
    state = torch.load(finished / "checkpoint.pt", weights_only=True)
    assert state["step"] == 12
    assert isinstance(state["rng_python"]["state"], torch.Tensor)


@pytest.mark.parametrize("extra", [
    ["adapter=lora"],
    ["adapter=balora"],
    ["adapter=lora", "adapter.geometry=fixed_rank_embedded", "optimizer=riemannian_adam"],
])
def test_adapters_and_optimizers_checkpoints_load_with_weights_only(tiny, tmp_path, extra):
    run(compose([*tiny, *extra, "model.init=scratch"]))
    (run_dir,) = run_dirs(tmp_path / "runs")
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == 12


def test_python_and_numpy_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(3)
    np.random.seed(4)
    torch.save(rng_states(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), np.random.randn())
    random.seed(0)
    np.random.seed(0)
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), np.random.randn()) == expected


def test_a_relaunch_over_a_crafted_checkpoint_does_not_run_its_code(finished, tmp_path, tiny):
    """The crafted file is this run's fault: the run is `failed` with one line naming the file,
    its code never runs, the file and the rows stay, and the launch says so in its last line and
    exit status (the sweep would go on)."""
    marker = tmp_path / "pwned"
    torch.save({"step": 6, "model": _Payload(marker)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)  # the payload is live
    assert marker.exists()
    marker.unlink()

    _killed(finished)
    (finished / "checkpoint.pt").write_bytes((tmp_path / "control.pt").read_bytes())
    before = _files(finished)
    proc = run_cli(tiny)
    assert proc.returncode == 1, proc.stderr
    assert not marker.exists()
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"].startswith(f"{finished / 'checkpoint.pt'}: holds objects other than")
    assert "Delete it to restart the run from step 0" in summary["error"]
    lines = proc.stdout.strip().splitlines()
    assert lines[-2].endswith(f": failed ({summary['error']})") and "Traceback" not in proc.stderr
    assert lines[-1] == "[bench] 1 run: 1 failed"
    assert {k: v for k, v in _files(finished).items() if k != "summary.json"} == {
        k: v for k, v in before.items() if k != "summary.json"}


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing_keys", "another_model"])
def test_a_checkpoint_that_does_not_load_fails_its_run_and_keeps_its_files(
        finished, tiny, damage):
    path = finished / "checkpoint.pt"
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        state = torch.load(path, weights_only=True)
        if damage == "missing_keys":
            del state["optimizer"], state["rng_cpu"]
        else:  # every tensor of another shape: a checkpoint of another model or version
            state["model"] = {k: torch.zeros(3) for k in state["model"]}
        torch.save(state, path)
    _killed(finished)
    before = _files(finished)
    summary = run(compose(tiny))
    message = summary["error"]
    assert summary["status"] == "failed"
    assert message.startswith(str(path)) and "\n" not in message
    assert "Delete it to restart the run from step 0" in message
    if damage == "missing_keys":
        assert "lacks optimizer, rng_cpu" in message
    after = _files(finished)
    assert after["checkpoint.pt"] == before["checkpoint.pt"]
    assert after["metrics.jsonl"] == before["metrics.jsonl"]
    path.unlink()  # what the message says to do: the run starts over and completes
    assert run(compose(tiny))["status"] == "completed"


# -- nan and inf ------------------------------------------------------------------------------
@pytest.mark.parametrize("override,key", [
    ("optimizer.lr=nan", "optimizer.lr"),
    ("optimizer.lr=inf", "optimizer.lr"),
    ("optimizer.manifold_lr=nan", "optimizer.manifold_lr"),
    ("optimizer.betas=[0.9,nan]", "optimizer.betas"),
    ("trainer.grad_clip=-inf", "trainer.grad_clip"),
    ("model.pretrain.lr=inf", "model.pretrain.lr"),
    ("toy.lr_max=nan", "toy.lr_max"),
    ("study.seconds_per_run=inf", "study.seconds_per_run"),
    ("metrics.target_loss=nan", "metrics.target_loss"),  # untyped (Any): a float all the same
])
def test_every_float_key_rejects_nan_and_inf(tiny, override, key):
    cfg = compose([*tiny, override])
    with pytest.raises(ConfigError, match=rf"^{key}=.* is not allowed; allowed values: finite"):
        validate(cfg)


def test_finite_floats_pass(tiny):
    validate(compose([*tiny, "optimizer.lr=1e-2", "optimizer.betas=[0.8,0.99]"]))


def test_nan_lr_on_the_cli_is_one_line_and_writes_nothing(tmp_path, tiny):
    proc = run_cli([*tiny, "optimizer.lr=nan"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: optimizer.lr=nan is not allowed; allowed values: finite numbers (no nan, inf)"]
    assert not (tmp_path / "runs").exists()


# -- torn files: bench ------------------------------------------------------------------------
def test_a_torn_last_metrics_line_is_dropped_on_resume(finished, tiny):
    rows = read_jsonl(finished / "metrics.jsonl")
    _killed(finished)
    with open(finished / "metrics.jsonl", "a") as f:
        f.write('{"step": 13, "train/lo')  # killed mid-write
    assert run(compose(tiny))["status"] == "completed"
    assert read_jsonl(finished / "metrics.jsonl") == rows


def test_a_run_killed_before_its_first_checkpoint_starts_over_without_duplicate_rows(
        finished, tiny):
    rows = read_jsonl(finished / "metrics.jsonl")
    (finished / "checkpoint.pt").unlink()
    text = (finished / "metrics.jsonl").read_text().splitlines(keepends=True)
    (finished / "metrics.jsonl").write_text("".join(text[:2]) + text[2][:9])  # torn at row 3
    _killed(finished)
    assert run(compose(tiny))["status"] == "completed"
    again = read_jsonl(finished / "metrics.jsonl")
    assert [r["step"] for r in again] == [r["step"] for r in rows]
    assert [r.get("train/loss") for r in again] == [r.get("train/loss") for r in rows]


def test_a_summary_that_does_not_parse_is_warned_and_the_run_resumed(finished, tiny, capfd):
    summary = json.loads((finished / "summary.json").read_text())
    (finished / "summary.json").write_text('{"status": "compl')
    again = run(compose(tiny))  # resumes from the step-12 checkpoint: nothing left to train
    assert again["status"] == "completed"
    assert again["final_eval_loss"] == summary["final_eval_loss"]
    assert json.loads((finished / "summary.json").read_text())["status"] == "completed"
    err = capfd.readouterr().err
    assert f"[bench] warning: {finished / 'summary.json'} does not parse" in err


def test_a_record_without_config_yaml_is_resumed_and_gets_it_back(finished, tiny):
    config = (finished / "config.yaml").read_text()
    (finished / "config.yaml").unlink()
    _killed(finished)
    assert run(compose(tiny))["status"] == "completed"
    assert (finished / "config.yaml").read_text() == config


# -- torn files: analysis ---------------------------------------------------------------------
def _sweep_of_two(tiny, tmp_path):
    run(compose(tiny))
    run(compose([*tiny, "seed=1"]))
    return sorted(run_dirs(tmp_path / "runs"))


def test_analysis_skips_a_record_without_config_yaml_and_names_it(tiny, tmp_path):
    a, b = _sweep_of_two(tiny, tmp_path)
    (b / "config.yaml").unlink()
    with pytest.warns(UserWarning, match=rf"skipped {b}: {b / 'config.yaml'}: missing"):
        df = load_runs(tmp_path / "runs")
    assert list(df["run_dir"]) == [str(a)]
    assert df.iloc[0]["status"] == "completed"


def test_analysis_shows_a_record_with_a_torn_summary_as_incomplete(tiny, tmp_path):
    a, b = _sweep_of_two(tiny, tmp_path)
    (b / "summary.json").write_text('{"status": "comp')
    with pytest.warns(UserWarning, match=r"summary.json: does not parse"):
        df = load_runs(tmp_path / "runs", sweep="default")
    row = df[df["run_dir"] == str(b)].iloc[0]
    assert row["status"] == INCOMPLETE and row["method"] == "full/adamw"
    assert math.isnan(row["final_eval_loss"])


def test_analysis_leaves_out_a_torn_metrics_line_with_a_warning(tiny, tmp_path):
    from analysis.records import load_curves

    a, b = _sweep_of_two(tiny, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # intact records: no warning
        assert set(load_runs(tmp_path / "runs")["status"]) == {"completed"}
    n = len(read_jsonl(b / "metrics.jsonl"))
    with open(b / "metrics.jsonl", "a") as f:
        f.write('{"step": 13, "train/lo')
    df = load_runs(tmp_path / "runs")  # the summary says how the run ended
    assert set(df["status"]) == {"completed"}
    with pytest.warns(UserWarning, match=r"metrics.jsonl: 1 line\(s\) that are not metric rows"):
        curves = load_curves(df)
    assert curves[curves["run_id"] == b.name]["step"].nunique() == n


# -- Hugging Face: no remote code -------------------------------------------------------------
def test_a_local_hf_model_that_ships_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))  # read on first import
    transformers = pytest.importorskip("transformers")
    from omegaconf import OmegaConf

    from bench.models.config import ModelConfig
    from bench.models.hf import load_hf

    marker = tmp_path / "ran"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({
        "model_type": "not_a_transformers_model",
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"},
    }))
    (model_dir / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    cfg = OmegaConf.structured(ModelConfig(kind="hf", path=str(model_dir)))
    with pytest.raises(ConfigError, match=r"^model.path=.*cannot load a causal LM"):
        load_hf(cfg)
    assert not marker.exists()
    with pytest.raises(Exception):  # noqa: B017 - control: with remote code allowed, it runs
        transformers.AutoConfig.from_pretrained(str(model_dir), trust_remote_code=True,
                                                local_files_only=True)
    assert marker.exists()


def test_config_strings_that_look_like_numbers_read_back_as_strings(tmp_path):
    """A config digest such as 9651e709 is a float (inf) to OmegaConf's YAML loader unless it is
    quoted; the record writes such strings quoted, so OmegaConf and yaml.safe_load agree."""
    import yaml
    from omegaconf import OmegaConf

    from bench.record import RunRecord

    meta = {"config_id": "9651e709", "all_digits": "12345678", "word": "abc", "number": 1.5}
    record = RunRecord(tmp_path / "run")
    record.create({"meta": meta})
    assert OmegaConf.to_container(OmegaConf.load(record.config_path))["meta"] == meta
    assert yaml.safe_load(record.config_path.read_text())["meta"] == meta
