"""A local Hugging Face Llama trained end to end through `python -m bench.run`."""

from __future__ import annotations

import json

import pytest

from tests.bench.test_hf_model import OFFLINE, tiny_llama
from tests.conftest import run_cli, run_dirs


@pytest.fixture
def llama_dir(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "tiny_llama")
    return tmp_path / "tiny_llama"


@pytest.mark.e2e
def test_run_end_to_end_with_local_llama(llama_dir, tmp_path):
    out = tmp_path / "runs"
    proc = run_cli(
        [
            "model=hf",
            f"model.path={llama_dir}",
            "adapter=lora",
            "adapter.target_modules=[q_proj,v_proj]",
            "adapter.r=4",
            "trainer.max_steps=3",
            "trainer.batch_size=2",
            "trainer.eval_every=3",
            "trainer.log_every=1",
            "trainer.progress=false",
            "data.eval_batches=1",
            "model.seq_len=32",
            "logger=none",
            f"out_dir={out}",
        ],
        env_extra=OFFLINE,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = run_dirs(out)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed", summary
    assert summary["steps"] == 3
    assert summary["final_eval_loss"] is not None
    # LoRA on q_proj and v_proj of 2 layers, r = 4: (32 + 32) * 4 + (32 + 16) * 4 per layer
    assert summary["trainable_params"] == 2 * ((32 + 32) * 4 + (32 + 16) * 4)

