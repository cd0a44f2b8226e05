"""data=hf: local files in five formats, a folder with its own splits, a dataset of the local
Hugging Face cache, instruction data whose loss counts the response only, and bad input."""

from __future__ import annotations

import csv
import json
import random
import string

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bench.config import DataConfig, ModelConfig
from bench.data.corpus import IGNORE_INDEX, eval_batches
from bench.data.tokenized import load_data
from bench.record import RunRecord
from tests.conftest import compose, config_error

transformers = pytest.importorskip("transformers")

RECORDS = [{"text": f"Document {i}: " + "lorem ipsum dolor " * (i % 7 + 1), "n": i}
           for i in range(60)]


def cfg_of(tmp_path, **data):
    return OmegaConf.create({
        "data": OmegaConf.merge(OmegaConf.structured(DataConfig),
                                {"name": "hf", "cache_dir": str(tmp_path / "cache"), **data}),
        "model": OmegaConf.structured(ModelConfig(init="scratch")),
    })


def write(path, records, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif fmt == "json":
        path.write_text(json.dumps(records))
    elif fmt == "csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_every_format_gives_the_same_corpus(tmp_path, fmt):
    """The same records in any format: the same documents (named by their content), the same
    split, the same streams."""
    reference = load_data(cfg_of(tmp_path, path=str(write(tmp_path / "r.jsonl", RECORDS,
                                                                "jsonl"))).data, ModelConfig(),
                          64)
    path = write(tmp_path / f"data.{fmt}", [{"text": r["text"]} for r in RECORDS], fmt)
    cfg = cfg_of(tmp_path, path=str(path))
    corpus = load_data(cfg.data, cfg.model, 64)
    assert corpus.content_hash == reference.content_hash
    # the validation stream is the validation records, UTF-8, joined by the end-of-doc byte 0
    evals = bytes(corpus.eval.to(torch.uint8).tolist()).split(b"\x00")
    assert corpus.meta["documents"]["eval"] == len(evals) > 0
    assert all(e.decode() in {r["text"] for r in RECORDS} for e in evals)
    assert corpus.meta["split_by"] == "hash" and corpus.meta["loss_tokens"] == "all"


def test_txt_files_are_documents_and_a_folder_keeps_its_splits(tmp_path):
    folder = tmp_path / "ds"
    (folder / "train").mkdir(parents=True)
    for i in range(30):
        (folder / "train" / f"doc{i:02d}.txt").write_text(f"training text number {i}. " * 5)
    write(folder / "validation.jsonl", [{"text": "held out for validation"}], "jsonl")
    write(folder / "test-00000-of-00001.parquet", [{"text": "held out for testing"}], "parquet")
    cfg = cfg_of(tmp_path, path=str(folder), test_fraction=0.1)
    corpus = load_data(cfg.data, cfg.model, 8)
    assert corpus.meta["split_by"] == "dataset"
    assert corpus.meta["documents"] == {"train": 30, "eval": 1, "test": 1}
    assert bytes(corpus.eval.tolist()) == b"held out for validation"
    assert bytes(corpus.test.tolist()) == b"held out for testing"


def test_a_dataset_name_comes_from_the_local_cache_only(tmp_path, monkeypatch):
    """A hub-style cache (refs/main -> a snapshot) holding owner/name: found offline; a name
    not in it is one line, with downloads off."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "datasets--me--tiny"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    write(repo / "snapshots" / commit / "data" / "train-00000-of-00001.parquet", RECORDS,
          "parquet")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    cfg = cfg_of(tmp_path, path="me/tiny")
    corpus = load_data(cfg.data, cfg.model, 64)
    assert corpus.name == f"hf:{commit}+bytes" and corpus.meta["documents"]["train"] > 40
    line = config_error(["data=hf", "data.path=me/absent", "model.init=scratch", "logger=none",
                         f"out_dir={tmp_path / 'runs'}"])
    assert line == (f"error: data.path='me/absent' is neither a local file or folder nor a "
                    f"dataset in the local Hugging Face cache ({cache}) and downloads are off "
                    "(data.allow_download=false): download it first, or allow it with "
                    "data.allow_download=true")
    assert not (tmp_path / "runs").exists()


def instruction_records(n: int, seed: int = 0) -> list[dict]:
    """Prompts of random letters (noise: nothing predicts them), one fixed response."""
    rng = random.Random(seed)
    return [{"prompt": "".join(rng.choices(string.ascii_lowercase, k=24)) + "\nAnswer:",
             "response": " yes, the same reply every time."} for _ in range(n)]


def test_prompt_tokens_are_never_targets(tmp_path):
    records = instruction_records(40)
    path = write(tmp_path / "sft.jsonl", records, "jsonl")
    cfg = cfg_of(tmp_path, path=str(path), prompt_field="prompt", response_field="response")
    corpus = load_data(cfg.data, cfg.model, 64)
    assert corpus.meta["loss_tokens"] == "response" and corpus.meta["prompts_cut"] == 0
    # independently: the scored bytes of the validation stream are its records' responses and
    # the end-of-document byte after each but the last
    (x, y), = eval_batches(corpus.eval, 1, corpus.eval.numel() - 1, 1)
    n_eval = corpus.meta["documents"]["eval"]
    response = records[0]["response"].encode()
    scored = bytes(t for t in y[0].tolist() if t != IGNORE_INDEX)
    # (the first record's prompt is the first input: its first byte is no target at all)
    assert scored == (response + b"\x00") * (n_eval - 1) + response
    assert (y[0] == IGNORE_INDEX).sum() == n_eval * len(records[0]["prompt"].encode()) - 1
    # a prompt longer than the window keeps its last seq_len - 1 tokens
    short = load_data(cfg.data, cfg.model, 16)
    assert short.meta["prompts_cut"] == 40


def tiny_llama_with_own_tokenizer(path, texts):
    """A tiny Llama built from a config and a byte-level BPE trained here, saved together."""
    from bench.data.tokenizers import BPE_EOS, train_bpe

    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=train_bpe(texts, 320),
                                                     eos_token=BPE_EOS)
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=64,
        tie_word_embeddings=False)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return tokenizer


def test_lora_on_instructions_learns_the_response_not_the_noise(tmp_path, one_thread):
    """Issue 27's test: prompts random noise, responses deterministic. With the prompt masked
    the eval loss falls near 0; the loss over every token cannot (the noise is unpredictable)."""
    from bench.run import prepare, train

    records = instruction_records(400)
    path = write(tmp_path / "sft.jsonl", records, "jsonl")
    model_dir = tmp_path / "tiny_llama"
    tokenizer = tiny_llama_with_own_tokenizer(
        model_dir, [r["prompt"] + r["response"] for r in instruction_records(200, seed=1)])
    cfg = compose([
        "model=hf", f"model.path={model_dir}", "model.seq_len=32", "data=hf", f"data.path={path}",
        "data.prompt_field=prompt", "data.response_field=response", "data.eval_batches=4",
        f"data.cache_dir={tmp_path / 'cache'}", "adapter=lora", "adapter.r=8",
        "adapter.alpha=16", "adapter.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,"
        "up_proj,down_proj,lm_head]", "optimizer.lr=1e-2", "trainer.max_steps=80",
        "trainer.batch_size=8", "trainer.eval_every=80", "trainer.log_every=50",
        "trainer.checkpoint_every=1000", "trainer.progress=false", "metrics.hessian.every=0",
        "logger=none"])
    prepared = prepare(cfg)
    corpus, model = prepared.parts["corpus"], prepared.parts["model"]
    assert prepared.meta["tokenizer"]["kind"] == "model"  # the folder's own: the default
    assert prepared.meta["tokenizer"]["vocab_size"] == len(tokenizer)
    assert prepared.meta["loss_tokens"] == "response"
    record = RunRecord(tmp_path / "run")
    record.create({})
    summary = train(cfg, record, prepared.parts, None)
    assert summary["status"] == "completed"
    masked = summary["final_eval_loss"]
    # the same windows with every target scored: decode ~id back to the id
    plain = torch.where(corpus.eval < 0, ~corpus.eval, corpus.eval)
    model.eval()
    with torch.no_grad():
        unmasked = sum(F.cross_entropy(model(x, y)[0].flatten(0, 1), y.flatten()).item()
                       for x, y in eval_batches(plain, 8, 32, 4)) / 4
        first = eval_batches(corpus.eval, 8, 32, 4)[0]
        logits, loss = model(*first)  # the run's loss is the mean over response targets only
        keep = first[1] != IGNORE_INDEX
        by_hand = F.cross_entropy(logits[keep], first[1][keep])
    assert float(loss) == pytest.approx(float(by_hand), rel=1e-5)
    print(f"masked {masked:.4f}, unmasked {unmasked:.3f}")
    assert masked < 0.05, masked
    assert unmasked > 1.0, unmasked  # random letters: log(26) = 3.3 nats a letter


@pytest.mark.parametrize(("file", "overrides", "line"), [
    ("a.jsonl", ["data.text_field=body"],
     "error: data.text_field='body' is not a field of {path}; its fields: text, n"),
    ("a.jsonl", ["data.text_field=n"],
     "error: data.text_field='n': record 0 of {path} holds int '0', not text"),
    ("a.csv", ["data.prompt_field=text"],
     "error: data.prompt_field='text', data.response_field=None: set both (instruction data: "
     "the prompt is not scored) or neither (plain text from data.text_field)"),
    ("a.csv", ["data.response_field=text"],
     "error: data.prompt_field=None, data.response_field='text': set both (instruction data: "
     "the prompt is not scored) or neither (plain text from data.text_field)"),
    ("empty.jsonl", [],
     "error: data.path='{path}' holds no text: 1 file of .jsonl, .json, .parquet, .csv, .txt, "
     "0 records"),
    ("a.xml", [], "error: data.path='{path}': .xml extension; allowed: .jsonl, .json, "
                  ".parquet, .csv, .txt"),
    (None, [], "error: data.path is not set: data=hf needs data.path=<a .jsonl, .json, "
               ".parquet, .csv or .txt file, a folder of them, or a dataset name of the local "
               "Hugging Face cache>"),
])
def test_bad_data_is_one_line_and_nothing_written(tmp_path, file, overrides, line):
    path = None
    if file == "empty.jsonl":
        path = tmp_path / file
        path.write_text("")
    elif file is not None:
        path = write(tmp_path / file.replace(".xml", ".jsonl"), RECORDS, "csv" if
                     file.endswith(".csv") else "jsonl")
        if file.endswith(".xml"):
            path = path.rename(tmp_path / file)
    out = tmp_path / "runs"
    given = [f"data.path={path}"] if path else []
    got = config_error(["data=hf", *given, *overrides, "model.init=scratch", "logger=none",
                        f"out_dir={out}", f"data.cache_dir={tmp_path / 'cache'}"])
    assert got == line.format(path=path)
    assert not out.exists()


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path):
    model_dir = tmp_path / "small"
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        vocab_size=300, max_position_embeddings=64)).save_pretrained(model_dir)
    out = tmp_path / "runs"
    line = config_error(["model=hf", f"model.path={model_dir}", "model.seq_len=32",
                         "data.tokenizer=bpe", "data.vocab_size=512", "data.max_bytes=300000",
                         f"data.cache_dir={tmp_path}", "adapter=lora",
                         "adapter.target_modules=[q_proj]", "logger=none", f"out_dir={out}"])
    assert line == (f"error: data.tokenizer=bpe: its vocabulary has 512 tokens but the "
                    f"embedding of model.path='{model_dir}' has 300 rows; allowed: a tokenizer "
                    "of at most 300 tokens (data.vocab_size for bpe)")
    assert not out.exists()
