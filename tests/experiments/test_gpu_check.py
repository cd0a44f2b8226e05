"""`make gpu-check`'s script (experiments/gpu_check.py): its dry size end to end on the CPU, the
model FLOPs it divides by, the tuned learning rates it reads, and its budget guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from bench.record import config_digest
from experiments import gpu_check
from tests.conftest import ROOT, read_jsonl


def test_dry_size_runs_every_step_on_the_cpu_and_writes_its_records(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, "-m", "experiments.gpu_check", "--dry", "--out",
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    steps = result["steps"]
    assert result["size"] == "dry" and list(steps) == [
        "cuda_tests", "throughput", "compare", "smollm2", "analysis"]
    assert steps["smollm2"]["status"] == "skipped"  # SmolLM2 runs at the real size only
    assert steps["cuda_tests"]["status"] == "skipped"  # the dry size never runs them

    throughput = steps["throughput"]["methods"]
    assert {"adamw", "r1", "r2"} <= set(throughput)
    for row in throughput.values():
        assert row["status"] == "completed", row
        assert row["tokens_per_s"] > 0 and row["tokens_per_step"] == 4 * 32
        # step time = tokens per step / tokens per second, and its ratio to AdamW's
        assert row["step_ms"] == pytest.approx(1e3 * 128 / row["tokens_per_s"], rel=1e-3)
        ratio = row["step_ms"] / throughput["adamw"]["step_ms"]
        assert row["step_ratio_to_adamw"] == pytest.approx(ratio, abs=1e-3)
    if "muon" not in throughput:
        assert any("Muon: skipped" in note for note in steps["throughput"]["notes"])

    compare = steps["compare"]
    assert compare["steps"] == gpu_check.DRY.compare_steps
    records = sorted((out / "runs" / "gpu_compare").glob("*/summary.json"))
    assert len(records) == 3 * len(gpu_check.DRY.seeds)
    for path in records:
        summary = json.loads(path.read_text())
        assert summary["status"] == "completed" and summary["steps"] == compare["steps"]
        assert read_jsonl(path.parent / "metrics.jsonl")[-1]["step"] == compare["steps"]
        assert not (path.parent / "checkpoint.pt").exists()  # records stay text only
    for key in ("r1", "r2"):
        a = compare["methods"]["adamw"]["final_eval_loss"]
        b = compare["methods"][key]["final_eval_loss"]
        assert set(a) == set(b) == {str(s) for s in gpu_check.DRY.seeds}
        delta = sum(b[s] - a[s] for s in a) / len(a)
        assert compare["methods"][key]["mean_paired_delta_vs_adamw"] == pytest.approx(delta)

    assert steps["analysis"]["exit"] == 0 and steps["analysis"]["figures"]
    assert all((out / f).is_file() for f in steps["analysis"]["figures"])
    summary_md = (out / "gpu_check.md").read_text()
    for heading in ("## 1. CUDA tests", "## 2. Throughput", "## 3. Paired comparison",
                    "## 5. Analysis"):
        assert heading in summary_md
    log = (out / "gpu_check.log").read_text()
    assert "[gpu_check] estimate (s):" in log and "python -m analysis" in log.replace(
        sys.executable, "python")


def test_model_flops_of_knight_with_two_kv_groups_by_hand():
    # C 512, 6 layers, 8 heads, 2 KV heads (k, v: 512 x 128), MLP 2048, vocab 256, T 512:
    # per layer q, o 2 * 512^2 = 524,288; k, v 2 * 512 * 128 = 131,072; MLP 2 * 512 * 2048 =
    # 2,097,152 -> 2,752,512; x 6 = 16,515,072; LM head 512 * 256 = 131,072 -> N = 16,646,144
    model = {"d_model": 512, "n_layer": 6, "n_head": 8, "n_kv_head": 2, "d_mlp": 2048,
             "vocab_size": 256, "seq_len": 512}
    per_token, n_mm = gpu_check.flops_per_token(model)
    assert n_mm == 16_646_144
    assert per_token == 6 * 16_646_144 + 12 * 6 * 512 * 512  # 118,751,232
    # without GQA and with the default MLP width 4 C
    per_token, n_mm = gpu_check.flops_per_token({**model, "n_kv_head": None, "d_mlp": None})
    assert n_mm == 6 * (4 * 512**2 + 2 * 512 * 2048) + 512 * 256


def _record(root, folder, method, seed, loss, schedule="warmup_constant", status="completed",
            **optimizer):
    run = root / folder
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": status, "final_eval_loss": loss}))
    config = {"trainer": {"lr_schedule": schedule}, "optimizer": optimizer}
    (run / "config.yaml").write_text(yaml.safe_dump({
        **config, "seed": seed, "meta": {"method": method, "config_id": config_digest(config, {})},
    }))


def test_tuned_learning_rates_are_the_study_s_choice_at_constant_lr(tmp_path):
    """The tables' rule (analysis.selection): the tuning seed's lowest validation loss, a
    reporting seed's run and another schedule's left out, a diverged run never chosen."""
    adamw, r1, r2 = gpu_check.TUNED_FALLBACK
    rec = tmp_path / "riemannian_attention"
    _record(rec, "a1", adamw, 0, 2.30, name="adamw", lr=1e-3)
    _record(rec, "a2", adamw, 0, 2.20, name="adamw", lr=2e-3)       # the minimum
    _record(rec, "a3", adamw, 0, 2.10, "warmup_cosine", name="adamw", lr=6e-3)  # other schedule
    _record(rec, "a4", adamw, 1, 2.00, name="adamw", lr=1e-2)       # a reporting seed
    _record(rec, "a5", adamw, 0, 1.90, status="diverged", name="adamw", lr=3e-3)
    _record(rec, "b1", r1, 0, 2.25, name="riemannian_normalized", manifold_lr=1e-2, lr=2e-3)
    _record(rec, "b2", r1, 0, 2.15, name="riemannian_normalized", manifold_lr=3e-2, lr=2e-3)
    _record(rec, "c1", r2, 0, 2.18, name="riemannian_normalized", manifold_lr=3e-3, lr=2e-3)
    lrs, source = gpu_check.tuned_lrs(rec)
    assert "the configurations" in source
    assert lrs == {adamw: {"optimizer.lr": 2e-3},
                   r1: {"optimizer.manifold_lr": 3e-2, "optimizer.lr": 2e-3},
                   r2: {"optimizer.manifold_lr": 3e-3, "optimizer.lr": 2e-3}}
    assert gpu_check.lr_overrides(lrs[r1]) == ["optimizer.manifold_lr=0.03", "optimizer.lr=0.002"]
    assert gpu_check.lr_label(lrs[r1]) == "manifold_lr 0.03, lr 0.002"
    (rec / "c1" / "summary.json").write_text(json.dumps({"status": "running"}))
    fallback, source = gpu_check.tuned_lrs(rec)  # a compared method has no tuned run yet
    assert fallback == gpu_check.TUNED_FALLBACK and "no tuned records" in source


def test_the_comparison_is_cut_to_fit_the_budget_left(tmp_path):
    check = gpu_check.Check(tmp_path, "real", gpu_check.REAL)
    fast = {k: {"step_ms": 1.0} for k in gpu_check.COMPARED}
    assert gpu_check.fitted_compare_steps(check, fast)[0] == gpu_check.REAL.compare_steps
    slow = {**fast, "r2": {"step_ms": 200.0}}  # 0.2 s a step: 1,500 steps x 2 seeds won't fit
    steps, why = gpu_check.fitted_compare_steps(check, slow)
    s = gpu_check.REAL
    assert steps < s.compare_steps and steps % s.eval_every == 0 and "cut" in why
    # the SmolLM2 step runs after the comparison: its estimate is kept free
    left = gpu_check.BUDGET_S - s.est_analysis_s - s.est_startup_s - gpu_check.SMOLLM2_EST_S
    per_step = 0.2 * s.concurrency_slowdown * len(s.seeds) * (1 + s.eval_batches / s.eval_every)
    assert steps * per_step <= left < (steps + s.eval_every) * per_step


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_the_real_size_without_cuda_stops_with_one_line(capsys):
    assert gpu_check.main([]) == 2
    assert "the real size needs a CUDA device" in capsys.readouterr().err


def test_the_smollm2_step_fine_tunes_lora_and_balora_and_reports_their_losses(tmp_path,
                                                                                monkeypatch):
    """Step 4 at a tiny size on the CPU (the real size is smollm2_finetune's on the GPU): both
    adapters complete, their tokens/s come from the metrics, and the loss at step 0 is SmolLM2's
    own on KJV (about 2.45 nats at the real length; a short context reads higher, well below
    the uniform ln 49,152 = 10.8)."""
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    monkeypatch.setattr(gpu_check, "SMOLLM2_STEPS", 2)
    size = gpu_check.DRY.__class__(**{**gpu_check.DRY.__dict__, "smollm2": (
        "model.seq_len=32", "trainer.batch_size=1", "trainer.threads=1")})
    check = gpu_check.Check(tmp_path / "gpu", "tiny", size)
    gpu_check.step_smollm2(check)
    result = json.loads((tmp_path / "gpu" / "gpu_check.json").read_text())["steps"]["smollm2"]
    assert result["status"] == "completed" and set(result["methods"]) == {"lora", "balora"}
    for row in result["methods"].values():
        assert row["status"] == "completed", row
        assert row["tokens_per_s"] is None or row["tokens_per_s"] > 0
        assert 1.0 < row["eval_loss_start"] < 6.0 and row["eval_loss_end"] is not None
    # LoRA and BaLoRA start from the same weights (B = 0): the same loss before training
    rows = result["methods"]
    assert rows["lora"]["eval_loss_start"] == pytest.approx(rows["balora"]["eval_loss_start"])
    assert "SmolLM2-135M" in (tmp_path / "gpu" / "gpu_check.md").read_text()
