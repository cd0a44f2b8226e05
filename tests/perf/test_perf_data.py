"""Benchmark (make perf): tokenizer throughput, the data loader's share of a training step with
BPE and with bytes, and SmolLM2's CPU step time beside the built-in models', side by side."""

from __future__ import annotations

import time

import pytest
import torch

from bench.data.corpus import get_batch
from bench.data.tokenized import assign_splits, documents
from bench.data.tokenizers import ByteTokenizer, bpe_tokenizer, model_tokenizer
from bench.run import prepare
from tests.conftest import compose

pytestmark = pytest.mark.perf


def _best(fn, repeats: int) -> float:
    """The fastest of `repeats` calls of fn, in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def test_tokenizer_throughput(tmp_path):
    from omegaconf import OmegaConf

    from bench.config import DataConfig

    data = OmegaConf.structured(DataConfig(domain="kjv", cache_dir=str(tmp_path)))
    docs, labels, _ = assign_splits(documents(data)[0], 0.1, 0.0)
    texts = [d.text for d in docs]
    n_bytes = sum(len(t.encode()) for t in texts)
    t0 = time.perf_counter()
    bpe = bpe_tokenizer([t for t, s in zip(texts, labels) if s == "train"], 4096, str(tmp_path))
    train_s = time.perf_counter() - t0
    rates = {}
    tokenizers = {"bytes": ByteTokenizer(), "bpe 4096": bpe}
    from bench.models.convert_gguf import ensure_converted

    smollm2 = compose(["model=smollm2"]).model
    ensure_converted(smollm2)
    tokenizers["smollm2 (model)"] = model_tokenizer(smollm2.path)
    for name, tok in tokenizers.items():
        n = sum(len(a) for a in tok.encode_batch(texts))
        seconds = _best(lambda tok=tok: tok.encode_batch(texts), 2)
        rates[name] = n / seconds
        print(f"\n[perf] {name}: {n / seconds:,.0f} tokens/s ({n:,} tokens, "
              f"{n_bytes / n:.2f} bytes a token, KJV {n_bytes / 1e6:.1f} MB in {seconds:.2f} s)",
              end="")
    print(f"\n[perf] training the 4096-token BPE on KJV's training chapters: {train_s:.1f} s "
          "(once; cached by content)")
    assert rates["bpe 4096"] > 1e5  # measured ~6e5 on 2 cores: tokenizing never limits a run


def _step_parts(overrides, tmp_path):
    cfg = compose([*overrides, "trainer.progress=false", "metrics.hessian.every=0",
                   "logger=none", f"data.cache_dir={tmp_path}", f"out_dir={tmp_path / 'runs'}"])
    prepared = prepare(cfg)
    return cfg, prepared.parts


def _loader_and_step(parts, batch: int, seq: int, steps: int) -> tuple[float, float]:
    """(seconds per batch drawn, seconds per training step including that draw)."""
    model, opt, data = parts["model"], parts["optimizer"], parts["corpus"].train
    loader = _best(lambda: [get_batch(data, batch, seq, 0, s) for s in range(20)], 3) / 20

    def step(s=[0]):  # noqa: B006 - a step counter across calls
        x, y = get_batch(data, batch, seq, 0, s[0])
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        s[0] += 1

    step()  # warm-up
    return loader, _best(step, steps)


def test_loader_share_of_a_gpt_small_step_bpe_vs_bytes(tmp_path):
    common = ["model=gpt_small", "model.init=scratch", "adapter=full", "trainer.batch_size=8",
              "data.domain=stdlib_docs"]
    shares = {}
    for name, extra in (("bytes", []), ("bpe 4096", ["data.tokenizer=bpe"])):
        cfg, parts = _step_parts([*common, *extra], tmp_path)
        loader, step = _loader_and_step(parts, 8, cfg.model.seq_len, 5)
        shares[name] = loader / step
        print(f"\n[perf] gpt_small {name}: loader {loader * 1e3:.3f} ms of a {step * 1e3:.0f} ms "
              f"step = {shares[name]:.2%}", end="")
    print(f"\n[perf] loader share, bpe / bytes: {shares['bpe 4096'] / shares['bytes']:.2f}x")
    assert shares["bpe 4096"] < 0.02 and shares["bytes"] < 0.02


def test_smollm2_step_time_beside_the_builtin_models(tmp_path):
    """A LoRA step (r = 8 on every projection, AdamW) at the same tokens per step: SmolLM2 at
    2 x 128 tokens and at the study's 8 x 256, the built-in models at 2 x 128."""
    lora = ["adapter=lora", "adapter.r=8", "optimizer.lr=1e-3"]
    sizes = {"gpt_tiny": (["model=gpt_tiny", "model.init=scratch"], 2, 128),
             "gpt_small": (["model=gpt_small", "model.init=scratch",
                            "adapter.target_modules=[q,k,v,o,up,down]"], 2, 128),
             "smollm2": (["model=smollm2", "data.domain=kjv", "model.seq_len=128",
                          "adapter.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,"
                          "up_proj,down_proj]"], 2, 128)}
    seconds = {}
    for name, (overrides, batch, seq) in sizes.items():
        _, parts = _step_parts([*overrides, *lora, f"trainer.batch_size={batch}"], tmp_path)
        _, seconds[name] = _loader_and_step(parts, batch, seq, 3)
        print(f"\n[perf] {name} LoRA step, {batch} x {seq} tokens: {seconds[name] * 1e3:.0f} ms",
              end="")
    _, parts = _step_parts([*sizes["smollm2"][0][:-2], "model.seq_len=256",
                            sizes["smollm2"][0][-1], *lora, "trainer.batch_size=8"], tmp_path)
    _, study = _loader_and_step(parts, 8, 256, 1)
    print(f"\n[perf] smollm2 / gpt_small: {seconds['smollm2'] / seconds['gpt_small']:.1f}x, "
          f"smollm2 / gpt_tiny: {seconds['smollm2'] / seconds['gpt_tiny']:.1f}x "
          f"({torch.get_num_threads()} threads)")
    print(f"[perf] smollm2 LoRA step at smollm2_finetune's size (8 x 256 tokens): {study:.1f} s")
    assert seconds["smollm2"] > seconds["gpt_small"]  # 135M parameters against 5M
