"""The `balora_toy` study: the BaLoRA paper's Fig. 3 and Fig. 6 through the harness.

A one-layer "model" W = W0 + s B A (PEFT notation: B = lora_B (n x r), A = lora_A (r x m),
s = alpha / r) fitted to a target T by the loss

    L(A, B) = 1/2 ||W0 + s B A - T||_F^2,   T, W0 ~ N(0, 1)^{n x m}      (docs/papers/balora.md §5)

from LoRA's init (B = 0, A ~ N(0, 1)). One run is one (adapter, optimizer) pair on `toy.draws`
problems (T, W0), problem d being the one that seed + d draws; per problem it evaluates every
init x learning rate of the grid at once: the factors carry leading dimensions (inits, lrs), so
8 inits x 50 LRs = 400 trajectories are stepped together in float64 with closed-form gradients.
Per init, the LR with the lowest final loss is kept (trajectories whose loss went above
`toy.drop_above` or non-finite are dropped), and the run records the excess loss over the
problem's optimal rank-r loss 1/2 sum_{i>r} sigma_i(T - W0)^2 at those LRs, plus the exact
(closed-form) Hessian condition number, sharpness and balancing gap at each init's end point
(docs/papers/balora.md §4).
The experiment sets adapter.alpha = adapter.r, so s = 1 as in the paper.

Update rules (`toy.method`; the run's method name is adapter/rule), all with a constant LR:
  gd       A <- A - lr g_A
  sign_gd  A <- A - lr g_A / (|g_A| + 1e-8), no momentum (the paper's toy "adam")
  adam     Adam, betas 0.9 / 0.999, eps 1e-8, bias-corrected; moments untouched by the projection
BaLoRA (`adapter=balora`, `adapter.alignment`) projects (A, B) onto A A^T = B^T B after every
step, never before the first (at B = 0 the projection would give the saddle (0, 0)).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from bench.adapters.balancing import balancing_gap, project_balanced
from bench.adapters.lora import lora_alpha
from bench.errors import ConfigError
from bench.metrics.hessian import condition_number
from bench.record import TOY_FILE, RunRecord, atomic_write, method_name

F64 = torch.float64
UPDATE_RULES = ("gd", "sign_gd", "adam")  # the allowed values of toy.method
SIGN_EPS = 1e-8
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


# ----------------------------------------------------------------------------- the problem
@dataclass
class ToyProblem:
    W0: Tensor  # (n, m)
    T: Tensor  # (n, m)
    A0: Tensor  # (inits, r, m): each init's lora_A; lora_B starts at 0
    optimal_loss: float  # 1/2 sum_{i > r} sigma_i(T - W0)^2: the best rank-r loss

    @property
    def r(self) -> int:
        return self.A0.shape[-2]


def make_problem(n: int, m: int, r: int, inits: int, seed: int) -> ToyProblem:
    """T, W0 ~ N(0, 1)^{n x m} drawn once from `seed` (one problem for every init, as in the
    paper's 8 trajectories), then one A ~ N(0, 1)^{r x m} per init."""
    g = torch.Generator().manual_seed(seed)
    T = torch.randn(n, m, generator=g, dtype=F64)
    W0 = torch.randn(n, m, generator=g, dtype=F64)
    A0 = torch.randn(inits, r, m, generator=g, dtype=F64)
    sigma = torch.linalg.svdvals(T - W0)
    return ToyProblem(W0, T, A0, 0.5 * float((sigma[r:] ** 2).sum()))


def residual(A: Tensor, B: Tensor, W0: Tensor, T: Tensor, s: float) -> Tensor:
    """E = W0 + s B A - T, batched over the leading dimensions of A (..., r, m), B (..., n, r)."""
    return W0 + s * (B @ A) - T


def loss_and_grads(A: Tensor, B: Tensor, W0: Tensor, T: Tensor, s: float):
    """L = 1/2 ||E||^2 per problem and its closed-form gradients, with G = s E:
    grad_A = B^T G, grad_B = G A^T. Returns (L (...), grad_A, grad_B)."""
    E = residual(A, B, W0, T, s)
    G = s * E
    return 0.5 * (E * E).sum((-2, -1)), B.mT @ G, G @ A.mT


def toy_loss(W0: Tensor, T: Tensor, s: float):
    """(A, B) -> 1/2 ||W0 + s B A - T||^2 for one problem (for autograd and exact Hessians)."""
    def loss(A: Tensor, B: Tensor) -> Tensor:
        E = residual(A, B, W0, T, s)
        return 0.5 * (E * E).sum()
    return loss


# ------------------------------------------------------------------------------ optimizers
class Stepper:
    """One optimizer over a batch of factor pairs; `lr` broadcasts against the batch (..., 1, 1)."""

    def __init__(self, rule: str, lr: Tensor):
        if rule not in UPDATE_RULES:
            raise ValueError(f"rule must be one of {UPDATE_RULES}, got {rule!r}")
        self.rule, self.lr, self.t = rule, lr, 0
        self.moments: dict[str, tuple[Tensor, Tensor]] = {}

    def direction(self, name: str, g: Tensor) -> Tensor:
        if self.rule == "gd":
            return g
        if self.rule == "sign_gd":
            return g / (g.abs() + SIGN_EPS)
        b1, b2 = ADAM_BETAS
        m, v = self.moments.get(name, (torch.zeros_like(g), torch.zeros_like(g)))
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        self.moments[name] = (m, v)
        m_hat, v_hat = m / (1 - b1**self.t), v / (1 - b2**self.t)
        return m_hat / (v_hat.sqrt() + ADAM_EPS)

    def step(self, A: Tensor, B: Tensor, grad_A: Tensor, grad_B: Tensor):
        self.t += 1
        return (A - self.lr * self.direction("A", grad_A),
                B - self.lr * self.direction("B", grad_B))


# ------------------------------------------------------------------------------ the sweep
@dataclass
class Trajectories:
    losses: Tensor  # (steps + 1, inits, lrs): loss after each step, step 0 first
    kept: Tensor  # (inits, lrs) bool: never above drop_above, always finite
    A: Tensor  # (inits, lrs, r, m): final factors (frozen where dropped)
    B: Tensor  # (inits, lrs, n, r)


def simulate(problem: ToyProblem, lrs: Tensor, s: float, steps: int, rule: str,
             balanced: bool, alignment: str = "procrustes",
             drop_above: float = 1e5) -> Trajectories:
    """Every init x LR of `problem` for `steps` steps of the update `rule`, as one batch.

    A trajectory is dropped (and frozen, so that it cannot produce NaNs) as soon as its loss is
    non-finite or above `drop_above`. With `balanced`, (A, B) is projected onto the balanced
    manifold after every step (`project_balanced`, keeps B A); the optimizer state is left alone.
    """
    inits, r, m = problem.A0.shape
    n = problem.W0.shape[-2]
    L = lrs.numel()
    A = problem.A0[:, None].expand(inits, L, r, m).clone()
    B = torch.zeros(inits, L, n, r, dtype=F64)
    opt = Stepper(rule, lrs.to(F64).view(1, L, 1, 1))
    loss, grad_A, grad_B = loss_and_grads(A, B, problem.W0, problem.T, s)
    kept = torch.isfinite(loss) & (loss <= drop_above)
    losses = [loss]
    for _ in range(steps):
        A_new, B_new = opt.step(A, B, grad_A, grad_B)
        finite = torch.isfinite(A_new).all((-2, -1)) & torch.isfinite(B_new).all((-2, -1))
        kept = kept & finite
        keep = kept[..., None, None]
        A_new, B_new = torch.where(keep, A_new, A), torch.where(keep, B_new, B)
        if balanced:
            A_new, B_new = project_balanced(A_new, B_new, alignment)
            A_new, B_new = torch.where(keep, A_new, A), torch.where(keep, B_new, B)
        A, B = A_new, B_new
        loss, grad_A, grad_B = loss_and_grads(A, B, problem.W0, problem.T, s)
        kept = kept & torch.isfinite(loss) & (loss <= drop_above)
        losses.append(loss)
    return Trajectories(torch.stack(losses), kept, A, B)


def choose_lr(traj: Trajectories) -> Tensor:
    """Per init, the index of the kept LR with the lowest final loss; -1 when none was kept."""
    final = torch.where(traj.kept, traj.losses[-1], math.inf)
    best = final.argmin(-1)
    return torch.where(traj.kept.any(-1), best, -1)


def toy_hessian(A: Tensor, B: Tensor, W0: Tensor, T: Tensor, s: float) -> Tensor:
    """The exact Hessian of L = 1/2 ||E||^2, E = W0 + s B A - T, in (vec A, vec B) (row-major,
    A first: the layout of bench.metrics.hessian.flatten([A, B])), batched over the leading
    dimensions of A (..., r, m) and B (..., n, r); returns (..., rm + nr, rm + nr).

    H = J^T J + the curvature of E: with dE = s (dB A + B dA), row-major vec E,
      J_A = s kron(B, I_m) (nm x rm),  J_B = s kron(I_n, A^T) (nm x nr),
      d^2 L / dA_kj dB_il = s delta_kl E_ij (the only second-order term of E).
    """
    *batch, r, m = A.shape
    n = B.shape[-2]
    E = residual(A, B, W0, T, s)
    eye_m, eye_n, eye_r = (torch.eye(k, dtype=A.dtype) for k in (m, n, r))
    J_A = s * torch.einsum("...ik,jl->...ijkl", B, eye_m).reshape(*batch, n * m, r * m)
    J_B = s * torch.einsum("ip,...kj->...ijpk", eye_n, A).reshape(*batch, n * m, n * r)
    J = torch.cat([J_A, J_B], dim=-1)
    H = J.mT @ J
    cross = s * torch.einsum("kl,...ij->...kjil", eye_r, E).reshape(*batch, r * m, n * r)
    H[..., : r * m, r * m:] += cross
    H[..., r * m:, : r * m] += cross.mT
    return H


def end_point_spectra(A: Tensor, B: Tensor, W0: Tensor, T: Tensor, s: float) -> dict:
    """Exact Hessian spectra at a batch of end points A (k, r, m), B (k, n, r)
    (docs/papers/balora.md §4):
    per point kappa = lambda_max / lambda_(r^2 + 1), the r^2 GL(r) zero modes skipped."""
    eigs = torch.linalg.eigvalsh(toy_hessian(A, B, W0, T, s))  # (k, rm + nr), ascending
    r2 = A.shape[-2] ** 2
    return {"kappa": [condition_number(e, r2) for e in eigs],
            "lambda_max": eigs[:, -1].tolist(), "lambda_min": eigs[:, r2].tolist()}


PER_INIT = ("problem", "lr_index", "lr", "excess", "kappa", "lambda_max", "lambda_min", "gap",
            "dropped", "final_excess_by_lr")


def toy_results(problem: ToyProblem, lrs: Tensor, s: float, steps: int, rule: str,
                balanced: bool, alignment: str, drop_above: float, label: int = 0) -> dict:
    """Simulate one problem, choose each init's LR and measure its end point: per init (lists
    over inits, keys PER_INIT; `problem` = `label`) and the problem's optimal loss."""
    traj = simulate(problem, lrs, s, steps, rule, balanced, alignment, drop_above)
    chosen = choose_lr(traj)
    excess = traj.losses - problem.optimal_loss  # (steps + 1, inits, lrs)
    ok = [i for i, j in enumerate(chosen.tolist()) if j >= 0]
    A, B = traj.A[ok, chosen[ok]], traj.B[ok, chosen[ok]]
    spectra = end_point_spectra(A, B, problem.W0, problem.T, s) if ok else {}
    gaps = [balancing_gap(a, b) for a, b in zip(A, B)]
    inits = len(chosen)
    out: dict[str, list] = {key: [None] * inits for key in PER_INIT}
    out["excess"] = [[None] * (steps + 1)] * inits  # every LR dropped for this init
    for k, i in enumerate(ok):
        j = chosen[i].item()
        out["lr_index"][i], out["lr"][i] = j, lrs[j].item()
        out["excess"][i] = excess[:, i, j].tolist()
        for key in ("kappa", "lambda_max", "lambda_min"):
            out[key][i] = spectra[key][k]
        out["gap"][i] = gaps[k]
    out["problem"] = [label] * inits
    out["dropped"] = (~traj.kept).sum(-1).tolist()  # per init: LRs dropped
    out["final_excess_by_lr"] = torch.where(traj.kept, excess[-1], math.nan).tolist()
    return {**out, "optimal_loss": problem.optimal_loss}


# --------------------------------------------------------------------------- run record
def _quantiles(values: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    q = torch.nanquantile(values, torch.tensor([0.25, 0.5, 0.75], dtype=F64), dim=dim)
    return q[1], q[0], q[2]


def _median(values: list) -> float | None:
    """The median (mean of the middle two for an even count) of the finite values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return torch.tensor(finite, dtype=F64).quantile(0.5).item() if finite else None


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


@dataclass
class ToyConfig:
    """The `toy` config group (task=toy, conf/experiment/balora_toy.yaml)."""

    n: int = 20
    m: int = 20
    r: int = 4
    steps: int = 100
    inits: int = 8
    draws: int = 1  # problems (T, W0) per run: draw d is the one seed + d draws on its own
    lr_grid: int = 50
    lr_min: float = 1e-5
    lr_max: float = 0.3
    drop_above: float = 1e5
    method: str = "gd"  # the update rule: one of UPDATE_RULES


def check_toy(cfg) -> None:
    """The toy's own config checks (bench.config.validate covers the shared keys)."""
    t = cfg.toy
    if t.method not in UPDATE_RULES:
        raise ConfigError(f"toy.method={t.method!r} is not allowed; allowed values: "
                          f"{', '.join(UPDATE_RULES)}")
    if cfg.adapter.name not in ("lora", "balora"):
        raise ConfigError(f"task=toy needs adapter.name lora or balora, got {cfg.adapter.name!r}")
    for key in ("n", "m", "r", "steps", "inits", "draws", "lr_grid", "lr_min", "lr_max",
                "drop_above"):
        if not t[key] > 0:
            raise ConfigError(f"toy.{key}={t[key]!r} must be > 0")
    if t.lr_min > t.lr_max:
        raise ConfigError(f"toy.lr_min={t.lr_min} must be <= toy.lr_max={t.lr_max}")
    if t.r > min(t.n, t.m):
        raise ConfigError(f"toy.r={t.r} must be <= min(toy.n, toy.m) = {min(t.n, t.m)}")
    if t.r != cfg.adapter.r:
        raise ConfigError(f"toy.r={t.r} must equal adapter.r={cfg.adapter.r} "
                          "(s = adapter.alpha / adapter.r scales the toy's B A)")


def run_toy(cfg, record: RunRecord) -> dict:
    """One toy run (one adapter x one update rule, all inits x LRs) into the created `record`:
    metrics.jsonl (the median excess-loss curve) and toy.json (per init); returns the summary.
    The run skeleton (bench/run.py) finds the record, writes its config and the summary."""
    record.metrics_path.unlink(missing_ok=True)  # a rerun of an unfinished run starts over
    t = cfg.toy
    start = time.perf_counter()
    lrs = torch.linspace(t.lr_min, t.lr_max, t.lr_grid, dtype=F64)
    s = lora_alpha(cfg.adapter) / cfg.adapter.r
    # draw d of a run is the problem that seed + d draws on its own (toy.draws = 1: seed's)
    problems = [cfg.seed + d for d in range(t.draws)]
    out: dict[str, list] = {key: [] for key in (*PER_INIT, "optimal_loss")}
    for label in problems:
        problem = make_problem(t.n, t.m, t.r, t.inits, label)
        one = toy_results(problem, lrs, s, t.steps, t.method, cfg.adapter.name == "balora",
                          cfg.adapter.alignment, t.drop_above, label)
        for key in PER_INIT:
            out[key] += one[key]
        out["optimal_loss"].append(one["optimal_loss"])
    out.update(problems=problems, lr_grid=lrs.tolist(), method=method_name(cfg),
               adapter=cfg.adapter.name, alignment=cfg.adapter.alignment
               if cfg.adapter.name == "balora" else None, optimizer=t.method, scale=s,
               seed=cfg.seed)
    curves = torch.tensor([[math.nan if v is None else v for v in c] for c in out["excess"]],
                          dtype=F64).reshape(t.draws * t.inits, t.steps + 1)
    median, q25, q75 = _quantiles(curves, dim=0)  # over every init of every problem
    for step in range(t.steps + 1):
        record.log({"step": step, "toy/excess_median": median[step].item(),
                    "toy/excess_q25": q25[step].item(), "toy/excess_q75": q75[step].item()})
    text = json.dumps({k: _finite_or_none(v) for k, v in out.items()}).encode()
    atomic_write(record.dir / TOY_FILE, text)
    final = median[-1].item()
    return {
        "status": "completed" if math.isfinite(final) else "diverged",
        "final_excess_median": final,
        "steps": t.steps,
        "draws": t.draws,
        "cond/kappa_median": _median(out["kappa"]),
        "sharpness/median": _median(out["lambda_max"]),
        "balora/gap_median": _median(out["gap"]),
        "lr_median": _median(out["lr"]),
        "wall_s": time.perf_counter() - start,
        "error": None if math.isfinite(final) else "every learning rate dropped",
    }
