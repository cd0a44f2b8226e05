"""Hessian spectra logged during training: condition numbers and sharpness (docs/design.md §7).

`HessianMonitor` is a trainer hook, `hook(step, model) -> dict`. At the steps it fires it runs
Lanczos (bench.metrics.hessian) on Hessian-vector products of the loss on one fixed batch, in
the trainable tensors of the adapted layers (`layers` patterns select them by name: equal,
ending with `.<pattern>` as in PEFT, or a glob; empty: every adapted layer):

* LoRA-type adapters (factors lora_A (r x in), lora_B (out x r)): restricted to each layer's
  horizontal space, so the r^2 zero modes of the GL(r) invariance never enter:
  cond/lambda_max, cond/lambda_min_h, cond/kappa (None where lambda_min_h <= 0),
  sharpness/lambda_max, and per layer on request (cond/<layer>/...).
* Dense tensors (full fine-tuning, Riemannian adapters): no invariance to remove and an
  indefinite Hessian, so no kappa: sharpness/lambda_max and cond/lanczos_min.
* With `gauss_newton`, the same for G = J^T H_z J (cond/gn/...): positive semidefinite, so its
  kappa exists where the Hessian's does not; None where it is singular on the horizontal space
  (a factor that lost rank, as LoRA's B = 0 start: `_flat_horizontal_directions`).
* cost/hessian_s: the seconds the estimate took (kept off the run's wall clock by the trainer).

Every kappa is a ratio of Ritz values after `iters` steps: a lower bound of the true ratio,
comparable between methods measured at one `iters` (docs/design.md §7). Measuring never changes
training: detached copies through `torch.func.functional_call` (no .grad written), eval mode
restored module by module, a private generator for the start vector, and the math attention
kernel (the fused ones have no double backward). A non-finite estimate logs None and warns.
"""

from __future__ import annotations

import fnmatch
import math
import time
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from bench.errors import ConfigError
from bench.metrics.hessian import (
    GradientGraph,
    block,
    flat_horizontal_projector,
    flatten,
    lanczos,
    unflatten,
)

# Krylov bases up to this many entries (dim x iters) are kept in float64 (cheap at adapter sizes);
# larger ones (dense full fine-tuning of big models) in the parameters' own dtype.
_FLOAT64_BASIS_MAX = 2**26


# ------------------------------------------------------------------------------- layers
def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern) or fnmatch.fnmatchcase(name, pattern)


def _has_factors(module: nn.Module) -> bool:
    return isinstance(getattr(module, "lora_A", None), nn.Parameter) and isinstance(
        getattr(module, "lora_B", None), nn.Parameter
    )


def adapted_layers(adapter, model: nn.Module | None = None) -> list[tuple[str, nn.Module]]:
    """The layers a Hessian estimate can cover: `adapter.targets`, or, for an adapter without
    targets (full fine-tuning with target_modules=[all]), the modules of `model` that own
    trainable parameters directly (`model` is required then)."""
    targets = list(getattr(adapter, "targets", None) or [])
    if targets:
        return targets
    if model is None:
        raise ValueError("the adapter has no targets (every parameter trains): pass model=")
    return [
        (name, module)
        for name, module in model.named_modules()
        if any(p.requires_grad for p in module.parameters(recurse=False))
    ]


def check_layers(
    adapter,
    layers: Sequence[str],
    model: nn.Module | None = None,
) -> list[tuple[str, nn.Module]]:
    """The adapted layers selected by the `metrics.hessian.layers` patterns (all when empty).

    Raises ConfigError, listing the adapted layer names, when a pattern matches none of them.
    For an adapter without targets (full, target_modules=[all]) the candidates are the modules
    of `model` owning trainable parameters; with empty `layers` and no model, returns [] (every
    trainable parameter, resolved when the monitor first runs).
    """
    if not getattr(adapter, "targets", None) and model is None and not layers:
        return []
    candidates = adapted_layers(adapter, model)
    if not layers:
        return candidates
    names = [name for name, _ in candidates]
    unmatched = [p for p in layers if not any(_matches(n, p) for n in names)]
    if unmatched:
        raise ConfigError(
            f"metrics.hessian.layers={list(layers)}: {', '.join(map(repr, unmatched))} "
            f"match(es) no adapted layer; a pattern matches a name it equals, ends with "
            f"('.' + pattern) or matches as a glob. The adapted layers are: {', '.join(names)}"
        )
    return [(n, m) for n, m in candidates if any(_matches(n, p) for p in layers)]


# ---------------------------------------------------------------------- curvature of a batch
def _math_sdpa():
    """Attention on the math kernel: differentiable twice (flash/efficient kernels are not)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def _logits_and_loss(model: nn.Module, names: list[str], leaves: list[Tensor], batch):
    """(logits, loss) of `model(*batch)` with the named parameters replaced by `leaves`: the
    built-in GPT returns the pair, a Hugging Face model an output with .logits and .loss."""
    out = torch.func.functional_call(model, dict(zip(names, leaves)), batch)
    return (out[0], out[1]) if isinstance(out, (tuple, list)) else (out.logits, out.loss)


class _GaussNewtonGraph:
    """The logits z and the loss l(z) at detached copies of `params`, built once, for products
    with the generalised Gauss-Newton matrix G = J^T H_z J (Schraudolph 2002):
        J v      = d/du <J^T u, v>      (double vjp: J^T u is linear in a dummy u),
        H_z w    = d/dz <dl/dz, w>      (the loss's Hessian in the logits),
        J^T y    = vjp of z with y.
    Three reverse passes per product, about one HVP's cost."""

    def __init__(self, model: nn.Module, names: list[str], params: list[Tensor], batch):
        self.leaves = [p.detach().requires_grad_(True) for p in params]
        with torch.enable_grad():
            logits, loss = _logits_and_loss(model, names, self.leaves, batch)
            self.u = torch.zeros_like(logits, requires_grad=True)  # (B, T, V) dummy cotangent
            jtu = torch.autograd.grad(logits, self.leaves, self.u, create_graph=True,
                                      allow_unused=True)
            (self.dl_dz,) = torch.autograd.grad(loss, logits, create_graph=True)
        self.logits, self.loss = logits, loss.detach()
        self.jtu = [g if g is not None and g.requires_grad else None for g in jtu]

    def gvp(self, idx: Sequence[int], dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
        """v -> G_II v on flat vectors (layout of flatten(leaves[i] for i in idx)), in `dtype`."""
        leaves, jtu, live = block(self.leaves, self.jtu, idx)

        def gvp(v: Tensor) -> Tensor:
            if not live:  # the logits do not depend on these tensors
                return torch.zeros_like(v)
            parts = unflatten(v, leaves)
            (jv,) = torch.autograd.grad([jtu[k] for k in live], self.u,
                                        grad_outputs=[parts[k].to(jtu[k].dtype) for k in live],
                                        retain_graph=True)  # J v: (B, T, V)
            if not self.dl_dz.requires_grad:  # the loss is linear in the logits
                return torch.zeros_like(v)
            (hjv,) = torch.autograd.grad(self.dl_dz, self.logits, grad_outputs=jv,
                                         retain_graph=True)  # H_z J v
            gv = torch.autograd.grad(self.logits, leaves, grad_outputs=hjv, retain_graph=True,
                                     allow_unused=True, materialize_grads=True)  # J^T H_z J v
            return flatten(gv).to(dtype)

        return gvp


def _flat_horizontal_directions(factors: Sequence[Tensor]) -> int:
    """How many independent horizontal directions leave the logits unmoved because a factor
    lost rank: with p = rank B, q = rank A (A: r x in, B: out x r), the solutions of
    B dA + dB A = 0 outside the vertical space number (r - p)(in - q) + (r - q)(out - p). For
    example B v = 0 and A w = 0 give the horizontal (dA, dB) = (v w^T, 0). When this is > 0 the
    horizontal Gauss-Newton matrix is singular and kappa is infinite, whatever a few Lanczos
    steps report. LoRA's B = 0 start is such a point."""
    A, B = factors
    (r, n_in), n_out = A.shape, B.shape[0]
    q = int(torch.linalg.matrix_rank(A.detach().double()))
    p = int(torch.linalg.matrix_rank(B.detach().double()))
    return (r - p) * (n_in - q) + (r - q) * (n_out - p)


def _ritz_extremes(ritz: Tensor) -> tuple[float, float] | None:
    if ritz.numel() == 0 or not torch.isfinite(ritz).all():
        return None
    return ritz[-1].item(), ritz[0].item()


# -------------------------------------------------------------------------------- monitor
class HessianMonitor:
    """Trainer hook logging Hessian condition numbers and sharpness every `every` steps.

    every:     estimate at every step that is a multiple of `every` (0: never). The trainer
               calls hooks at log steps only; when those skip a multiple, the estimate runs at
               the first call past it.
    at_start:  also estimate at step 0 (the trainer calls hooks on its step-0 row), when
               every > 0: "start, middle, end" is every = max_steps // 2 with at_start.
    iters:     Lanczos iterations per estimate (>= 2; capped at the subspace dimension).
    layers:    name patterns of the layers to cover (see the module docstring); [] = all.
    adapter:   the applied adapter (its `.targets`).
    batch:     the fixed (x, y) the loss is evaluated on: `model(x, y)` -> (logits, loss).
    seed:      seed of the private generator of the Lanczos start vectors.
    per_layer: LoRA-type adapters only: also estimate each matched layer alone (one Lanczos
               run per layer). None (default): when `layers` is not empty.
    model:     needed up front only to check `layers` for an adapter without targets (full,
               target_modules=[all]); otherwise that check happens at the first estimate.
    gauss_newton: also estimate the Gauss-Newton matrix's spectrum (cond/gn/*, see above).
    """

    def __init__(
        self,
        every: int,
        iters: int,
        layers: Sequence[str],
        adapter,
        batch,
        seed: int = 0,
        per_layer: bool | None = None,
        model: nn.Module | None = None,
        at_start: bool = False,
        gauss_newton: bool = False,
    ):
        if every < 0:
            raise ConfigError(f"metrics.hessian.every={every} must be >= 0")
        if iters < 2:
            raise ConfigError(f"metrics.hessian.iters={iters} must be >= 2")
        self.every, self.iters, self.seed = int(every), int(iters), int(seed)
        self.at_start = bool(at_start)
        self.gauss_newton = bool(gauss_newton)
        self.patterns = list(layers or [])
        self.adapter = adapter
        self.batch = tuple(batch)
        self.per_layer = bool(self.patterns) if per_layer is None else bool(per_layer)
        self._layers = check_layers(adapter, self.patterns, model) if self.every else []
        self._resolved = bool(self._layers)
        self._prev_step: int | None = None

    # -- schedule ------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether the call at `step` estimates (and remember the step for the next call)."""
        if step == 0:
            self._prev_step = 0
            return self.every > 0 and self.at_start
        prev = step - 1 if self._prev_step is None else self._prev_step
        self._prev_step = step
        return self.every > 0 and step > 0 and step // self.every > prev // self.every

    def __call__(self, step: int, model: nn.Module) -> dict:
        if not self.due(step):
            return {}
        return self.estimate(model, step)

    # -- the estimate --------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return [name for name, _ in self._layers]

    @property
    def factored(self) -> bool:
        """LoRA-type: every covered layer has (lora_A, lora_B) factors."""
        return bool(self._layers) and all(_has_factors(m) for _, m in self._layers)

    def _tensors(self) -> list[list[Tensor]]:
        """Per covered layer, its tensors: [A, B] for factored layers, else its trainable
        parameters (each shared tensor counted once, in its first layer)."""
        if self.factored:
            return [[m.lora_A, m.lora_B] for _, m in self._layers]
        seen, out = set(), []
        for _, module in self._layers:
            own = []
            recurse = bool(getattr(self.adapter, "targets", None))
            for p in module.parameters(recurse=recurse):
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    own.append(p)
            out.append(own)
        return out

    def estimate(self, model: nn.Module, step: int | None = None) -> dict:
        """Run the estimate now (whatever the schedule) and return the metrics to log."""
        if not self._resolved:
            self._layers = check_layers(self.adapter, self.patterns, model)
            self._resolved = True
        per_layer_tensors = [ts for ts in self._tensors() if ts]
        flat = [p for ts in per_layer_tensors for p in ts]
        if not flat:
            raise ValueError("HessianMonitor: the covered layers have no trainable tensors")
        names_by_id = {id(p): n for n, p in model.named_parameters()}
        missing = [p for p in flat if id(p) not in names_by_id]
        if missing:
            raise ValueError(
                "HessianMonitor: the adapter's tensors are not parameters of "
                "the model passed to the hook"
            )
        device = flat[0].device
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with _math_sdpa():
                out = self._estimate(
                    model, [names_by_id[id(p)] for p in flat], flat, per_layer_tensors, device, step
                )
        finally:
            for m, mode in modes:
                m.training = mode
        sync()
        out["cost/hessian_s"] = time.perf_counter() - t0
        return out

    def _warn(self, step: int | None, what: str) -> None:
        where = f" at step {step}" if step is not None else ""
        warnings.warn(
            f"HessianMonitor: {what}{where}; logged as null, the run goes on", stacklevel=3
        )

    def _estimate(self, model, names, flat, per_layer_tensors, device, step) -> dict:
        factored = self.factored
        keys = (
            ("cond/lambda_max", "cond/lambda_min_h", "cond/kappa", "sharpness/lambda_max")
            if factored
            else ("sharpness/lambda_max", "cond/lanczos_min")
        )
        out: dict = dict.fromkeys(keys)
        per_layer = factored and self.per_layer
        layer_keys = (
            [(f"cond/{n}/lambda_max", f"cond/{n}/kappa") for n in self.layer_names]
            if per_layer
            else []
        )
        for pair in layer_keys:
            out.update(dict.fromkeys(pair))
        gn_keys = (
            ("cond/gn/lambda_max", "cond/gn/lambda_min_h", "cond/gn/kappa")
            if factored
            else ("cond/gn/lambda_max", "cond/gn/lanczos_min")
        )
        if self.gauss_newton:
            out.update(dict.fromkeys(gn_keys))
        if not all(torch.isfinite(p).all() for p in flat):
            self._warn(step, "non-finite trainable weights, no Hessian estimate")
            return out
        batch = tuple(t.to(device) if isinstance(t, Tensor) else t for t in self.batch)
        graph = GradientGraph(lambda leaves: _logits_and_loss(model, names, leaves, batch)[1],
                              flat)
        if not torch.isfinite(graph.loss):
            self._warn(step, f"non-finite loss {graph.loss.item()} on the Hessian batch")
            return out
        groups = [list(range(len(flat)))]  # all covered tensors jointly, then each layer alone
        if per_layer and len(per_layer_tensors) > 1:
            start = 0
            for ts in per_layer_tensors:
                groups.append(list(range(start, start + len(ts))))
                start += len(ts)
        results = [
            self._lanczos(graph.hvp(idx, self._dtype([flat[i] for i in idx])),
                          [flat[i] for i in idx], factored)
            for idx in groups
        ]
        del graph
        overall = results[0]
        if overall is None:
            self._warn(step, "non-finite Hessian spectrum")
        elif factored:
            lam_max, lam_min = overall
            out["cond/lambda_max"] = out["sharpness/lambda_max"] = lam_max
            out["cond/lambda_min_h"] = lam_min
            out["cond/kappa"] = lam_max / lam_min if lam_min > 0 else None
        else:
            out["sharpness/lambda_max"], out["cond/lanczos_min"] = overall
        layer_results = results[1:] if len(results) > 1 else results[: len(layer_keys)]
        for (k_max, k_kappa), res in zip(layer_keys, layer_results):
            if res is not None:
                lam_max, lam_min = res
                out[k_max] = lam_max
                out[k_kappa] = lam_max / lam_min if lam_min > 0 else None
        if overall is not None and any(res is None for res in layer_results):
            self._warn(step, "non-finite per-layer Hessian spectrum")
        if self.gauss_newton:
            gn = _GaussNewtonGraph(model, names, flat, batch)
            res = self._lanczos(gn.gvp(groups[0], self._dtype(flat)), flat, factored)
            del gn
            if res is None:
                self._warn(step, "non-finite Gauss-Newton spectrum")
            elif factored:
                lam_max, lam_min = res
                out["cond/gn/lambda_max"], out["cond/gn/lambda_min_h"] = lam_max, lam_min
                full_rank = not any(_flat_horizontal_directions(ts) for ts in per_layer_tensors)
                out["cond/gn/kappa"] = (lam_max / lam_min
                                        if full_rank and lam_min > 1e-12 * lam_max else None)
            else:
                out["cond/gn/lambda_max"], out["cond/gn/lanczos_min"] = res
        return out

    def _dtype(self, tensors: list[Tensor]) -> torch.dtype:
        dim = sum(t.numel() for t in tensors)
        return torch.float64 if dim * self.iters <= _FLOAT64_BASIS_MAX else tensors[0].dtype

    def _lanczos(
        self, matvec: Callable[[Tensor], Tensor], tensors: list[Tensor], factored: bool
    ) -> tuple[float, float] | None:
        """(largest, smallest) Ritz value of the operator `matvec` on these tensors (its
        horizontal part when factored), or None."""
        dim = sum(t.numel() for t in tensors)
        like = torch.empty(dim, dtype=self._dtype(tensors), device=tensors[0].device)
        generator = torch.Generator(device=like.device).manual_seed(self.seed)
        try:
            project = None
            if factored:
                pairs = [(tensors[i], tensors[i + 1]) for i in range(0, len(tensors), 2)]
                project = flat_horizontal_projector(pairs)
            ritz = lanczos(matvec, like, self.iters, project=project, generator=generator)
        except torch.linalg.LinAlgError:
            return None
        extremes = _ritz_extremes(ritz)
        if extremes is None or not all(math.isfinite(x) for x in extremes):
            return None
        return extremes
