"""data.tokenizer: bytes, a BPE trained on the training split only (cached), the model's own;
the batches of a stream with unscored tokens; the built-in models sized by the tokenizer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bench.config import DataConfig, ModelConfig
from bench.data import tokenizers
from bench.data.corpus import IGNORE_INDEX, eval_batches, get_batch, load_corpus
from bench.data.tokenized import load_data
from tests.conftest import TINY, compose, config_error


def data_cfg(tmp_path, **overrides):
    """The data and model groups of a config, with the caches under tmp_path."""
    return OmegaConf.create({
        "data": OmegaConf.merge(OmegaConf.structured(DataConfig),
                                {"cache_dir": str(tmp_path / "cache"), **overrides}),
        "model": OmegaConf.structured(ModelConfig(init="scratch")),
    })


def test_windows_decode_unscored_tokens_into_ignored_targets():
    # ids 5 6 7 scored, 8 9 a prompt (stored ~id), then 10 11 scored
    stream = torch.tensor([5, 6, 7, ~8, ~9, 10, 11], dtype=torch.int32)
    (x, y), = eval_batches(stream, 1, 6, 1)
    assert x.tolist() == [[5, 6, 7, 8, 9, 10]]
    assert y.tolist() == [[6, 7, IGNORE_INDEX, IGNORE_INDEX, 10, 11]]
    logits = torch.randn(1, 6, 12)
    # the loss the models compute counts exactly the four scored targets
    expected = -torch.log_softmax(logits[0], -1)[[0, 1, 4, 5], [6, 7, 10, 11]].mean()
    assert float(F.cross_entropy(logits.flatten(0, 1), y.flatten())) == pytest.approx(
        float(expected), rel=1e-6)
    # byte streams (uint8) are today's, untouched
    bytes_stream = torch.arange(40, dtype=torch.uint8)
    x, y = get_batch(bytes_stream, 2, 8, 0, 0)
    assert (y == x + 1).all() and x.dtype == torch.int64


def test_bpe_is_trained_on_the_training_split_only_and_cached(tmp_path, monkeypatch):
    cfg = data_cfg(tmp_path, tokenizer="bpe", vocab_size=400, domain="kjv", max_bytes=400_000)
    corpus = load_data(cfg.data, cfg.model, 64)
    assert corpus.meta["tokenizer"]["kind"] == "bpe" and corpus.vocab_size <= 400
    assert corpus.meta["loss_tokens"] == "all" and corpus.train.dtype == torch.int32
    # an independent BPE of the same size trained on the training chapters alone is this one
    from bench.data.tokenized import assign_splits, documents

    docs, labels, _ = assign_splits(*[documents(cfg.data)[0]], 0.1, 0.0)
    train = [d.text for d, s in zip(docs, labels) if s == "train"]
    every = [d.text for d in docs]
    alone = tokenizers.train_bpe(train, 400)
    assert corpus.meta["tokenizer"]["hash"] == tokenizers._RustTokenizer(
        "bpe", alone, 0).hash
    assert tokenizers._RustTokenizer("bpe", tokenizers.train_bpe(every, 400), 0).hash != (
        corpus.meta["tokenizer"]["hash"])  # the validation chapters would change it
    # the second load neither trains nor tokenizes: both come from the cache
    monkeypatch.setattr(tokenizers, "train_bpe", lambda *a: pytest.fail("trained again"))
    monkeypatch.setattr(tokenizers._RustTokenizer, "encode_batch",
                        lambda *a: pytest.fail("tokenized again"))
    again = load_data(cfg.data, cfg.model, 64)
    assert again.content_hash == corpus.content_hash
    # byte-level BPE is lossless: the validation stream decodes to the validation chapters
    evals = [d.text for d, s in zip(docs, labels) if s == "eval"]
    text = alone.decode(corpus.eval.tolist(), skip_special_tokens=False)
    assert text == tokenizers.BPE_EOS.join(evals)


def test_bytes_stay_todays_streams(tmp_path):
    cfg = data_cfg(tmp_path, domain="stdlib_docs", max_bytes=200_000)
    corpus = load_data(cfg.data, cfg.model, 64)
    legacy = load_corpus("builtin", "stdlib_docs", None, 0.1, 200_000)
    assert corpus.content_hash == legacy.content_hash and torch.equal(corpus.train, legacy.train)
    assert corpus.meta["tokenizer"]["kind"] == "bytes" and corpus.vocab_size == 256


@pytest.mark.parametrize("model", ["gpt_small", "knight"])
def test_builtin_models_take_their_vocabulary_from_a_bpe(tmp_path, model):
    from bench.run import prepare

    cfg = compose([f"model={model}", *TINY, "model.d_mlp=64", "data.tokenizer=bpe",
                   "data.vocab_size=300", "data.max_bytes=100000",
                   f"data.cache_dir={tmp_path}", f"out_dir={tmp_path / 'runs'}"])
    prepared = prepare(cfg)
    corpus, model_ = prepared.parts["corpus"], prepared.parts["model"]
    assert corpus.vocab_size == 300
    assert model_.tok_emb.num_embeddings == model_.lm_head.out_features == 300
    assert prepared.meta["tokenizer"]["vocab_size"] == 300
    x, y = get_batch(corpus.train, 2, 32, 0, 0)
    _, loss = model_(x, y)  # every id has its row; a fresh model is near log(V)
    assert abs(loss.item() - torch.log(torch.tensor(300.0)).item()) < 1.0
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("overrides", "line"), [
    (["data.tokenizer=words"],
     "error: data.tokenizer='words' is not allowed; allowed values: bytes, bpe, model"),
    (["data.tokenizer=bpe", "model.init=scratch", "data.vocab_size=100"],
     "error: data.vocab_size=100 must be >= 257 (the 256 byte symbols of a byte-level BPE and "
     "its end-of-document token)"),
    (["data.tokenizer=model"],
     "error: data.tokenizer=model needs model=hf (a model folder with its own tokenizer); "
     "allowed for the built-in models: bytes, bpe"),
    (["data.tokenizer=bpe"],
     "error: data.tokenizer=bpe with model.init=pretrained: the built-in base is pretrained on "
     "bytes; allowed: data.tokenizer=bytes, or model.init=scratch"),
    (["model=smollm2", "data.tokenizer=bytes"],
     "error: data.tokenizer=bytes with model.path='.cache/models/smollm2-135m-instruct': a "
     "pretrained model with its own tokenizer, whose embeddings mean nothing for other token "
     "ids; allowed: data.tokenizer=model"),
    (["model=hf", "model.path=/x", "model.attention.geometry=fixed_rank_embedded"],
     "error: model.attention.geometry='fixed_rank_embedded' applies to the built-in model only; "
     "for model=hf put the adapter's update on a manifold: adapter.geometry"),
])
def test_bad_tokenizer_config_is_one_line(tmp_path, overrides, line):
    out = tmp_path / "runs"
    assert config_error([*overrides, "logger=none", f"out_dir={out}"]) == line
    assert not out.exists()
