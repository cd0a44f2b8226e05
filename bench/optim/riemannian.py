"""Riemannian optimizers for the low-rank geometries (docs/papers/knight.md §1, §5).

`RiemannianNormalized` is the paper's step template: transported momentum with a trust-region
normalisation. geoopt's `RiemannianSGD` (momentum) and `RiemannianAdam` are the extra points of
comparison; `build_riemannian` makes any of the three by name. `riemannian_normalized`,
`riemannian_sgd` and `riemannian_adam` are the builders bench.optim.OPTIMIZERS registers: each
takes its own knobs from the optimizer config and adds AdamW for the Euclidean parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import geoopt
import torch

from bench.errors import at_least, positive
from bench.optim.base import AdamKnobs, CombinedOptimizer, OptimizerSpec
from bench.optim.euclidean import adamw_over


@dataclass
class RiemannianKnobs(AdamKnobs):
    """The Riemannian optimizers' keys: manifold points at manifold_lr, the rest AdamW at lr
    (betas, eps: riemannian_adam's and the AdamW part's)."""

    momentum: float = 0.9
    manifold_lr: float | None = None  # None: lr
    trust_floor: float = 1e-3  # c in T = -lr M / max(||M||, c) (docs/papers/knight.md §1)
    repair_every: int = 100  # QR re-orthonormalisation of the points every this many steps


def check_riemannian(cfg) -> None:
    o = cfg.optimizer
    if o.manifold_lr is not None:
        positive("optimizer.manifold_lr", o.manifold_lr)
    positive("optimizer.trust_floor", o.trust_floor)
    at_least("optimizer.repair_every", o.repair_every, 1)


class _EuclideanPoint:
    """A plain tensor seen as one point of a Euclidean space (Frobenius norm over all of it)."""

    @staticmethod
    def egrad2rgrad(x, u):
        return u

    @staticmethod
    def norm(x, u, keepdim=False):
        return u.norm()

    @staticmethod
    def retr_transp(x, u, v):
        return x + u, v


class RiemannianNormalized(torch.optim.Optimizer):
    r"""Transported momentum with a trust-region normalisation (docs/papers/knight.md §1, the
    template).

    For every point x (each packed point of a `geoopt.ManifoldParameter`; a leading batch of
    points is stepped point by point, each with its own norm):
        G_R = egrad2rgrad(x, dL/dx)                    Riemannian gradient
        M  <- nu M + (1 - nu) G_R                      momentum (a tangent vector at x)
        T   = -lr M / max(||M||_x, c)                  ||M||_x = sqrt(inner(x, M, M))
        x  <- retr(x, T);   M <- transp(x_old -> x, M)
    so the step has Riemannian length exactly lr whenever ||M||_x > c (a trust region of radius
    lr), and shrinks with M below the floor c. Every `repair_every` steps the point is repaired
    (`manifold.repair`: QR re-orthonormalisation, S floor, R2 rebalancing) and M transported to
    the repaired point. Plain tensors in `params` are treated as Euclidean points (Frobenius norm
    of the whole tensor, additive step).

    State per parameter: `momentum` (packed like the point), `step`, and `step_norm` (the
    Riemannian length of the last step, one per point, shape (..., 1, 1); a tensor).
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        c: float = 1e-3,
        repair_every: int | None = 100,
        weight_decay: float = 0.0,
    ):
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum (nu) must be in [0, 1), got {momentum}")
        if not c > 0:
            raise ValueError(f"c (the trust-region floor) must be positive, got {c}")
        if weight_decay != 0:
            raise ValueError(
                "RiemannianNormalized has no weight decay (the paper's template has none); "
                f"got weight_decay={weight_decay}"
            )
        if repair_every is not None and repair_every < 1:
            raise ValueError(f"repair_every must be >= 1 or None, got {repair_every}")
        defaults = dict(lr=lr, momentum=momentum, c=c, repair_every=repair_every)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, nu, c = group["lr"], group["momentum"], group["c"]
            repair_every = group["repair_every"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("RiemannianNormalized does not support sparse gradients")
                manifold = getattr(p, "manifold", None)
                if manifold is None or isinstance(manifold, geoopt.Euclidean):
                    manifold = _EuclideanPoint
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                mom = state["momentum"]

                rgrad = manifold.egrad2rgrad(p, p.grad)
                mom.mul_(nu).add_(rgrad, alpha=1 - nu)
                norm = manifold.norm(p, mom, keepdim=True)  # (..., 1, 1): one norm per point
                scale = lr / norm.clamp_min(c)
                new_p, new_mom = manifold.retr_transp(p, mom * -scale, mom)
                state["step_norm"] = norm * scale
                if (
                    repair_every is not None
                    and state["step"] % repair_every == 0
                    and hasattr(manifold, "repair")
                ):
                    repaired = manifold.repair(new_p)
                    new_mom = manifold.transp(new_p, repaired, new_mom)
                    new_p = repaired
                p.copy_(new_p)
                mom.copy_(new_mom)
        return loss


def _materialise(params) -> list:
    """`params` as a list of tensors and param-group dicts whose "params" are lists."""
    if isinstance(params, torch.Tensor):
        return [params]
    out = []
    for item in params:
        if isinstance(item, dict):
            group = item["params"]
            group = [group] if isinstance(group, torch.Tensor) else list(group)
            out.append({**item, "params": group})
        else:
            out.append(item)
    return out


def _flat_params(params: list) -> list:
    return [p for item in params for p in (item["params"] if isinstance(item, dict) else [item])]


# The options each optimizer takes. build_riemannian accepts their union, so one config can
# carry all of them; an option of another Riemannian optimizer is ignored.
_OPTIONS = {
    "riemannian_normalized": {"momentum", "c", "repair_every", "weight_decay"},
    "riemannian_sgd": {"momentum", "dampening", "weight_decay", "nesterov", "stabilize"},
    "riemannian_adam": {"betas", "eps", "weight_decay", "amsgrad", "stabilize"},
}
_ALL_OPTIONS = set().union(*_OPTIONS.values())
RIEMANNIAN_OPTIMIZERS: tuple[str, ...] = tuple(_OPTIONS)


def build_riemannian(name: str, params, lr: float, **options) -> torch.optim.Optimizer:
    """A Riemannian optimizer by name, for params that include geoopt.ManifoldParameters.

    riemannian_normalized: `RiemannianNormalized` (momentum, c, repair_every);
    riemannian_sgd: geoopt `RiemannianSGD` (momentum, default 0.9; dampening, nesterov);
    riemannian_adam: geoopt `RiemannianAdam` (betas, eps, amsgrad; its weight decay is coupled
    L2, docs/papers/knight.md §5).
    Options of the other optimizers are ignored, unknown ones rejected. For the geoopt
    optimizers `repair_every` (default 100) becomes geoopt's `stabilize`: every that many steps
    the points are re-projected (`projx`: QR re-orthonormalisation) and so are the momenta.
    """
    if name not in RIEMANNIAN_OPTIMIZERS:
        raise ValueError(
            f"unknown Riemannian optimizer {name!r}; allowed: {', '.join(RIEMANNIAN_OPTIMIZERS)}"
        )
    unknown = set(options) - _ALL_OPTIONS
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(sorted(unknown))} for Riemannian optimizer {name!r}; "
            f"allowed: {', '.join(sorted(_ALL_OPTIONS))}"
        )
    params = _materialise(params)
    if not any(isinstance(p, geoopt.ManifoldParameter) for p in _flat_params(params)):
        raise ValueError(
            f"Riemannian optimizer {name!r} has no manifold parameters: give it the "
            "geoopt.ManifoldParameter tensors of the low-rank weights (the rest belongs to AdamW)"
        )
    repair_every = options.get("repair_every", 100)
    kwargs = {k: v for k, v in options.items() if k in _OPTIONS[name]}
    if name == "riemannian_normalized":
        return RiemannianNormalized(params, lr, **kwargs)
    kwargs.setdefault("stabilize", repair_every)
    if name == "riemannian_sgd":
        kwargs.setdefault("momentum", 0.9)
        return geoopt.optim.RiemannianSGD(params, lr, **kwargs)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return geoopt.optim.RiemannianAdam(params, lr, **kwargs)


def _with_adamw(name: str, params, cfg, **options) -> CombinedOptimizer:
    """The Riemannian optimizer `name` on the manifold parameters at cfg.manifold_lr (default
    cfg.lr), AdamW at cfg.lr on the rest. Repairs (QR re-orthonormalisation) every
    cfg.repair_every steps, passed in `options` by each builder below."""
    on_manifold = [p for p in params if isinstance(p, geoopt.ManifoldParameter)]
    rest = [p for p in params if not isinstance(p, geoopt.ManifoldParameter)]
    opts = {"riemannian": build_riemannian(name, on_manifold, lr=cfg.manifold_lr or cfg.lr,
                                           **options)}
    if rest:
        opts["adamw"] = adamw_over(rest, cfg)
    return CombinedOptimizer(opts)


def riemannian_normalized(model, params, cfg) -> CombinedOptimizer:
    """`RiemannianNormalized` (cfg.momentum, cfg.trust_floor as c, cfg.repair_every) + AdamW."""
    return _with_adamw("riemannian_normalized", params, cfg, momentum=cfg.momentum,
                       c=cfg.trust_floor, repair_every=cfg.repair_every)


def riemannian_sgd(model, params, cfg) -> CombinedOptimizer:
    """geoopt's `RiemannianSGD` (cfg.momentum; stabilize = cfg.repair_every) + AdamW."""
    return _with_adamw("riemannian_sgd", params, cfg, momentum=cfg.momentum,
                       stabilize=cfg.repair_every)


def riemannian_adam(model, params, cfg) -> CombinedOptimizer:
    """geoopt's `RiemannianAdam` (cfg.betas, cfg.eps; stabilize = cfg.repair_every) + AdamW."""
    return _with_adamw("riemannian_adam", params, cfg, betas=tuple(cfg.betas), eps=cfg.eps,
                       stabilize=cfg.repair_every)


__all__ = [
    "RIEMANNIAN_OPTIMIZERS",
    "RiemannianNormalized",
    "build_riemannian",
    "riemannian_adam",
    "riemannian_normalized",
    "riemannian_sgd",
]


def _spec(build) -> OptimizerSpec:
    return OptimizerSpec(build, knobs=RiemannianKnobs, check=check_riemannian,
                         needs_manifold=True)


RIEMANNIAN_ADAM = _spec(riemannian_adam)
RIEMANNIAN_SGD = _spec(riemannian_sgd)
RIEMANNIAN_NORMALIZED = _spec(riemannian_normalized)
