"""Bad input: one clear line naming the key and the allowed values, before any run directory.

The checks run in process, as the entry point makes them (tests/conftest.py `config_error`);
two tests launch `python -m bench.run` to see the line printed and the exit status 2."""

from __future__ import annotations

import dataclasses

import pytest
from hydra.errors import HydraException
from omegaconf import OmegaConf

from bench.config import Config, ConfigError, validate
from bench.models.config import AttentionConfig
from bench.train import TrainerConfig
from tests.conftest import ROOT, compose, config_error


def keys(schema) -> str:
    return ", ".join(f.name for f in dataclasses.fields(schema))


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["trainer.nope=1"],
         f"error: unknown key trainer.nope; allowed keys of trainer: {keys(TrainerConfig)}"),
        (["+nope=1"], f"error: unknown key nope; allowed keys of the config: {keys(Config)}"),
        (["model.attention.foo=1"], "error: unknown key model.attention.foo; allowed keys of "
                                    f"model.attention: {keys(AttentionConfig)}"),
        (["optimizer.lr=-1"], "error: optimizer.lr=-1.0 must be > 0"),
        (["optimizer.lr=0"], "error: optimizer.lr=0.0 must be > 0"),
        (["trainer.max_steps=0"], "error: trainer.max_steps=0 must be > 0"),
        (["data=text", "data.paths=[/no/such/file.txt]"],
         "error: data.paths: '/no/such/file.txt' does not exist or is not a file"),
    ],
)
def test_bad_config_is_one_line_before_any_run_folder(tmp_path, overrides, line):
    out = tmp_path / "runs"
    assert config_error([*overrides, f"out_dir={out}", "logger=none"]) == line
    assert not out.exists()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["adapter=nope"], "Available options in 'adapter':\n\tbalora\n"),
        (["trainer.max_steps=abc"], "Value 'abc' of type 'str' could not be converted to Integer"),
    ],
)
def test_hydra_refuses_a_missing_option_and_a_wrong_type(overrides, expected):
    with pytest.raises(HydraException) as err:
        compose(overrides)
    assert expected in f"{err.value}\n{err.value.__cause__}"  # what Hydra prints, no "error:"


def test_empty_text_file_and_short_corpus_are_rejected(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("just a few bytes of text\n" * 4)
    out = tmp_path / "runs"
    line = config_error(["data=text", f"data.paths=[{empty}]", f"out_dir={out}"])
    assert line == f"error: data.paths: '{empty}' is empty"
    line = config_error(["data=text", f"data.paths=[{short}]", f"out_dir={out}",
                         "model.init=scratch"])
    assert line.startswith("error: model.seq_len=128 is larger than the corpus")
    assert not out.exists()




@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (
            ["adapter=balora", "adapter.alignment=best"],
            "adapter.alignment='best' is not allowed; allowed values: procrustes, sign, none",
        ),
        (["adapter=balora", "adapter.moments=rotate"], "allowed values: keep, transport"),
        (["trainer.device=tpu"], "allowed values: auto, cpu, cuda"),
        (["trainer.lr_schedule=linear"], "allowed values: constant, warmup_constant"),
        (["model.attention.geometry=sphere"], "fixed_rank_embedded"),
        (
            ["model.attention.geometry=fixed_rank_embedded", "model.attention.retraction=qr"],
            "model.attention.retraction='qr' is not allowed; allowed values: svd, orthographic",
        ),
        (
            ["model.attention.geometry=fixed_rank_quotient",
             "model.attention.retraction=orthographic"],
            "needs model.attention.geometry=fixed_rank_embedded",
        ),
        (["adapter=balora", "adapter.start_step=0"], "adapter.start_step=0 must be >= 1"),
        (["model.n_head=3"], "must be divisible by model.n_head=3"),
        (["model.n_kv_head=3"], "model.n_kv_head=3 must divide model.n_head=4"),
        (["adapter=balora", "optimizer=sgd", "adapter.moments=transport"], "has none"),
        (["metrics.target_loss=from_baseline"], "needs metrics.baseline"),
        (["metrics.hessian.every=10", "metrics.hessian.iters=1"], "metrics.hessian.iters=1"),
    ],
)
def test_validate_names_the_key_and_allowed_values(overrides, key):
    cfg = compose(overrides)
    with pytest.raises(ConfigError, match=None) as err:
        validate(cfg)
    assert key in str(err.value)


def test_default_config_is_valid():
    validate(compose([]))


def test_the_default_sweep_measures_curvature_at_the_end_and_no_study_inherits_it():
    """conf/config.yaml estimates the Hessian and Gauss-Newton spectra at each run's last step;
    every study experiment resets that to the schema's "off" (measuring only in its reporting
    runs), so its run ids, which hash the values that differ from the schema, stay the same."""
    from bench.metrics.config import HessianConfig

    default = compose([])
    assert default.metrics.hessian.every == default.trainer.max_steps
    assert default.metrics.hessian.gauss_newton
    off = OmegaConf.structured(HessianConfig())
    studies = 0
    for path in sorted((ROOT / "conf" / "experiment").glob("*.yaml")):
        cfg = compose([f"+experiment={path.stem}"])
        if cfg.study.name is None:  # the default sweep itself, gpu_check: not studies
            continue
        studies += 1
        assert cfg.metrics.hessian == off, path.stem
    assert studies >= 5
