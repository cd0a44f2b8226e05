"""Hessian spectra and condition numbers (docs/papers/balora.md §4, docs/design.md §7).

Two measurements of kappa = lambda_max / (smallest non-invariant eigenvalue):
  (a) exact: the full Hessian of the loss in all factor entries (small problems), eigenvalues
      ascending, the n_zero smallest (the r^2 zero modes of the GL(r) invariance per layer at a
      critical point) skipped;
  (b) Lanczos on Hessian-vector products restricted to the horizontal space of the LoRA factors,
      the orthogonal complement of the invariance directions {(dA, dB) = (-L A, B L)}.
At a critical point (a) and (b) agree: H annihilates the vertical space, so it maps the
horizontal space to itself. Elsewhere the vertical eigenvalues are not zero and (a) is ill-posed.

Flat layout: a point or tangent is the concatenation of the flattened tensors in the order they
are passed to loss_fn; for factor pairs that is [A_1, B_1, A_2, B_2, ...], each row-major.
Every random start uses its own generator (seed 0 by default), never the global RNG, so that
measuring does not change a training run.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

HVP = Callable[[Tensor], Tensor]


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate the tensors' entries (row-major) into one vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat vector into views shaped like `like` (inverse of `flatten`)."""
    sizes = [t.numel() for t in like]
    return [p.view(t.shape) for p, t in zip(torch.split(flat, sizes), like)]


# --------------------------------------------------------------------------- exact spectrum
def exact_eigenvalues(loss_fn: Callable[..., Tensor], params: Sequence[Tensor]) -> Tensor:
    """Ascending eigenvalues of the Hessian of loss_fn(*params) in all entries of `params`.

    Params are cast to float64 (loss_fn's own constants should be float64 too); the Hessian
    (torch.func.hessian on the flat vector) is symmetrised before eigvalsh.
    """
    like = [p.detach().to(torch.float64) for p in params]
    H = torch.func.hessian(lambda x: loss_fn(*unflatten(x, like)))(flatten(like))
    return torch.linalg.eigvalsh(0.5 * (H + H.mT))


def condition_number(eigenvalues: Tensor, n_zero: int) -> float:
    """kappa = lambda_max / lambda_(n_zero + 1), eigenvalues ascending (docs/papers/balora.md §4).

    The n_zero smallest eigenvalues (r^2 per adapted layer: the GL(r) zero modes) are skipped.
    Returns inf when the denominator is <= 0 (not a local minimum off the invariance).
    """
    if not 0 <= n_zero < eigenvalues.numel():
        raise ValueError(f"n_zero must be in [0, {eigenvalues.numel()}), got {n_zero}")
    lam_max, lam_min = eigenvalues[-1].item(), eigenvalues[n_zero].item()
    return lam_max / lam_min if lam_min > 0 else math.inf


# ------------------------------------------------------------------ Hessian-vector products
def block(leaves: list[Tensor], derived: list[Tensor | None], idx: Sequence[int]):
    """The leaves and derived tensors (gradients, J^T u) of block `idx`, and the positions in
    it whose derived tensor depends on the leaves (None: constant)."""
    mine = [derived[i] for i in idx]
    return [leaves[i] for i in idx], mine, [k for k, d in enumerate(mine) if d is not None]


class GradientGraph:
    """The gradient g = dL/dtheta of `loss_of(leaves)` at detached copies of `params`, built
    once with its graph; Hessian-vector products H_II v of any block I of the tensors reuse it
    (double backward: d/dtheta_I <g_I, v>)."""

    def __init__(self, loss_of: Callable[[list[Tensor]], Tensor], params: Sequence[Tensor]):
        self.leaves = [p.detach().requires_grad_(True) for p in params]
        with torch.enable_grad():
            loss = loss_of(self.leaves)
            grads = torch.autograd.grad(loss, self.leaves, create_graph=True, allow_unused=True)
        self.loss = loss.detach()
        self.grads = [g if g is not None and g.requires_grad else None for g in grads]

    def hvp(self, idx: Sequence[int] | None = None, dtype: torch.dtype | None = None) -> HVP:
        """v -> H_II v on flat vectors (layout of flatten(leaves[i] for i in idx); every
        tensor by default), returned in `dtype` (default the leaves')."""
        idx = range(len(self.leaves)) if idx is None else idx
        leaves, grads, live = block(self.leaves, self.grads, idx)
        dtype = dtype or leaves[0].dtype

        def hvp(v: Tensor) -> Tensor:
            if not live:  # the loss is at most linear in these tensors
                return torch.zeros_like(v, dtype=dtype)
            parts = unflatten(v, leaves)
            hv = torch.autograd.grad([grads[k] for k in live], leaves,
                                     grad_outputs=[parts[k].to(grads[k].dtype) for k in live],
                                     retain_graph=True, allow_unused=True, materialize_grads=True)
            return flatten(hv).to(dtype)

        return hvp


def hvp_fn(loss_fn: Callable[..., Tensor], params: Sequence[Tensor]) -> HVP:
    """v -> H v on flat vectors (layout of `flatten(params)`), H the Hessian of loss_fn(*params)
    at a detached copy of `params` (`GradientGraph` over all of them)."""
    return GradientGraph(lambda leaves: loss_fn(*leaves), params).hvp()


def _start_vector(dim_or_like: int | Tensor, generator: torch.Generator | None) -> Tensor:
    if isinstance(dim_or_like, Tensor):
        n, dtype, device = dim_or_like.numel(), dim_or_like.dtype, dim_or_like.device
    else:
        n, dtype, device = int(dim_or_like), torch.float64, torch.device("cpu")
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(0)
    return torch.randn(n, generator=generator, dtype=dtype, device=device)


def lanczos(hvp: HVP, dim_or_like: int | Tensor, iters: int,
            project: Callable[[Tensor], Tensor] | None = None,
            generator: torch.Generator | None = None, tol: float = 1e-10) -> Tensor:
    """Ritz values (ascending, float64) of the symmetric operator v -> hvp(v) after `iters`
    Lanczos steps with full reorthogonalisation.

    With `project` (an orthogonal projector P) the operator is P H P on range(P): the start
    vector and every product are projected, so the Krylov space stays in range(P).
    `dim_or_like`: the dimension (float64 on CPU) or an example vector giving size, dtype and
    device. Stops early when the Krylov space is invariant (beta <= tol * ||H q||_max).
    """
    if iters < 2:
        raise ValueError(f"iters must be >= 2, got {iters}")
    q = _start_vector(dim_or_like, generator)
    if project is not None:
        q = project(q)
    if q.norm() == 0:
        raise ValueError("the start vector projects to zero: empty subspace")
    iters = min(iters, q.numel())
    Q = torch.zeros(iters, q.numel(), dtype=q.dtype, device=q.device)  # Lanczos basis, rows
    Q[0] = q / q.norm()
    alphas, betas, scale = [], [], 0.0
    for k in range(iters):
        w = hvp(Q[k])
        if project is not None:
            w = project(w)
        alphas.append(torch.dot(Q[k], w).item())
        if not math.isfinite(alphas[-1]):  # a NaN/inf loss: report it, do not crash eigvalsh
            return torch.full((k + 1,), math.nan, dtype=torch.float64)
        scale = max(scale, w.norm().item())
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w = w - Q[: k + 1].T @ (Q[: k + 1] @ w)
        if project is not None:
            w = project(w)  # remove round-off outside range(P)
        beta = w.norm().item()
        if k == iters - 1 or not beta > tol * scale:
            break
        betas.append(beta)
        Q[k + 1] = w / beta
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))  # tridiagonal (k, k)
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigvalsh(T)


def power_iteration(hvp: HVP, dim_or_like: int | Tensor, iters: int = 200, tol: float = 1e-9,
                    project: Callable[[Tensor], Tensor] | None = None,
                    generator: torch.Generator | None = None) -> float:
    """Rayleigh quotient of the dominant eigenvector: the eigenvalue of largest magnitude, which
    is lambda_max when the most negative eigenvalue is smaller in magnitude. Stops when the
    estimate changes by less than tol (relative)."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    v = _start_vector(dim_or_like, generator)
    if project is not None:
        v = project(v)
    v = v / v.norm()
    lam = math.nan
    for _ in range(iters):
        w = hvp(v)
        if project is not None:
            w = project(w)
        new = torch.dot(v, w).item()
        if not w.norm() > 0:
            return new
        v = w / w.norm()
        if abs(new - lam) <= tol * abs(new):
            return new
        lam = new
    return lam


# --------------------------------------------------------------------- horizontal space
class _VerticalSolver:
    """For one factor pair, L = argmin_L ||dA + L A||^2 + ||dB - B L||^2 (docs/papers/balora.md §2).

    Vertical directions (the tangent of (B(I + tL), (I - tL)A)) are (dA, dB) = (-L A, B L),
    L in R^{r x r}. Setting the derivative in L to zero gives the Sylvester equation
        B^T B L + L A A^T = B^T dB - dA A^T.
    With B^T B = P_b diag(b) P_b^T, A A^T = P_a diag(a) P_a^T:
        L = P_b [ (P_b^T C P_a)_ij / (b_i + a_j) ] P_a^T;
    pairs with b_i + a_j ~ 0 (a rank component dead in both factors) are set to 0, the
    least-norm solution; the vertical part (-L A, B L) is the same for any solution.
    Computed in float64, O((in + out) r^2 + r^3) per call.
    """

    def __init__(self, A: Tensor, B: Tensor):
        self.A, self.B = A.detach().double(), B.detach().double()  # (r, in), (out, r)
        b, self.P_b = torch.linalg.eigh(self.B.mT @ self.B)
        a, self.P_a = torch.linalg.eigh(self.A @ self.A.mT)
        denom = b.clamp_min(0)[:, None] + a.clamp_min(0)[None, :]  # (r, r)
        cut = 1e-12 * max(denom.max().item(), 1e-300)
        self.inv = torch.where(denom > cut, 1.0 / denom.clamp_min(cut), 0.0)

    def horizontal(self, dA: Tensor, dB: Tensor) -> tuple[Tensor, Tensor]:
        dA64, dB64 = dA.double(), dB.double()
        C = self.B.mT @ dB64 - dA64 @ self.A.mT  # (r, r)
        L = self.P_b @ ((self.P_b.mT @ C @ self.P_a) * self.inv) @ self.P_a.mT
        return (dA64 + L @ self.A).to(dA.dtype), (dB64 - self.B @ L).to(dB.dtype)


def horizontal_projector(A: Tensor, B: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """(dA, dB) -> its orthogonal projection (Euclidean metric on the factor entries) onto the
    horizontal space at (A, B), A: (r, in), B: (out, r): (dA + L A, dB - B L) with L solving
    B^T B L + L A A^T = B^T dB - dA A^T (see `_VerticalSolver`)."""
    return _VerticalSolver(A, B).horizontal


def flat_horizontal_projector(
    factor_pairs: Sequence[tuple[Tensor, Tensor]],
) -> Callable[[Tensor], Tensor]:
    """v -> P v on flat vectors with layout [A_1, B_1, A_2, B_2, ...] (each row-major),
    projecting every layer's (dA_i, dB_i) onto its horizontal space independently."""
    solvers = [_VerticalSolver(A, B) for A, B in factor_pairs]
    like = [t for pair in factor_pairs for t in pair]
    dim = sum(t.numel() for t in like)

    def project(v: Tensor) -> Tensor:
        if v.numel() != dim:
            raise ValueError(f"expected a flat vector of {dim} entries, got {v.numel()}")
        parts = unflatten(v, like)
        out = []
        for i, solver in enumerate(solvers):
            out.extend(solver.horizontal(parts[2 * i], parts[2 * i + 1]))
        return flatten(out)

    return project


def horizontal_spectrum(loss_fn: Callable[..., Tensor],
                        factor_pairs: Sequence[tuple[Tensor, Tensor]], iters: int = 50,
                        generator: torch.Generator | None = None) -> dict[str, float | None]:
    """Lanczos on P H P over the horizontal space of LoRA factor pairs (docs/design.md §7 (b)).

    loss_fn takes the factors flat in pair order: loss_fn(A_1, B_1, A_2, B_2, ...).
    Returns {"lambda_max", "lambda_min_h", "kappa"}: the largest and smallest Ritz values (the
    Krylov space is horizontal, so the invariance's zero modes never enter) and their ratio.
    All three are None, with a warning, when the spectrum is not finite; kappa is None, with a
    warning, when lambda_min_h <= 0 (not a strict minimum across the invariance orbits).
    """
    if iters < 2:
        raise ValueError(f"iters must be >= 2, got {iters}")
    params = [t for pair in factor_pairs for t in pair]
    ritz = lanczos(hvp_fn(loss_fn, params), flatten([p.detach() for p in params]), iters,
                   project=flat_horizontal_projector(factor_pairs), generator=generator)
    if not torch.isfinite(ritz).all():
        warnings.warn("horizontal_spectrum: non-finite Hessian spectrum", stacklevel=2)
        return {"lambda_max": None, "lambda_min_h": None, "kappa": None}
    lam_max, lam_min = ritz[-1].item(), ritz[0].item()
    kappa = lam_max / lam_min if lam_min > 0 else None
    if kappa is None:
        warnings.warn(f"horizontal_spectrum: lambda_min_h = {lam_min:.3g} <= 0, kappa undefined",
                      stacklevel=2)
    return {"lambda_max": lam_max, "lambda_min_h": lam_min, "kappa": kappa}
