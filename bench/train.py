"""The training loop: steps, evaluation, logging, checkpoints, resume, divergence.

`train` knows nothing about Hydra: it gets a model (adapter applied), an optimizer, the data, a
plain config and a run record, and returns the summary it wrote. Batches are a pure function of
(seed, step) and the checkpoint holds every RNG state, so a resumed run is bitwise identical to an
uninterrupted one on CPU.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from bench.data.corpus import eval_batches, get_batch
from bench.metrics.targets import TARGET_KEYS, time_to_target
from bench.tracking.record import CheckpointError, RunRecord, rng_states, set_rng_states


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


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# Measurements whose last value a run's summary keeps, as final_<key> (bench/metrics/monitor.py;
# cond/kappa is None where the horizontal Hessian is not positive definite)
FINAL_MEASUREMENTS = ("cond/kappa", "cond/lambda_min_h", "sharpness/lambda_max",
                      "cond/gn/kappa", "cond/gn/lambda_min_h", "cond/gn/lambda_max")


class Trainer:
    """One run. `eval_sets` maps a metric suffix ('' for the target domain) to an eval split;
    `cfg` is the trainer config group; every other input is its own keyword."""

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
    ):
        self.model, self.optimizer, self.adapter = model, optimizer, adapter
        self.train_data, self.cfg, self.record, self.seed = train_data, cfg, record, seed
        self.device, self.logger, self.hooks = device, logger, hooks or []
        self.target_loss = target_loss
        t = cfg
        self.eval_sets = {
            name: eval_batches(data, t.batch_size, model_seq_len(model), n_eval_batches)
            for name, data in eval_sets.items()
        }
        # the test split: evaluated once, at the last step of a completed run (test/loss)
        self.test_set = (eval_batches(test_data, t.batch_size, model_seq_len(model),
                                      n_test_batches) if test_data is not None else None)
        self.seq_len = model_seq_len(model)
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        if device.type == "cuda" and t.tf32:  # TF32 matmuls on Ampere and later
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        use_bf16 = t.dtype == "bfloat16" and device.type == "cuda"
        self.autocast = (
            (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else nullcontext
        )

    # -- state --------------------------------------------------------------------------------
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
        """Load a checkpoint (read with weights_only=True by RunRecord.load_checkpoint); one
        whose tensors do not fit this run (another version's) raises CheckpointError."""
        try:
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

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> dict:
        t = self.cfg
        stats = {
            "tokens": 0,
            "wall_s": 0.0,
            "step_s": 0.0,
            "initial_loss": None,
            "best_eval": None,
            "last_eval": None,
        }
        step = 0
        state = self.record.load_checkpoint()
        if state is not None:
            step, stats = self._restore(state)
        # Rows after the checkpoint (and a killed run's torn last line) are redone; without a
        # checkpoint the run starts over, so an earlier attempt's rows go.
        self.record.truncate_metrics(step if state is not None else -1)
        summary = {"status": "running", "steps": step, "error": None}
        self.record.write_summary(summary)
        self.model.train()
        tokens_per_step = t.batch_size * self.seq_len
        start = time.perf_counter() - stats["wall_s"]
        window: list[float] = []
        status, diverged_step, numeric_error = "completed", None, None
        bar = _progress(t, step)
        if step == 0:  # the starting point of every curve (the pretrained model, when fine-tuning)
            row = {"step": 0, "tokens": 0, "wall_s": 0.0}
            row.update(self._evaluate(stats))
            start += self._measure(0, row, stats)  # the initial weights (metrics.hessian.at_start)
            self.record.log(row)
            if self.logger is not None:
                self.logger.log(row)
        while step < t.max_steps:
            t0 = time.perf_counter()
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * lr_factor(
                    step, t.lr_schedule, t.warmup_steps, t.max_steps
                )
            x, y = get_batch(self.train_data, t.batch_size, self.seq_len, self.seed, step)
            with self.autocast():
                _, loss = self.model(x.to(self.device, non_blocking=True), y.to(self.device))
            if t.inject_nan_at is not None and step + 1 == t.inject_nan_at:
                loss = loss * float("nan")
            loss_value = loss.item()
            if stats["initial_loss"] is None:
                stats["initial_loss"] = loss_value
            if (
                not math.isfinite(loss_value)
                or loss_value > t.divergence_factor * stats["initial_loss"]
            ):
                status, diverged_step = "diverged", step + 1
                self.record.log(
                    {
                        "step": step + 1,
                        "tokens": stats["tokens"],
                        "wall_s": time.perf_counter() - start,
                        "train/loss": loss_value,
                    }
                )
                break
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip = t.grad_clip if t.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], clip
            )
            try:
                self.optimizer.step()
                self.adapter.after_step(step + 1, self.optimizer)
            except torch.linalg.LinAlgError as e:  # a factorisation of non-finite or degenerate
                status, diverged_step = "diverged", step + 1  # factors: the step blew up
                numeric_error = f"{type(e).__name__} in the optimizer step: {e}"
                break
            step += 1
            stats["tokens"] += tokens_per_step
            stats["step_s"] += time.perf_counter() - t0
            window.append(loss_value)
            if bar is not None:
                bar.update(1)
                if step % t.log_every == 0:
                    bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)

            evaluating = step % t.eval_every == 0 or step == t.max_steps
            if step % t.log_every == 0 or evaluating:
                row = {
                    "step": step,
                    "tokens": stats["tokens"],
                    "wall_s": time.perf_counter() - start,
                    "train/loss": sum(window) / len(window),
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "grad_norm": float(grad_norm),
                }
                window = []
                row.update(self.adapter.metrics())
                if evaluating:
                    row.update(self._evaluate(stats))
                if step == t.max_steps and self.test_set is not None:
                    row["test/loss"] = stats["test"] = evaluate(
                        self.model, self.test_set, self.device, self.autocast)
                start += self._measure(step, row, stats)
                self.record.log(row)
                if self.logger is not None:
                    self.logger.log(row)
            if step % t.checkpoint_every == 0 or step == t.max_steps:
                stats["wall_s"] = time.perf_counter() - start
                self.record.save_checkpoint(self._state(step, stats))
        if bar is not None:
            bar.close()
        stats["wall_s"] = time.perf_counter() - start
        summary = {
            "status": status,
            "steps": step,
            "diverged_step": diverged_step,
            "final_eval_loss": stats["last_eval"] if status == "completed" else None,
            **({"final_test_loss": stats.get("test") if status == "completed" else None}
               if self.test_set is not None else {}),
            "best_eval_loss": stats["best_eval"],
            "tokens": stats["tokens"],
            "wall_s": stats["wall_s"],
            "tokens_per_s": stats["tokens"] / stats["step_s"] if stats["step_s"] else None,
            "peak_mem_mb": peak_memory_mb(self.device),
            # the last Hessian estimate (metrics.hessian): summary keys final_cond/kappa, ...
            **{k: v for k, v in stats.items() if k.startswith("final_")},
            "error": numeric_error
            or (f"loss {loss_value} at step {diverged_step}" if status == "diverged" else None),
            **self._time_to_target(),
        }
        return summary

    def _measure(self, step: int, row: dict, stats: dict) -> float:
        """Run the hooks (Hessian spectra) at `step` into `row`, keeping the last value of each of
        FINAL_MEASUREMENTS in `stats` (final_<key>); returns the seconds they took, which the
        caller keeps off the wall clock: measurements are not training."""
        t0 = time.perf_counter()
        for hook in self.hooks:
            measured = hook(step, self.model) or {}
            row.update(measured)
            stats.update({f"final_{k}": v for k, v in measured.items()
                          if k in FINAL_MEASUREMENTS})
        return time.perf_counter() - t0

    def _evaluate(self, stats: dict) -> dict:
        out = {}
        for name, batches in self.eval_sets.items():
            key = "eval/loss" + (f"_{name}" if name else "")
            out[key] = evaluate(self.model, batches, self.device, self.autocast)
        loss = out["eval/loss"]
        stats["last_eval"] = loss
        stats["best_eval"] = loss if stats["best_eval"] is None else min(stats["best_eval"], loss)
        return out

    def _time_to_target(self) -> dict:
        """AlgoPerf's time to result, from the rows this run logged (bench/metrics/targets.py);
        `from_baseline` is resolved from the records by analysis (analysis/targets.py)."""
        target = self.target_loss
        if not isinstance(target, (int, float)) or isinstance(target, bool):
            return dict.fromkeys(TARGET_KEYS)
        return time_to_target(self.record.read_metrics(), target)


def model_seq_len(model) -> int:
    cfg = getattr(model, "cfg", None)
    return cfg.seq_len if cfg is not None else model.config.max_position_embeddings


def _progress(t, step: int):
    if not t.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=t.max_steps, initial=step, mininterval=2.0, leave=False, dynamic_ncols=True)
