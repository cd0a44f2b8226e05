"""The command line: a bad config is one line on stderr, exit status 2, nothing written."""

from __future__ import annotations

import pytest

from bench.train import TrainerConfig
from tests.bench.test_config import keys
from tests.conftest import run_cli


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["trainer.nope=1"],
         f"error: unknown key trainer.nope; allowed keys of trainer: {keys(TrainerConfig)}"),
        (["optimizer.lr=-1"], "error: optimizer.lr=-1.0 must be > 0"),
    ],
    ids=["unknown_key", "bad_value"],
)
def test_cli_prints_one_line_and_exits_2_writing_nothing(tmp_path, overrides, line):
    out = tmp_path / "runs"
    proc = run_cli([*overrides, f"out_dir={out}", "logger=none"])
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [line] and proc.stdout == ""
    assert not out.exists()

