"""The training loop: steps, evaluation, measurements, checkpoints, resume, divergence.

`Trainer` knows nothing about Hydra: it gets a model (adapter applied), an optimizer, the data,
the trainer config group and a run record, and returns the summary. Batches are a pure
function of (seed, step) and the checkpoint holds every RNG state, so a resumed run is bitwise
identical to an uninterrupted one on the same processor. Under torchrun, each rank trains on its
shard of the global batch through DDP and only rank 0 writes (`dist`, bench/distributed.py).
`Trainer.run` reads top to bottom:
resume, the first evaluation, then per step `train_step` and, on their schedules,
`log_row` (with `evaluate` and `measure`) and `checkpoint`, and finally the summary.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.data.corpus import eval_batches, get_batch
from bench.distributed import SINGLE, Group
from bench.errors import ConfigError, at_least, choice, positive
from bench.record import TARGET_KEYS, RunRecord, time_to_target
from bench.tracking.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)

LR_SCHEDULES = ("constant", "warmup_constant", "warmup_cosine")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainerConfig:
    """The `trainer` config group."""

    max_steps: int = 200
    batch_size: int = 8
    eval_every: int = 50
    log_every: int = 10
    checkpoint_every: int = 100
    device: str = "auto"
    dtype: str = "float32"  # float32 | bfloat16 (CUDA autocast)
    tf32: bool = False
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float = 1.0
    # Divergence (`Trainer.check_blow_up`): the training loss non-finite or above
    # divergence_factor x its first value; at an evaluation after the warmup, the eval loss
    # within uniform_tolerance nats of the uniform prediction's ln(V) when it started below
    # (a LayerNorm model that blew up predicts uniformly, below any factor of its start); a
    # trainable tensor's RMS above weight_growth x max(its first RMS, 0.02). 0 turns a rule off.
    divergence_factor: float = 10.0
    uniform_tolerance: float = 0.1
    weight_growth: float = 1000.0
    threads: int | None = None  # torch threads; default cores // parallel workers
    progress: bool = True


def check_trainer(cfg) -> None:
    t = cfg.trainer
    choice("trainer.device", t.device, DEVICES)
    choice("trainer.lr_schedule", t.lr_schedule, LR_SCHEDULES)
    choice("trainer.dtype", t.dtype, ("float32", "bfloat16"))
    for key in ("max_steps", "batch_size", "eval_every", "log_every", "checkpoint_every",
                "divergence_factor"):
        positive(f"trainer.{key}", t[key])
    for key in ("uniform_tolerance", "weight_growth"):
        at_least(f"trainer.{key}", t[key], 0)
    if t.warmup_steps < 0:
        raise ConfigError(f"trainer.warmup_steps={t.warmup_steps} must be >= 0")
    if t.threads is not None:
        positive("trainer.threads", t.threads)


def lr_factor(step: int, schedule: str, warmup: int, max_steps: int) -> float:
    """Multiplier of the base LR at optimizer step `step` (0-based)."""
    if schedule != "constant" and warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "warmup_cosine":
        progress = (step - warmup) / max(1, max_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


@torch.no_grad()
def evaluate(model, batches, device, autocast) -> float:
    was_training = model.training
    model.eval()
    total = 0.0
    for x, y in batches:
        with autocast():
            _, loss = model(x.to(device), y.to(device))
        total += loss.item()
    model.train(was_training)
    return total / len(batches)


def reset_peak_memory(device: torch.device) -> None:
    """Start a run's peak-memory count: CUDA's allocator statistics, or on Linux the process's
    peak resident set (VmHWM, reset through /proc/self/clear_refs), so that a worker process
    running several runs reports each run's own peak, not its lifetime's."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not allowed: the lifetime peak (ru_maxrss) then
        pass


def peak_memory_mb(device: torch.device) -> float:
    """The peak since `reset_peak_memory`: CUDA's allocated bytes, or the resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # KiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# Measurements whose last value a run's summary keeps, as final_<key> (bench/metrics/monitor.py;
# cond/kappa is None where the horizontal Hessian is not positive definite)
FINAL_MEASUREMENTS = ("cond/kappa", "cond/lambda_min_h", "sharpness/lambda_max",
                      "cond/gn/kappa", "cond/gn/lambda_min_h", "cond/gn/lambda_max")
# The RMS a weight-growth check measures a small or zero start against (GPT-2's init std): a
# LoRA factor that starts at 0 grows by design, not by a blow-up
RMS_FLOOR = 0.02


class Diverged(Exception):
    """The run blew up at `step`: `reason` goes to the summary's error."""

    def __init__(self, step: int, reason: str):
        super().__init__(reason)
        self.step, self.reason = step, reason


class LostRows(RuntimeError):
    """A record lost rows logged before its checkpoint: they cannot be rebuilt by resuming."""


class Trainer:
    """One run. `eval_sets` maps a metric suffix ('' for the target domain) to an eval split;
    `cfg` is the trainer config group; every other input is its own keyword. `dist`: this
    process's rank in a run on several processes (bench/distributed.py; one process: SINGLE)."""

    def __init__(
        self,
        *,
        model,
        optimizer,
        adapter,
        train_data,
        eval_sets: dict,
        cfg,
        record: RunRecord,
        seed: int,
        device: torch.device,
        n_eval_batches: int = 4,
        test_data: torch.Tensor | None = None,
        n_test_batches: int = 16,
        target_loss: float | None = None,
        logger=None,
        hooks: list[Callable] | None = None,
        dist: Group = SINGLE,
    ):
        self.model, self.optimizer, self.adapter = model, optimizer, adapter
        self.train_data, self.cfg, self.record, self.seed = train_data, cfg, record, seed
        self.device, self.logger, self.hooks = device, logger, hooks or []
        self.target_loss = target_loss
        # the training step calls `step_model` (DDP under torchrun); everything else, `model`
        self.dist, self.step_model = dist, dist.wrap(model)
        self.seq_len = model_seq_len(model)
        self.eval_sets = {name: eval_batches(data, cfg.batch_size, self.seq_len, n_eval_batches)
                          for name, data in eval_sets.items()}
        # the test split: evaluated once, at the last step of a completed run (test/loss)
        self.test_set = (eval_batches(test_data, cfg.batch_size, self.seq_len, n_test_batches)
                         if test_data is not None else None)
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        if device.type == "cuda" and cfg.tf32:  # TF32 matmuls on Ampere and later
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        use_bf16 = cfg.dtype == "bfloat16" and device.type == "cuda"
        self.autocast = (
            (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else nullcontext
        )
        self.clock = 0.0  # perf_counter() at the run's start, measurements excluded
        self.vocab_size = model_vocab_size(model)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> dict:
        t = self.cfg
        reset_peak_memory(self.device)
        step, stats = self.resume()
        self.record.write_summary({"status": "running", "steps": step, "error": None})
        self.model.train()
        self.clock = time.perf_counter() - stats["wall_s"]
        if step == 0:  # the starting point of every curve (the pretrained model, when fine-tuning)
            self.log_row(0, {"step": 0, "tokens": 0, "wall_s": 0.0}, stats)
        status, diverged_step, error = "completed", None, None
        bar, window = _progress(t, step) if self.dist.is_main else None, []
        try:
            while step < t.max_steps:
                loss, grad_norm = self.train_step(step, stats)
                step += 1
                window.append(loss)
                if bar is not None:
                    bar.update(1)
                    if step % t.log_every == 0:
                        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                evaluating = step % t.eval_every == 0 or step == t.max_steps
                if step % t.log_every == 0 or evaluating:
                    self.log_row(step, self.train_row(step, window, grad_norm, stats), stats,
                                 evaluating)
                    window = []
                if step % t.checkpoint_every == 0 or step == t.max_steps:
                    self.checkpoint(step, stats)
        except Diverged as blow_up:
            status, diverged_step, error = "diverged", blow_up.step, blow_up.reason
        finally:
            if bar is not None:
                bar.close()
        stats["wall_s"] = time.perf_counter() - self.clock
        return self.summary(status, step, diverged_step, error, stats)

    def resume(self) -> tuple[int, dict]:
        """(step, stats) from the checkpoint, or (0, fresh stats). The record keeps every row up
        to the checkpoint's step (later ones are redone; bench.record.RunRecord.keep_rows_until);
        a record that lost rows before it cannot be completed by resuming: LostRows."""
        stats = {"tokens": 0, "wall_s": 0.0, "step_s": 0.0, "initial_loss": None,
                 "best_eval": None, "last_eval": None, "rows": 0}
        state = load_checkpoint(self.record.checkpoint_path)
        if state is None:
            self.record.keep_rows_until(-1)  # no checkpoint: the run starts over
            return 0, stats
        step, stats = self._restore(state)
        kept = self.record.keep_rows_until(step)
        logged = stats.get("rows", len(kept))
        lost = (f"{self.record.metrics_path} holds {len(kept)} of the {logged} rows logged up "
                f"to the checkpoint at step {step}; resuming cannot rebuild them: delete the run "
                "folder to rerun it from step 0") if len(kept) < logged else None
        lost = self.dist.agree(lost)  # rank 0 keeps the rows: its verdict holds on every rank
        if lost:
            raise LostRows(lost)
        stats["rows"] = len(kept)
        return step, stats

    def train_step(self, step: int, stats: dict) -> tuple[float, torch.Tensor]:
        """One optimizer step at 0-based `step` (the LR schedule's factor set first); (the
        batch loss before the step, the clipped gradient's norm). Raises Diverged."""
        t, started = self.cfg, time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(step, t.lr_schedule, t.warmup_steps,
                                                       t.max_steps)
        x, y = get_batch(self.train_data, t.batch_size, self.seq_len, self.seed, step)
        x, y, weight = self.dist.shard(x, y)  # this rank's windows of the global batch
        with self.autocast():
            _, loss = self.step_model(x.to(self.device, non_blocking=True), y.to(self.device))
        loss = self.dist.weighted(loss, weight)
        value = self.dist.average(loss)  # the global batch's loss, the same on every rank
        if stats["initial_loss"] is None:
            stats["initial_loss"] = value
        if not math.isfinite(value) or value > t.divergence_factor * stats["initial_loss"]:
            self._log({"step": step + 1, "tokens": stats["tokens"],
                       "wall_s": time.perf_counter() - self.clock, "train/loss": value}, stats)
            raise Diverged(step + 1, f"loss {value} at step {step + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = t.grad_clip if t.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for g in self.optimizer.param_groups for p in g["params"]], clip)
        try:
            self.optimizer.step()
            self.adapter.after_step(step + 1, self.optimizer)
        except torch.linalg.LinAlgError as e:  # a factorisation of non-finite or degenerate
            raise Diverged(step + 1, f"{type(e).__name__} in the optimizer step: {e}") from None
        stats["tokens"] += t.batch_size * self.seq_len
        stats["step_s"] += time.perf_counter() - started
        return value, grad_norm

    def train_row(self, step: int, window: list[float], grad_norm, stats: dict) -> dict:
        """The row logged at `step`: the mean training loss since the last row, the LR, the
        gradient norm and the adapter's own metrics."""
        return {"step": step, "tokens": stats["tokens"],
                "wall_s": time.perf_counter() - self.clock,
                "train/loss": sum(window) / len(window),
                "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm),
                **self.adapter.metrics()}

    def log_row(self, step: int, row: dict, stats: dict, evaluating: bool = True) -> None:
        """Evaluate (when due; the test split at the last step) and measure into `row`, then
        write it to the record and W&B; after an evaluation, `check_blow_up`."""
        with self.evaluation_point():
            if evaluating:
                row.update(self.evaluate(stats))
            if step == self.cfg.max_steps and self.test_set is not None:
                row["test/loss"] = stats["test"] = evaluate(self.model, self.test_set,
                                                            self.device, self.autocast)
            self.clock += self.measure(step, row, stats)
        self._log(row, stats)
        if evaluating:
            self.check_blow_up(step, row["eval/loss"], stats)

    def check_blow_up(self, step: int, eval_loss: float, stats: dict) -> None:
        """The divergence rules read at an evaluation (TrainerConfig): the eval loss back at
        the uniform prediction's ln(V) after starting below it, or a trainable tensor grown past
        weight_growth x its start. Raises Diverged naming the rule."""
        t, rms = self.cfg, self._weight_rms()
        if step == 0 or "first_eval" not in stats:
            stats["first_eval"], stats["first_rms"] = eval_loss, rms
            return
        uniform = math.log(self.vocab_size)
        tol = t.uniform_tolerance
        if (tol > 0 and step > t.warmup_steps and stats["first_eval"] < uniform - tol
                and abs(eval_loss - uniform) <= tol):
            raise Diverged(step, f"eval loss {eval_loss:.4f} at step {step} is the uniform "
                                 f"prediction's ln({self.vocab_size}) = {uniform:.4f} "
                                 f"(trainer.uniform_tolerance={tol:g}), having started at "
                                 f"{stats['first_eval']:.4f}")
        if t.weight_growth > 0:
            for name, now in rms.items():
                start = max(stats["first_rms"].get(name, RMS_FLOOR), RMS_FLOOR)
                if not math.isfinite(now) or now > t.weight_growth * start:
                    raise Diverged(step, f"{name} has RMS {now:.3g} at step {step}, "
                                         f"{now / start:.3g} x its start {start:.3g} "
                                         f"(trainer.weight_growth={t.weight_growth:g})")

    @torch.no_grad()
    def _weight_rms(self) -> dict[str, float]:
        """The RMS of every trainable tensor, by name (one reduction each: cheap)."""
        return {name: float(p.detach().float().pow(2).mean().sqrt())
                for name, p in self.model.named_parameters() if p.requires_grad and p.numel()}

    def _log(self, row: dict, stats: dict) -> None:
        self.record.log(row)
        stats["rows"] += 1
        if self.logger is not None:
            self.logger.log(row)

    def evaluate(self, stats: dict) -> dict:
        """eval/loss (and eval/loss_<name> for every other eval set) at the current weights."""
        out = {}
        for name, batches in self.eval_sets.items():
            key = "eval/loss" + (f"_{name}" if name else "")
            out[key] = evaluate(self.model, batches, self.device, self.autocast)
        loss = out["eval/loss"]
        stats["last_eval"] = loss
        stats["best_eval"] = loss if stats["best_eval"] is None else min(stats["best_eval"], loss)
        return out

    def measure(self, step: int, row: dict, stats: dict) -> float:
        """Run the hooks (Hessian spectra) at `step` into `row`, keeping the last value of each of
        FINAL_MEASUREMENTS in `stats` (final_<key>); returns the seconds they took, which the
        caller keeps off the wall clock: measurements are not training."""
        started = time.perf_counter()
        for hook in self.hooks:
            measured = hook(step, self.model) or {}
            row.update(measured)
            stats.update({f"final_{k}": v for k, v in measured.items()
                          if k in FINAL_MEASUREMENTS})
        return time.perf_counter() - started

    def evaluation_point(self):
        """The weights a run is evaluated and checkpointed at: the optimizer's `eval_mode()`
        where it has one (Schedule-Free's averaged iterate: bench/optim/schedule_free.py), the
        training weights otherwise."""
        return getattr(self.optimizer, "eval_mode", nullcontext)()

    def checkpoint(self, step: int, stats: dict) -> None:
        stats["wall_s"] = time.perf_counter() - self.clock
        # at the evaluation point, restored inside it too (_restore): a bitwise resume; one
        # writer under torchrun, every rank holding the same state
        with self.evaluation_point():
            if self.dist.is_main:
                save_checkpoint(self.record.checkpoint_path, self._state(step, stats))

    def summary(self, status: str, step: int, diverged_step, error, stats: dict) -> dict:
        completed = status == "completed"
        return {
            "status": status,
            "steps": step,
            "diverged_step": diverged_step,
            "final_eval_loss": stats["last_eval"] if completed else None,
            **({"final_test_loss": stats.get("test") if completed else None}
               if self.test_set is not None else {}),
            "best_eval_loss": stats["best_eval"],
            "tokens": stats["tokens"],
            "wall_s": stats["wall_s"],
            "tokens_per_s": stats["tokens"] / stats["step_s"] if stats["step_s"] else None,
            "peak_mem_mb": peak_memory_mb(self.device),
            # the last Hessian estimate (metrics.hessian): summary keys final_cond/kappa, ...
            **{k: v for k, v in stats.items() if k.startswith("final_")},
            "error": error,
            **self._time_to_target(),
        }

    # -- state ------------------------------------------------------------------------------
    def _state(self, step: int, stats: dict) -> dict:
        return {
            "step": step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "adapter": self.adapter.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            **rng_states(),  # Python's and NumPy's, as tensors and ints
            "stats": stats,
        }

    def _restore(self, state: dict) -> tuple[int, dict]:
        """Load a checkpoint (read with weights_only=True by load_checkpoint); one whose tensors
        do not fit this run (another version's) raises CheckpointError."""
        try:
            with self.evaluation_point():  # as `checkpoint` saved them
                self.model.load_state_dict(state["model"])
                self.optimizer.load_state_dict(state["optimizer"])
            self.adapter.load_state_dict(state["adapter"])
            torch.set_rng_state(state["rng_cpu"])
            if state.get("rng_cuda") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["rng_cuda"])
            set_rng_states(state)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            first = " ".join(str(e).split())[:160]
            raise CheckpointError(self.record.checkpoint_path,
                                  f"does not fit this run ({type(e).__name__}: {first})") from None
        return state["step"], state["stats"]

    def _time_to_target(self) -> dict:
        """AlgoPerf's time to result, from the rows this run logged (bench.record.time_to_target);
        `from_baseline` is resolved from the records by analysis (analysis/targets.py)."""
        target = self.target_loss
        if not isinstance(target, (int, float)) or isinstance(target, bool):
            return dict.fromkeys(TARGET_KEYS)
        return time_to_target(self.record.read_metrics(), target)


def model_vocab_size(model) -> int:
    cfg = getattr(model, "cfg", None)
    return cfg.vocab_size if cfg is not None else model.config.vocab_size


def model_seq_len(model) -> int:
    cfg = getattr(model, "cfg", None)
    return cfg.seq_len if cfg is not None else model.config.max_position_embeddings


def _progress(t, step: int):
    if not t.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=t.max_steps, initial=step, mininterval=2.0, leave=False, dynamic_ncols=True)
