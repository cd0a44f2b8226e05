"""`make gpu-check`: the Riemannian paper's scale on one GPU, in one short script.

    python -m experiments.gpu_check                  # real size: one CUDA GPU, < 8 minutes (H200)
    python -m experiments.gpu_check --dry            # the same steps, tiny, on the CPU (~1 min)
    python -m experiments.gpu_check --out DIR        # default results/gpu/<date> (dry: <date>-dry)

Four steps, each written to the output folder as it finishes (gpu_check.log: everything printed
and every command's output; gpu_check.json: the numbers; gpu_check.md: the summary):
  1. cuda_tests   `pytest -m cuda tests/bench/test_cuda.py tests/bench/test_distributed.py`
                  (skipped without CUDA, with a note; the 2-GPU DDP test needs two GPUs)
  2. throughput   tokens/s and model FLOPs utilisation at the paper's size (model=knight with two
                  KV groups, 8 x 512 = 4,096 tokens per step, bf16 autocast + TF32) for AdamW, R1
                  and R2 per KV group, and Muon if `optimizer=muon` exists; step-time ratios.
                  On a machine with N > 1 GPUs, then AdamW and R2 as one run on all of them
                  (`torchrun --nproc-per-node N -m bench.run`, DDP, 8 x 512 tokens per GPU):
                  tokens/s and the scaling efficiency against one GPU (`multi_device`;
                  skipped with a note on one GPU and at the dry size)
  3. compare      AdamW vs R1 vs R2 at their tuned CPU learning rates, 2 seeds, paired by seed;
                  run records under <out>/runs/gpu_compare/
  4. smollm2      a real pretrained model (issue "Real workloads"): SmolLM2-135M-Instruct
                  (model=smollm2, its own tokenizer) fine-tuned on the King James Bible with
                  LoRA and BaLoRA at smollm2_finetune's size, SMOLLM2_STEPS steps each: tokens/s,
                  peak memory, and the validation loss before and after (real size only; the
                  tests run it on the CPU at a tiny size)
  5. analysis     `python -m analysis runs=<out>/runs figures=<out>/figures`

Everything goes through the CLI (`python -m bench.run`), so the script depends on the run-record
contract only. The sizes below are the whole budget: the estimate is printed first, and the
comparison's step count is cut to fit what the measured step times leave of BUDGET_S.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from analysis.records import NoRunsError, load_runs
from analysis.selection import select_sweep
from bench.record import METRICS_FILE, is_record, read_record, read_rows

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------- constants
# NVIDIA H200 SXM datasheet: BF16 tensor core 1,979 TFLOP/s *with sparsity*, i.e. 989 TFLOP/s
# dense (the same as the H100 SXM). Measured here on an H200: an 8192^3 bf16 matmul ran at
# ~790 TFLOP/s (docs/design.md §9), so 80% MFU is the practical ceiling.
PEAK_BF16_FLOPS = 989e12
BUDGET_S = 480  # 8 minutes on one H200, process start-ups included
TUNED_RECORDS = ROOT / "results" / "riemannian_attention"
# The tuned CPU learning rates if TUNED_RECORDS holds no tuned run of a compared method (the
# protocol-1 table, results/archive/riemannian_attention): AdamW's lr; R1/R2's manifold lr, with
# lr 3e-3 for the AdamW part on their non-attention weights.
TUNED_FALLBACK = {"full/adamw": {"optimizer.lr": 2e-3},
                  "full/riemannian_normalized/fixed_rank_embedded+block":
                      {"optimizer.manifold_lr": 1e-2, "optimizer.lr": 3e-3},
                  "full/riemannian_normalized/fixed_rank_quotient+block":
                      {"optimizer.manifold_lr": 1e-2, "optimizer.lr": 3e-3}}


MULTI_DEVICE = ("adamw", "r2")  # one run on every GPU: the Euclidean and a Riemannian step
# SmolLM2 (step 4): its adapters' method names, their steps and LR (the study's grid middle)
SMOLLM2 = {"lora": "lora/adamw", "balora": "balora/adamw"}
SMOLLM2_STEPS, SMOLLM2_LR, SMOLLM2_EST_S = 60, 1e-3, 120.0


@dataclass(frozen=True)
class Size:
    """One size of the whole check; `est_*` are the seconds the budget estimate assumes."""

    device: str
    model: tuple[str, ...]  # overrides on top of model=knight
    batch_size: int  # batch_size * seq_len tokens per step
    throughput_steps: int
    compare_steps: int  # an upper bound: cut to fit the budget after the throughput step
    eval_every: int
    eval_batches: int
    seeds: tuple[int, ...]
    threads: int  # torch threads per process (the comparison runs one process per method)
    est_startup_s: float  # one `python -m bench.run` process: imports, CUDA context, corpus
    est_step_s: dict = field(default_factory=dict)  # per method key
    est_cuda_tests_s: float = 0.0
    est_analysis_s: float = 30.0
    concurrency_slowdown: float = 1.5  # methods' processes share the GPU during the comparison
    throughput_parallel: bool = False  # True only where timings are not the point (dry, CPU)
    # step 4's overrides on top of smollm2_finetune's size; None: the step is skipped
    smollm2: tuple[str, ...] | None = None


# knight.yaml: d_model 512, 6 layers, 8 heads, seq_len 512, d_mlp 2048; n_kv_head 2 for R1/R2
# per KV group. batch 8 * seq 512 = 4,096 tokens per step (the paper's).
REAL = Size(
    device="cuda", model=("model.n_kv_head=2",), batch_size=8,
    throughput_steps=200, compare_steps=1500, eval_every=100, eval_batches=4, seeds=(0, 1),
    threads=4, est_startup_s=15.0,
    est_step_s={"adamw": 0.015, "r1": 0.05, "r2": 0.05, "muon": 0.03},
    est_cuda_tests_s=120.0, est_analysis_s=30.0, smollm2=(),
)
DRY = Size(
    device="cpu",
    model=("model.n_kv_head=2", "model.d_model=32", "model.n_layer=1", "model.n_head=4",
           "model.seq_len=32", "model.d_mlp=64"),
    batch_size=4, throughput_steps=6, compare_steps=10, eval_every=5, eval_batches=1,
    seeds=(0, 1), threads=1, est_startup_s=12.0,
    est_step_s={"adamw": 0.01, "r1": 0.02, "r2": 0.02, "muon": 0.02},
    est_cuda_tests_s=0.0, est_analysis_s=15.0, concurrency_slowdown=1.0, throughput_parallel=True,
)

# method key -> (label, method name in the run records, overrides)
METHODS = {
    "adamw": ("AdamW", "full/adamw",
              ["optimizer=adamw", "model.attention.geometry=euclidean",
               "model.attention.block=false"]),
    "r1": ("R1 fixed_rank_embedded, per KV group",
           "full/riemannian_normalized/fixed_rank_embedded+block",
           ["optimizer=riemannian_normalized", "model.attention.geometry=fixed_rank_embedded",
            "model.attention.block=true"]),
    "r2": ("R2 fixed_rank_quotient, per KV group",
           "full/riemannian_normalized/fixed_rank_quotient+block",
           ["optimizer=riemannian_normalized", "model.attention.geometry=fixed_rank_quotient",
            "model.attention.block=true"]),
    "muon": ("Muon", "full/muon", ["optimizer=muon", "model.attention.geometry=euclidean",
                                   "model.attention.block=false"]),
}
COMPARED = ("adamw", "r1", "r2")


# ------------------------------------------------------------------------------- the model
def flops_per_token(model: dict) -> tuple[float, int]:
    """Model FLOPs per trained token and the parameters in matmuls, from a resolved model config.

    N = n_layer * (2 C^2 [q, o] + 2 C (C G / H) [k, v] + 2 C F [MLP in, out]) + C V [LM head],
    FLOPs/token = 6 N + 12 n_layer C T (forward + backward of the matmuls, and of the attention
    scores and mixing, non-causal convention of PaLM's MFU, Chowdhery et al. 2022, app. B).
    C d_model, H heads, G KV heads, F d_mlp, V vocab, T seq_len. The low-rank attention computes
    q = X L, k = X R in factored form, the same products, so every method has the same count.
    """
    c, layers, heads = model["d_model"], model["n_layer"], model["n_head"]
    kv = model.get("n_kv_head") or heads
    f = model.get("d_mlp") or 4 * c
    n_mm = layers * (2 * c * c + 2 * c * (c * kv // heads) + 2 * c * f) + c * model["vocab_size"]
    return 6.0 * n_mm + 12.0 * layers * c * model["seq_len"], n_mm


def tuned_lrs(records: Path) -> tuple[dict, str]:
    """Each compared method's tuned CPU learning rates as overrides (AdamW: optimizer.lr; R1/R2:
    optimizer.manifold_lr and the lr of their AdamW part): the configuration the study reports
    at the paper's constant schedule (analysis.selection, the tables' rule), else
    TUNED_FALLBACK for all."""
    try:
        runs = load_runs(records.parent, records.name)
    except NoRunsError:
        runs = None
    best: dict[str, dict] = {}
    if runs is not None and "trainer.lr_schedule" in runs:
        selection = select_sweep(runs[runs["trainer.lr_schedule"] == "warmup_constant"])
        for method, choice in selection.choices.items():
            base = selection.base(method)
            if base not in TUNED_FALLBACK or not math.isfinite(choice.mean):
                continue
            run = selection.chosen(method).iloc[0]
            best[base] = ({"optimizer.lr": run["optimizer.lr"]}
                          if run["optimizer.name"] == "adamw" else
                          {"optimizer.manifold_lr": run["optimizer.manifold_lr"],
                           "optimizer.lr": run["optimizer.lr"]})
    if set(best) == set(TUNED_FALLBACK):
        where = records.relative_to(ROOT) if records.is_relative_to(ROOT) else records
        return {m: best[m] for m in TUNED_FALLBACK}, f"the configurations {where} reports"
    return dict(TUNED_FALLBACK), "the protocol-1 table (no tuned records found)"


def lr_overrides(lrs: dict) -> list[str]:
    return [f"{key}={value}" for key, value in lrs.items()]


def lr_label(lrs: dict) -> str:
    """{"optimizer.manifold_lr": 1e-2, "optimizer.lr": 3e-3} -> "manifold_lr 0.01, lr 0.003"."""
    return ", ".join(f"{key.removeprefix('optimizer.')} {value:g}" for key, value in lrs.items())


# ----------------------------------------------------------------------------- the script
class Check:
    """The output folder, its log, JSON and markdown, and the clock of the budget."""

    def __init__(self, out: Path, size_name: str, size: Size):
        self.out, self.size_name, self.size = out, size_name, size
        out.mkdir(parents=True, exist_ok=True)
        self.log_path = out / "gpu_check.log"
        self.log_path.write_text("")
        self.t0 = time.perf_counter()
        self.result: dict = {"size": size_name, "sizes": asdict(size), "budget_s": BUDGET_S,
                             "peak_bf16_flops": PEAK_BF16_FLOPS, "steps": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        with self.log_path.open("a") as f:
            f.write(line + "\n")

    def commands(self, jobs: dict[str, list[str]], timeout: float, parallel: bool) -> dict:
        """Run commands from the repo root, one after another or all at once; each one's output
        goes to <name>.log and to the log. Returns name -> exit code (124: killed at timeout)."""
        env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true",
               "PYTHONUNBUFFERED": "1"}
        deadline = time.perf_counter() + max(timeout, 1.0)
        codes: dict[str, int] = {}
        batches = [list(jobs)] if parallel else [[name] for name in jobs]
        for batch in batches:
            procs = {}
            for name in batch:
                self.say(f"$ {' '.join(jobs[name])}")
                log = (self.out / f"{name}.log").open("w")
                procs[name] = (subprocess.Popen(jobs[name], cwd=ROOT, env=env, stdout=log,
                                                stderr=subprocess.STDOUT), log, time.perf_counter())
            for name, (proc, log, t) in procs.items():
                try:
                    codes[name] = proc.wait(timeout=max(deadline - time.perf_counter(), 1.0))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    codes[name] = 124
                    log.write(f"\n[gpu_check] killed: over its {timeout:.0f} s\n")
                log.close()
                with self.log_path.open("a") as f:
                    f.write((self.out / f"{name}.log").read_text())
                self.say(f"[gpu_check] {name}: exit {codes[name]} in "
                         f"{time.perf_counter() - t:.1f} s")
        return codes

    def save(self, step: str, data: dict) -> None:
        self.result["steps"][step] = data
        self.result["elapsed_s"] = round(self.elapsed(), 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.result, indent=2) + "\n")
        (self.out / "gpu_check.md").write_text(markdown(self.result))


def base_args(size: Size, out_dir: Path, sweep: str, multirun: bool = False) -> list[str]:
    """`python -m bench.run` at this size: the protocol of conf/experiment/gpu_check.yaml."""
    return [
        sys.executable, "-m", "bench.run", *(["-m"] if multirun else []),
        "+experiment=gpu_check", *size.model, f"data.eval_batches={size.eval_batches}",
        f"trainer.device={size.device}", f"trainer.batch_size={size.batch_size}",
        f"trainer.threads={size.threads}", f"out_dir={out_dir}", f"sweep={sweep}",
    ]


def estimate(size: Size, methods: list[str], gpus: int = 1) -> dict:
    """Seconds per step of the check, from the size's assumed start-up and step times (with
    `gpus` > 1, the multi-device runs too: each GPU's step as long as one GPU's)."""
    s = size
    throughput = sum(s.est_startup_s + s.throughput_steps * s.est_step_s[m] for m in methods)
    if gpus > 1:
        throughput += sum(s.est_startup_s + s.throughput_steps * s.est_step_s[m]
                          for m in MULTI_DEVICE)
    compare = max(s.est_startup_s + len(s.seeds) * s.compare_steps * s.est_step_s[m]
                  * s.concurrency_slowdown for m in COMPARED)
    est = {"cuda_tests": s.est_cuda_tests_s, "throughput": throughput, "compare": compare,
           "smollm2": SMOLLM2_EST_S if s.smollm2 is not None else 0.0,
           "analysis": s.est_analysis_s}
    est["total"] = sum(est.values())
    return {k: round(v, 1) for k, v in est.items()}


def steady_tokens_per_s(run_dir: Path) -> float | None:
    """Tokens/s between logged rows after the first fifth of the steps (no compilation or cuBLAS
    warm-up, no evaluation: eval rows are left out), from metrics.jsonl."""
    rows = [r for r in read_rows(run_dir / METRICS_FILE)[0]
            if "train/loss" in r and "eval/loss" not in r]
    if len(rows) < 2:
        return None
    first = rows[len(rows) // 5] if len(rows) >= 5 else rows[0]
    last = rows[-1]
    dt_s = last["wall_s"] - first["wall_s"]
    return (last["tokens"] - first["tokens"]) / dt_s if dt_s > 0 else None


def read_run(out_dir: Path, sweep: str, method: str) -> list[tuple[dict, dict, Path]]:
    """(config, summary, folder) of every record of `method` in <out_dir>/<sweep>/."""
    records = [read_record(d) for d in sorted((out_dir / sweep).glob("*")) if is_record(d)]
    return [(r.config, r.summary, r.dir) for r in records
            if r.method == method and r.summary is not None]


def step_cuda_tests(check: Check, has_cuda: bool) -> None:
    if not has_cuda:
        check.say("[gpu_check] 1/5 cuda_tests: skipped (no CUDA device: torch.cuda.is_available()"
                  " is false)")
        check.save("cuda_tests", {"status": "skipped", "note": "no CUDA device"})
        return
    check.say("[gpu_check] 1/5 cuda_tests")
    t = time.perf_counter()
    rc = check.commands({"cuda_tests": [sys.executable, "-m", "pytest", "-m", "cuda", "-q",
                                        "-rs", "tests/bench/test_cuda.py",
                                        "tests/bench/test_distributed.py"]},
                        timeout=BUDGET_S / 2, parallel=False)["cuda_tests"]
    tail = (check.out / "cuda_tests.log").read_text().strip().splitlines()[-1:]
    check.save("cuda_tests", {"status": "passed" if rc == 0 else "failed", "exit": rc,
                              "seconds": round(time.perf_counter() - t, 1),
                              "pytest": tail[0] if tail else ""})


def step_throughput(check: Check, methods: list[str], notes: list[str]) -> dict:
    size = check.size
    check.say(f"[gpu_check] 2/5 throughput: {', '.join(methods)}, {size.throughput_steps} steps"
              + (" (all at once: CPU timings are not the point)" if size.throughput_parallel
                 else " (one at a time)"))
    out_dir, sweep = check.out / "throughput", "gpu_throughput"
    lrs, _ = tuned_lrs(TUNED_RECORDS)
    steps = size.throughput_steps
    jobs = {}
    for key in methods:
        _, method, overrides = METHODS[key]
        lr = lr_overrides(lrs[method]) if method in lrs else []
        jobs[f"throughput_{key}"] = [
            *base_args(size, out_dir, sweep), *overrides, *lr, "seed=0",
            f"trainer.max_steps={steps}", f"trainer.eval_every={steps}",
            f"trainer.log_every={max(1, min(10, steps // 5))}", f"trainer.checkpoint_every={steps}"]
    codes = check.commands(jobs, timeout=BUDGET_S - check.elapsed(),
                           parallel=size.throughput_parallel)
    rows, per_token = {}, None
    for key in methods:
        label, method, _ = METHODS[key]
        rc = codes[f"throughput_{key}"]
        found = read_run(out_dir, sweep, method)
        if rc != 0 or not found or found[0][1].get("status") != "completed":
            rows[key] = {"label": label, "status": "failed", "exit": rc}
            continue
        config, summary, run_dir = found[0]
        per_token, n_mm = flops_per_token(config["model"])
        tokens_per_step = size.batch_size * config["model"]["seq_len"]
        tps = steady_tokens_per_s(run_dir) or summary["tokens_per_s"]
        rows[key] = {
            "label": label, "method": method, "status": "completed",
            "tokens_per_step": tokens_per_step,
            "tokens_per_s": round(tps, 1), "tokens_per_s_whole_run": summary["tokens_per_s"],
            "step_ms": round(1e3 * tokens_per_step / tps, 3),
            "mfu": tps * per_token / PEAK_BF16_FLOPS, "peak_mem_mb": summary["peak_mem_mb"],
            "device": config["meta"]["device"], "params_in_matmuls": n_mm,
        }
    base = rows.get("adamw", {}).get("step_ms")
    for row in rows.values():
        if base and row.get("step_ms"):
            row["step_ratio_to_adamw"] = round(row["step_ms"] / base, 3)
    tokens_per_step = next((r["tokens_per_step"] for r in rows.values() if "tokens_per_step" in r),
                           None)
    data = {"flops_per_token": per_token, "methods": rows, "notes": notes,
            "formula": "6 N + 12 n_layer d_model seq_len (flops_per_token's docstring)",
            # the step time at the bf16 peak: measured step_ms over this is 1 / MFU
            "step_ms_at_peak": (1e3 * per_token * tokens_per_step / PEAK_BF16_FLOPS
                                if per_token and tokens_per_step else None),
            "protocol": " ".join(base_args(size, Path("<out>"), sweep)[3:])}
    check.save("throughput", data)
    data["multi_device"] = multi_device(check, rows, lrs)
    check.save("throughput", data)
    for key, row in rows.items():
        check.say(f"  {key:6s} {row.get('tokens_per_s', '-'):>10} tok/s  "
                  f"step {row.get('step_ms', '-')} ms  MFU {100 * row.get('mfu', math.nan):.3g}%  "
                  f"x AdamW {row.get('step_ratio_to_adamw', '-')}")
    return rows


def gpu_count(size: Size) -> int:
    """The GPUs a size's runs can spread over: the machine's CUDA devices (0 on the CPU)."""
    import torch

    return torch.cuda.device_count() if size.device == "cuda" else 0


def multi_device(check: Check, rows: dict, lrs: dict) -> dict:
    """AdamW and R2 as one run on every GPU (torchrun, DDP: bench/distributed.py), one method at
    a time, each GPU with the one-GPU step's batch (the global batch N times larger): tokens/s
    and the scaling efficiency, N-GPU tokens/s over N x the one-GPU tokens/s of the throughput
    runs. Skipped with a note on one GPU or at the dry size (the CPU)."""
    size, gpus = check.size, gpu_count(check.size)
    if gpus < 2:
        why = "the dry size runs on the CPU" if size.device != "cuda" else f"{gpus} GPU"
        note = f"multi-device: skipped ({why}; torchrun needs 2 or more GPUs)"
        check.say(f"[gpu_check] {note}")
        return {"status": "skipped", "gpus": gpus, "note": note}
    steps = size.throughput_steps
    check.say(f"[gpu_check] multi-device: {', '.join(MULTI_DEVICE)} on {gpus} GPUs, {steps} "
              f"steps, {size.batch_size} x {gpus} sequences per step (one at a time)")
    out_dir, sweep = check.out / "throughput", "gpu_multi_device"
    jobs = {}
    for key in MULTI_DEVICE:
        _, method, overrides = METHODS[key]
        args = [a for a in base_args(size, out_dir, sweep)[3:]  # without `python -m bench.run`
                if not a.startswith("trainer.batch_size=")]
        jobs[f"multi_{key}"] = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={gpus}", "-m", "bench.run", *args, *overrides,
            *lr_overrides(lrs.get(method, {})), f"trainer.batch_size={size.batch_size * gpus}",
            "seed=0", f"trainer.max_steps={steps}", f"trainer.eval_every={steps}",
            f"trainer.log_every={max(1, min(10, steps // 5))}",
            f"trainer.checkpoint_every={steps}"]
    codes = check.commands(jobs, timeout=BUDGET_S - check.elapsed(), parallel=False)
    result = {"status": "completed", "gpus": gpus, "methods": {}}
    for key in MULTI_DEVICE:
        label, method, _ = METHODS[key]
        found = read_run(out_dir, sweep, method)
        if codes[f"multi_{key}"] != 0 or not found or found[0][1].get("status") != "completed":
            result["methods"][key] = {"label": label, "status": "failed",
                                      "exit": codes[f"multi_{key}"]}
            result["status"] = "failed"
            continue
        config, summary, run_dir = found[0]
        tps = steady_tokens_per_s(run_dir) or summary["tokens_per_s"]
        one = rows.get(key, {}).get("tokens_per_s")
        result["methods"][key] = {
            "label": label, "status": "completed", "world_size": config["meta"]["world_size"],
            "tokens_per_s": round(tps, 1), "tokens_per_s_one_gpu": one,
            "scaling_efficiency": round(tps / (gpus * one), 3) if one else None}
        check.say(f"  {key:6s} {tps:>10.0f} tok/s on {gpus} GPUs, scaling efficiency "
                  f"{result['methods'][key]['scaling_efficiency']}")
    return result


def fitted_compare_steps(check: Check, rows: dict) -> tuple[int, str]:
    """The comparison's steps: size.compare_steps, cut so that the slowest method's process (its
    seeds one after another) ends inside what is left of BUDGET_S after the analysis."""
    s = check.size
    smollm2 = SMOLLM2_EST_S if s.smollm2 is not None else 0.0  # step 4 runs after this one
    left = BUDGET_S - check.elapsed() - s.est_analysis_s - s.est_startup_s - smollm2
    step_s = max((rows[m]["step_ms"] / 1e3 if rows.get(m, {}).get("step_ms")
                  else s.est_step_s[m]) for m in COMPARED)
    # each seed: its steps plus about one step's worth per eval batch at each evaluation
    per_step = step_s * s.concurrency_slowdown * len(s.seeds) * (1 + s.eval_batches / s.eval_every)
    fit = int(left / per_step) // s.eval_every * s.eval_every
    if fit >= s.compare_steps:
        return s.compare_steps, f"{s.compare_steps} steps fit ({left:.0f} s left)"
    steps = max(fit, s.eval_every)
    return steps, f"cut from {s.compare_steps} to {steps} steps to fit {left:.0f} s left"


def step_compare(check: Check, rows: dict) -> None:
    s = check.size
    steps, why = fitted_compare_steps(check, rows)
    lrs, lr_source = tuned_lrs(TUNED_RECORDS)
    seeds = ",".join(str(x) for x in s.seeds)
    check.say(f"[gpu_check] 3/5 compare: {', '.join(COMPARED)} x seeds {seeds}, {why}")
    check.say(f"  tuned learning rates from {lr_source}: {lrs}")
    runs = check.out / "runs"
    jobs = {}
    t = time.perf_counter()
    for key in COMPARED:  # one process per method, all at once; its seeds one after another
        _, method, overrides = METHODS[key]
        jobs[f"compare_{key}"] = [
            *base_args(s, runs, "gpu_compare", multirun=True), *overrides,
            *lr_overrides(lrs[method]), f"trainer.max_steps={steps}",
            f"trainer.eval_every={s.eval_every}",
            f"trainer.log_every={max(1, min(10, steps // 5))}",
            f"trainer.checkpoint_every={max(steps // 2, 1)}",
            "hydra/launcher=serial", f"seed={seeds}"]
    codes = check.commands(jobs, timeout=BUDGET_S - check.elapsed() - s.est_analysis_s,
                           parallel=True)
    results = {}
    for key in COMPARED:
        _, method, _ = METHODS[key]
        results[key] = {
            "method": method, "exit": codes[f"compare_{key}"], "lr": lr_label(lrs[method]),
            "final_eval_loss": {str(c["seed"]): sm.get("final_eval_loss")
                                for c, sm, _ in read_run(runs, "gpu_compare", method)},
        }
    for key in ("r1", "r2"):  # paired by seed: the same data order and initial weights
        a, b = results["adamw"]["final_eval_loss"], results[key]["final_eval_loss"]
        diffs = [b[x] - a[x] for x in a if x in b and a[x] is not None and b[x] is not None]
        results[key]["mean_paired_delta_vs_adamw"] = sum(diffs) / len(diffs) if diffs else None
    for run_dir in runs.glob("*/*/checkpoint.pt"):  # records are text only (results/ is in git)
        if read_record(run_dir.parent).status != "running":
            run_dir.unlink()
    check.save("compare", {"steps": steps, "why": why, "lr_source": lr_source,
                           "seconds": round(time.perf_counter() - t, 1), "methods": results})
    for key, r in results.items():
        check.say(f"  {key:6s} {r['lr']}  final eval loss {r['final_eval_loss']}  "
                  f"paired delta {r.get('mean_paired_delta_vs_adamw', '-')}")


def step_smollm2(check: Check) -> None:
    """LoRA and BaLoRA on SmolLM2-135M (KJV, smollm2_finetune's adapters, batch and sequence
    length), SMOLLM2_STEPS steps each on the GPU, one after another: tokens/s (steady, from the
    metrics), peak memory, validation loss at step 0 and at the end. The first run converts the
    GGUF file (cached under .cache/models), so its start-up is longer."""
    size = check.size
    if size.smollm2 is None:
        check.say(f"[gpu_check] 4/5 smollm2: skipped at the {check.size_name} size (a SmolLM2 "
                  "step takes seconds on a CPU; tests/bench/test_smollm2.py runs it tiny)")
        check.save("smollm2", {"status": "skipped", "note": f"{check.size_name} size"})
        return
    check.say(f"[gpu_check] 4/5 smollm2: LoRA and BaLoRA, {SMOLLM2_STEPS} steps each")
    runs, t = check.out / "runs", time.perf_counter()
    cmd = [sys.executable, "-m", "bench.run", "-m", "+experiment=smollm2_finetune",
           f"adapter={','.join(SMOLLM2)}", f"optimizer.lr={SMOLLM2_LR}",
           f"trainer.max_steps={SMOLLM2_STEPS}", f"trainer.eval_every={SMOLLM2_STEPS}",
           f"trainer.log_every={max(1, SMOLLM2_STEPS // 20)}",
           f"trainer.checkpoint_every={SMOLLM2_STEPS}", f"trainer.device={size.device}",
           "data.eval_batches=4", "data.test_batches=4", "seed=0", "hydra/launcher=serial",
           *size.smollm2, f"out_dir={runs}", "sweep=gpu_smollm2"]
    code = check.commands({"smollm2": cmd}, timeout=max(BUDGET_S - check.elapsed()
                                                         - check.size.est_analysis_s, 60.0),
                          parallel=False)["smollm2"]
    results = {}
    for adapter, method in SMOLLM2.items():
        found = read_run(runs, "gpu_smollm2", method)
        if not found:
            results[adapter] = {"method": method, "status": "missing"}
            continue
        _, summary, run_dir = found[0]
        evals = [r["eval/loss"] for r in read_rows(run_dir / METRICS_FILE)[0]
                 if r.get("eval/loss") is not None]
        results[adapter] = {
            "method": method, "status": summary.get("status"),
            "tokens_per_s": steady_tokens_per_s(run_dir),
            "peak_mem_mb": summary.get("peak_mem_mb"),
            "eval_loss_start": evals[0] if evals else None,
            "eval_loss_end": evals[-1] if len(evals) > 1 else None}
        (run_dir / "checkpoint.pt").unlink(missing_ok=True)  # records are text only
    check.save("smollm2", {"status": "completed" if code == 0 else "failed", "exit": code,
                           "steps": SMOLLM2_STEPS, "lr": SMOLLM2_LR,
                           "seconds": round(time.perf_counter() - t, 1), "methods": results})
    for adapter, r in results.items():
        check.say(f"  {adapter:6s} {r}")


def step_analysis(check: Check) -> None:
    check.say("[gpu_check] 5/5 analysis")
    rc = check.commands({"analysis": [sys.executable, "-m", "analysis",
                                      f"runs={check.out / 'runs'}",
                                      f"figures={check.out / 'figures'}"]},
                        timeout=max(BUDGET_S - check.elapsed(), 60.0), parallel=False)["analysis"]
    figures = sorted(str(p.relative_to(check.out)) for p in (check.out / "figures").rglob("*")
                     if p.is_file()) if (check.out / "figures").is_dir() else []
    check.save("analysis", {"exit": rc, "figures": figures})
    # the throughput runs' checkpoints go too: only text stays
    for path in (check.out / "throughput").glob("*/*/checkpoint.pt"):
        path.unlink()


def markdown(result: dict) -> str:
    """gpu_check.md: what each step found, in the order they ran."""
    steps = result["steps"]
    lines = [f"# gpu-check ({result['size']} size)", "",
             f"Device: {result.get('device', '?')}; torch {result.get('torch', '?')}; "
             f"elapsed {result.get('elapsed_s', '?')} s of a {result['budget_s']} s budget.", ""]
    if "estimate_s" in result:
        lines += [f"Estimate before the run (s): {result['estimate_s']}", ""]
    if "cuda_tests" in steps:
        c = steps["cuda_tests"]
        lines += ["## 1. CUDA tests", "", f"{c['status']}: {c.get('pytest') or c.get('note')}", ""]
    if "throughput" in steps:
        t = steps["throughput"]
        lines += ["## 2. Throughput", "",
                  f"Model FLOPs per token: {t['flops_per_token']:.4g} ({t['formula']}); "
                  f"MFU against {result['peak_bf16_flops'] / 1e12:.0f} TFLOP/s (H200 dense bf16): "
                  f"a step would take {t['step_ms_at_peak'] or float('nan'):.3g} ms at that peak.",
                  "", f"Runs: `python -m bench.run {t['protocol']}` + each method's overrides.",
                  "", "| method | tokens/s | step (ms) | x AdamW | MFU | peak mem (MB) |",
                  "|---|---|---|---|---|---|"]
        for row in t["methods"].values():
            if row["status"] != "completed":
                lines.append(f"| {row['label']} | failed | | | | |")
                continue
            lines.append(f"| {row['label']} | {row['tokens_per_s']:.0f} | {row['step_ms']:.2f} | "
                         f"{row.get('step_ratio_to_adamw', '-')} | {100 * row['mfu']:.3g}% | "
                         f"{row['peak_mem_mb']:.0f} |")
        lines += [""] + [f"- {note}" for note in t["notes"]] + [""]
        multi = t.get("multi_device") or {}
        if multi.get("status") == "skipped":
            lines += [f"One run on several GPUs: {multi['note']}.", ""]
        elif multi:
            lines += [f"One run on {multi['gpus']} GPUs (torchrun, DDP, the same per-GPU batch):",
                      "", "| method | tokens/s | one GPU | scaling efficiency |",
                      "|---|---|---|---|"]
            for row in multi["methods"].values():
                lines.append(f"| {row['label']} | failed | | |" if row["status"] != "completed"
                             else f"| {row['label']} | {row['tokens_per_s']:.0f} | "
                                  f"{row['tokens_per_s_one_gpu'] or '-'} | "
                                  f"{row['scaling_efficiency'] or '-'} |")
            lines.append("")
    if "compare" in steps:
        c = steps["compare"]
        lines += ["## 3. Paired comparison", "",
                  f"{c['steps']} steps ({c['why']}); learning rates from {c['lr_source']}.", "",
                  "| method | LRs | final eval loss by seed | mean paired delta vs AdamW |",
                  "|---|---|---|---|"]
        for r in c["methods"].values():
            delta = r.get("mean_paired_delta_vs_adamw")
            delta = "baseline" if r["method"] == "full/adamw" else (
                f"{delta:+.4f}" if delta is not None else "-")
            losses = ", ".join(f"s{k}: {v:.4f}" if v is not None else f"s{k}: -"
                               for k, v in r["final_eval_loss"].items())
            lines.append(f"| {r['method']} | {r['lr']} | {losses} | {delta} |")
        lines.append("")
    if "smollm2" in steps:
        m = steps["smollm2"]
        lines += ["## 4. SmolLM2-135M fine-tuning (KJV)", ""]
        if m["status"] == "skipped":
            lines += [f"skipped: {m['note']}", ""]
        else:
            lines += [f"{m['steps']} steps at lr {m['lr']}, exit {m['exit']}, "
                      f"{m['seconds']} s in all (the GGUF conversion included).", "",
                      "| method | status | tokens/s | peak mem (MB) | eval loss step 0 | end |",
                      "|---|---|---|---|---|---|"]
            for r in m["methods"].values():
                cells = [r.get(k) for k in ("tokens_per_s", "peak_mem_mb", "eval_loss_start",
                                            "eval_loss_end")]
                lines.append(f"| {r['method']} | {r['status']} | " + " | ".join(
                    "-" if v is None else f"{v:.4g}" for v in cells) + " |")
            lines.append("")
    if "analysis" in steps:
        a = steps["analysis"]
        lines += ["## 5. Analysis", "", f"exit {a['exit']}; figures: "
                  + (", ".join(a["figures"]) or "none"), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.gpu_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="tiny size on the CPU (~1 minute)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default results/gpu/<date>, dry: .../dry)")
    args = parser.parse_args(argv)
    import torch

    from bench.config import OPTIMIZERS

    has_cuda = torch.cuda.is_available()
    if not args.dry and not has_cuda:
        print("error: the real size needs a CUDA device (torch.cuda.is_available() is false); "
              "use --dry for the CPU size", file=sys.stderr)
        return 2
    size_name, size = ("dry", DRY) if args.dry else ("real", REAL)
    out = args.out or ROOT / "results" / "gpu" / (
        dt.date.today().isoformat() + ("-dry" if args.dry else ""))
    check = Check(out.resolve(), size_name, size)
    notes = []
    methods = ["adamw", "r1", "r2"]
    if "muon" in OPTIMIZERS:
        methods.append("muon")
    else:
        notes.append("Muon: skipped, `optimizer=muon` is not a registered optimizer "
                     f"(bench.config.OPTIMIZERS: {', '.join(OPTIMIZERS)})")
    device = torch.cuda.get_device_name(0) if has_cuda and not args.dry else "cpu"
    check.result.update({"device": device, "torch": torch.__version__,
                         "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                         "estimate_s": estimate(size, methods,
                                                torch.cuda.device_count() if has_cuda
                                                and not args.dry else 1)})
    check.say(f"[gpu_check] {size_name} size on {device}, output {check.out}")
    check.say(f"[gpu_check] estimate (s): {check.result['estimate_s']} (budget {BUDGET_S} s)")
    for note in notes:
        check.say(f"[gpu_check] note: {note}")
    step_cuda_tests(check, has_cuda and not args.dry)
    rows = step_throughput(check, methods, notes)
    step_compare(check, rows)
    step_smollm2(check)
    step_analysis(check)
    check.say(f"[gpu_check] done in {check.elapsed():.0f} s (budget {BUDGET_S} s); "
              f"{check.out / 'gpu_check.md'}")
    failed = [k for k, r in rows.items() if r["status"] != "completed"]
    multi = check.result["steps"]["throughput"].get("multi_device", {})
    failed += [f"multi_{k}" for k, r in multi.get("methods", {}).items()
               if r["status"] != "completed"]
    compare = check.result["steps"]["compare"]["methods"]
    failed += [k for k, r in compare.items() if r["exit"] != 0]
    if check.result["steps"]["cuda_tests"]["status"] == "failed":
        failed.append("cuda_tests")
    if check.result["steps"]["smollm2"]["status"] == "failed":
        failed.append("smollm2")
    if check.result["steps"]["analysis"]["exit"] != 0:
        failed.append("analysis")
    if failed:
        check.say(f"[gpu_check] FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
