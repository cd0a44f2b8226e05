"""Bad input: one clear line naming the key and the allowed values, before any run directory."""

from __future__ import annotations

import pytest

from bench.config import ConfigError, validate
from tests.conftest import compose, run_cli


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["adapter=nope"], "Available options in 'adapter'"),
        (["trainer.nope=1"], "unknown key trainer.nope; allowed keys of trainer: max_steps, "),
        (["+nope=1"], "unknown key nope; allowed keys of the config: model, data"),
        (["model.attention.foo=1"], "allowed keys of model.attention: geometry, block"),
        (["trainer.max_steps=abc"], "could not be converted to Integer"),
        (["optimizer.lr=-1"], "optimizer.lr=-1.0 must be > 0"),
        (["optimizer.lr=0"], "optimizer.lr=0.0 must be > 0"),
        (["trainer.max_steps=0"], "trainer.max_steps=0 must be > 0"),
        (["data=text", "data.paths=[/no/such/file.txt]"], "does not exist"),
    ],
)
def test_bad_config_fails_before_any_run_directory(tmp_path, overrides, expected):
    out = tmp_path / "runs"
    proc = run_cli([*overrides, f"out_dir={out}", "logger=none"])
    assert proc.returncode != 0
    assert expected in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_empty_text_file_and_short_corpus_are_rejected(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("just a few bytes of text\n" * 4)
    out = tmp_path / "runs"
    proc = run_cli(["data=text", f"data.paths=[{empty}]", f"out_dir={out}", "logger=none"])
    assert proc.returncode != 0 and "is empty" in proc.stderr
    proc = run_cli(
        [
            "data=text",
            f"data.paths=[{short}]",
            f"out_dir={out}",
            "logger=none",
            "model.init=scratch",
        ]
    )
    assert proc.returncode != 0 and "model.seq_len=128 is larger than the corpus" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (
            ["adapter.alignment=best"],
            "adapter.alignment='best' is not allowed; allowed values: procrustes, sign, none",
        ),
        (["adapter.moments=rotate"], "allowed values: keep, transport"),
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
        (["adapter.start_step=0"], "adapter.start_step=0 must be >= 1"),
        (["model.n_head=3"], "must be divisible by model.n_head=3"),
        (["model.n_kv_head=3"], "model.n_kv_head=3 must divide model.n_head=4"),
        (["optimizer=sgd", "adapter.moments=transport"], "has none"),
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
