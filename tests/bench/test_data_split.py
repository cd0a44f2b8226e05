"""The corpus split (bench/data/corpus.py): train / validation / test by a hash of each
document's name, the test loss a run reports once at its end, and bad fractions refused."""

from __future__ import annotations

import contextlib
import hashlib
import json

import pytest
import torch

from bench.data.corpus import SEPARATOR, _stdlib_documents, eval_batches, load_corpus
from bench.models import build_model
from bench.run import run
from bench.train import evaluate
from tests.conftest import TINY, compose, config_error, run_dirs


def _documents(split: torch.Tensor) -> set[bytes]:
    return set(bytes(split.tolist()).split(bytes([SEPARATOR]))) - {b""}


def test_a_test_split_leaves_validation_unchanged_and_comes_out_of_train():
    docs = {data for _, data in _stdlib_documents("stdlib_docs")}
    two = load_corpus("builtin", "stdlib_docs", eval_fraction=0.1)
    three = load_corpus("builtin", "stdlib_docs", eval_fraction=0.1, test_fraction=0.1)
    assert two.test is None and three.test is not None and three.test.numel() > 0
    assert torch.equal(two.eval, three.eval)  # validation: the same documents, the same bytes
    train, val, test = (_documents(s) for s in (three.train, three.eval, three.test))
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | test == _documents(two.train) and train | val | test <= docs
    # the content hash covers every split; without a test split it is what it always was
    expected = hashlib.sha256(two.train.numpy().tobytes())
    expected.update(two.eval.numpy().tobytes())
    assert two.content_hash == expected.hexdigest() != three.content_hash


def test_a_single_file_is_cut_train_then_test_then_validation(tmp_path):
    path = tmp_path / "one.txt"
    path.write_bytes(bytes(range(256)) * 4)  # 1,024 bytes
    corpus = load_corpus("text", paths=[str(path)], eval_fraction=0.1, test_fraction=0.2)
    data = path.read_bytes()
    cut, test_cut = int(1024 * 0.9), int(1024 * 0.7)
    assert bytes(corpus.train.tolist()) == data[:test_cut]
    assert bytes(corpus.test.tolist()) == data[test_cut:cut]
    assert bytes(corpus.eval.tolist()) == data[cut:]


def test_the_test_loss_is_the_final_model_on_the_test_windows(tmp_path):
    overrides = [*TINY, f"out_dir={tmp_path}", "data.test_fraction=0.1", "data.test_batches=3"]
    cfg = compose(overrides)
    summary = run(cfg)
    (run_dir,) = run_dirs(tmp_path)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tested = [row for row in rows if "test/loss" in row]
    assert [row["step"] for row in tested] == [cfg.trainer.max_steps]  # once, at the end
    assert summary["final_test_loss"] == tested[0]["test/loss"]
    # independently: the final checkpoint's model on 3 batches of evenly spaced test windows
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    corpus = load_corpus("builtin", cfg.data.domain, eval_fraction=0.1, test_fraction=0.1)
    batches = eval_batches(corpus.test, cfg.trainer.batch_size, cfg.model.seq_len, 3)
    assert len(batches) == 3 and batches[0][0].shape == (cfg.trainer.batch_size,
                                                         cfg.model.seq_len)
    expected = evaluate(model, batches, torch.device("cpu"), contextlib.nullcontext)
    assert summary["final_test_loss"] == pytest.approx(expected, rel=1e-6)


def test_without_a_test_split_the_record_has_no_test_loss(tmp_path):
    summary = run(compose([*TINY, f"out_dir={tmp_path}"]))
    assert "final_test_loss" not in summary


@pytest.mark.parametrize("overrides, line", [
    (["data.test_fraction=0.95"],
     "error: data.test_fraction=0.95 must be in [0, 1 - data.eval_fraction = 0.9): 0 (no test "
     "split) or the share of documents held out for the test loss"),
    (["data.test_fraction=-0.1"], "error: data.test_fraction=-0.1 must be in [0, 1 - "
     "data.eval_fraction = 0.9): 0 (no test split) or the share of documents held out for the "
     "test loss"),
    (["data.test_fraction=0.1", "data.test_batches=0"],
     "error: data.test_batches=0 must be >= 1"),
])
def test_bad_test_split_settings_are_one_line(tmp_path, overrides, line):
    assert config_error([*TINY, f"out_dir={tmp_path}", *overrides]) == line
    assert not tmp_path.joinpath("default").exists()
