"""model=hf (extra `hf`): local causal LMs through load_hf, and one end-to-end run.

Nothing is downloaded: tiny models are built from configs with random weights and saved with
`save_pretrained` into a temporary directory.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

transformers = pytest.importorskip("transformers")

from bench.errors import ConfigError  # noqa: E402
from bench.models.config import ModelConfig  # noqa: E402
from bench.models.hf import HFCausalLM, attention_modules, load_hf  # noqa: E402
from bench.train import model_seq_len  # noqa: E402
from tests.conftest import config_error  # noqa: E402

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)


def tiny_llama(vocab_size: int = 256):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=vocab_size, max_position_embeddings=64,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg)


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=256, n_positions=64)
    return transformers.GPT2LMHeadModel(cfg)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama().save_pretrained(path)
    return path


def model_cfg(path, seq_len: int = 32):
    return OmegaConf.structured(ModelConfig(name="hf", kind="hf", path=str(path), seq_len=seq_len))


def test_load_hf_llama_logits_and_loss(llama_dir):
    model = load_hf(model_cfg(llama_dir, seq_len=128))
    assert isinstance(model, HFCausalLM)
    assert model_seq_len(model) == 64  # min(max_position_embeddings, model.seq_len)
    assert model.config.vocab_size == 256
    assert all(p.dtype == torch.float32 for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (2, 17), generator=g)
    x, y = tokens[:, :-1], tokens[:, 1:]
    model.eval()
    with torch.no_grad():
        logits, loss = model(x, y)
    assert logits.shape == (2, 16, 256)
    # independent reference: the saved model itself, loss on the already-shifted targets
    ref = transformers.AutoModelForCausalLM.from_pretrained(llama_dir, local_files_only=True)
    ref.eval()
    with torch.no_grad():
        ref_logits = ref(input_ids=x).logits
    torch.testing.assert_close(logits.detach(), ref_logits, atol=1e-5, rtol=1e-5)
    log_p = torch.log_softmax(ref_logits.double(), dim=-1)
    expected = -log_p.gather(-1, y[..., None]).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    # not the model's internal (shift-again) loss
    with torch.no_grad():
        internal = ref(input_ids=x, labels=y).loss
    assert abs(float(internal) - float(loss)) > 1e-4
    # without targets: logits only
    with torch.no_grad():
        logits2, none = model(x)
    assert none is None and logits2.shape == (2, 16, 256)

    found = attention_modules(model)
    assert len(found["q"]) == len(found["k"]) == len(found["v"]) == len(found["o"]) == 2
    assert all(name.endswith("self_attn.q_proj") for name in found["q"])


def test_load_hf_gpt2_seq_len_and_patterns(tmp_path):
    tiny_gpt2().save_pretrained(tmp_path)
    model = load_hf(model_cfg(tmp_path, seq_len=32))
    assert model.cfg.seq_len == 32
    x = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        logits, loss = model(x, x)
    assert logits.shape == (1, 8, 256)
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits[0], x[0])), rel=1e-6)
    found = attention_modules(model)
    assert len(found["qkv"]) == 2 and len(found["o"]) == 2  # attn.c_proj only, not mlp.c_proj
    assert all(".attn." in name for name in found["o"])


def test_load_hf_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="model.path"):
        load_hf(model_cfg(None))
    with pytest.raises(ConfigError, match="model.path.*not a directory"):
        load_hf(model_cfg(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="model.path"):
        load_hf(model_cfg(tmp_path))  # a directory with no model in it
    small = tmp_path / "small_vocab"
    tiny_llama(vocab_size=128).save_pretrained(small)
    with pytest.raises(ConfigError, match="vocabulary has 128"):
        load_hf(model_cfg(small))




def test_run_missing_path_is_a_config_error(tmp_path):
    out = tmp_path / "runs"
    line = config_error(["model=hf", "adapter=lora", "adapter.target_modules=[q_proj]",
                         "logger=none", f"out_dir={out}"])
    assert line == ("error: model.path is not set: model=hf needs "
                    "model.path=/path/to/a/local/model/directory (a transformers "
                    "`save_pretrained` folder; nothing is downloaded)")
    assert not out.exists()
