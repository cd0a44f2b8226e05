"""Checks of the committed study records in results/ (data, not code): `make check-results`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from analysis.records import load_runs
from bench.tracking.identity import config_digest, find_record
from tests.conftest import ROOT
from tests.conftest import ROOT as REPO

pytestmark = pytest.mark.results  # make check-results: data checks, not part of make test


def test_results_state_their_study_and_config():
    """results/ (migrated once): every record states its study as the study's YAML declares it
    and a config_id that is bench's digest of its config without the seed; grouping seeds by
    that id splits each method's runs exactly as the settings that vary between them do (what
    is measured included: a reporting run's metrics.hessian makes it its own configuration,
    apart from the tuning seed's run at the same hyperparameters)."""
    from omegaconf import OmegaConf

    from analysis.records import lm_runs
    from analysis.selection import config_groups, config_keys
    from bench.tracking.identity import config_id
    from experiments.__main__ import discover

    studies, _ = discover()
    paths = sorted(p for p in (REPO / "results").glob("*/*/config.yaml")
                   if not p.parent.parent.name.startswith("."))  # .pretrained: the bases
    assert len(paths) > 100
    for path in paths:
        cfg = OmegaConf.load(path)
        assert cfg.study.baseline == studies[cfg.study.name].baseline, path
        meta = cfg.pop("meta")
        assert meta.config_id == config_id(cfg), path
    runs = lm_runs(load_runs(REPO / "results"))
    for _, method in runs.groupby(["sweep", "method"]):
        keys = config_keys(method)
        measured = [c for c in method.columns if c.startswith("metrics.")
                    and method[c].astype(str).nunique(dropna=False) > 1]
        by_id = sorted(sorted(g["run_id"]) for g in config_groups(method, keys))
        by_keys = (sorted(sorted(g["run_id"]) for _, g in method.groupby(
            keys + measured, dropna=False)) if keys + measured else [sorted(method["run_id"])])
        assert by_id == by_keys


def test_existing_records_are_still_found():
    """The schema keys added since a record was written are at their defaults in its config: the
    config it stored, taken as the schema's (what a relaunch of the same settings composes),
    finds it (bench.tracking.identity.find_record), as before they existed. (The stored config,
    not the YAML its overrides name: a study's protocol may change after its records.)"""
    from omegaconf import OmegaConf

    from bench.config import Config

    configs = sorted(p for p in Path(ROOT / "results").glob("*/*/config.yaml")
                     if not p.parent.parent.name.startswith("."))  # .pretrained: the bases
    lm = [c for c in configs if yaml.safe_load(c.read_text()).get("task", "lm") == "lm"]
    if not lm:
        pytest.skip("no LM records in results/")
    def as_schema(path):
        stored = yaml.safe_load(path.read_text())
        stored.pop("meta")
        return OmegaConf.merge(OmegaConf.structured(Config), stored,
                               {"out_dir": str(ROOT / "results")})

    for path in lm[:: max(1, len(lm) // 12)]:
        cfg = as_schema(path)
        found = find_record(cfg)  # this record, or a complete one of the same config
        assert found.is_complete(), path
        assert config_digest(as_schema(found.dir / "config.yaml")) == config_digest(cfg), path


def test_re_executions_on_another_processor_reproduce_their_records():
    """results/processor_check/<sweep>/: baselines' reporting runs re-executed on the processor
    of rows added later (its README): each equals the record of the same overrides in
    results/<sweep>/ bitwise in its final validation and test losses."""
    import json

    def records(folder):
        out = {}
        for cfg in folder.glob("*/config.yaml"):
            overrides = yaml.safe_load(cfg.read_text())["meta"]["overrides"]
            key = frozenset(o for o in overrides if not o.startswith(("out_dir=", "study.stage=")))
            out[key] = json.loads((cfg.parent / "summary.json").read_text())
        return out

    checks = [p for p in (REPO / "results" / "processor_check").glob("*") if p.is_dir()]
    if not checks:
        pytest.skip("no re-executions in results/processor_check")
    for folder in checks:
        again, first = records(folder), records(REPO / "results" / folder.name)
        assert again and set(again) <= set(first), folder
        for key, summary in again.items():
            for loss in ("final_eval_loss", "final_test_loss"):
                assert summary[loss] == first[key][loss], (folder.name, sorted(key), loss)
