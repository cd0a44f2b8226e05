"""Riemannian optimizers for the low-rank geometries (docs/papers/knight.md §1, §5).

`RiemannianNormalized` is the paper's step template: transported momentum with a trust-region
normalisation. geoopt's `RiemannianSGD` (momentum) and `RiemannianAdam` are the extra points of
comparison (`RiemannianSGD`, `RiemannianAdam` here: geoopt's steps, batched); `build_riemannian`
makes any of the three by name. Each steps all points of a kind (`PointStack`: one geometry,
size and dtype, e.g. every attention head of every layer) in one batched call per step, never
point by point. `riemannian_normalized`,
`riemannian_sgd` and `riemannian_adam` are the builders bench.optim.OPTIMIZERS registers: each
takes its own knobs from the optimizer config and adds AdamW for the Euclidean parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import geoopt
import torch

from bench.errors import at_least, positive
from bench.manifolds import LowRankManifold
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


class PointStack:
    """Parameters whose points are of one kind, stacked: one batched manifold call per step.

    A kind is what `LowRankManifold.batch_key` says (geometry, sizes, options) plus dtype and
    device: every parameter of a kind holds points of the same shape (rows, r) behind any
    leading dimensions, so the points of all of them stack into one (P, rows, r) tensor (e.g.
    the 96 heads x (QK, VO) points of gpt_small's 6 layers). Parameters of other manifolds
    (geoopt's own, plain tensors) are a stack of one, stepped as they are.

    `points()` and `grads()` stack the parameters' tensors (a copy, unless there is one, or the
    parameters are consecutive views of one storage: bench.models.lowrank_attention's
    `share_storage`); `write(stacked)` copies new points back. `state(key)` is the optimizer
    state `key` of every parameter as ONE stacked tensor whose slices are the per-parameter
    state tensors (views): torch's per-parameter state (state_dict, checkpoints) stays as it
    was, and the batched update writes it in place. The stacked tensor is made on the first
    step, and made again whenever the per-parameter tensors are no longer its views (after
    load_state_dict).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: list, manifold):
        self.optimizer, self.params, self.manifold = optimizer, params, manifold
        self.states = [optimizer.state[p] for p in params]
        self.single = len(params) == 1
        self.point_shape = tuple(params[0].shape[-2:])
        self.counts = [p[..., 0, 0].numel() for p in params] if not self.single else None
        self.shared = None if self.single else _shared_view(params, self.point_shape)

    def _stack(self, tensors, tail=None):
        if self.single:
            return tensors[0]
        tail = self.point_shape if tail is None else tail
        return torch.cat([t.reshape(-1, *tail) for t in tensors])

    def _split(self, stacked):
        """Per-parameter views of a stacked (P, ...) tensor, each (*leading dims of p, ...)."""
        return [
            chunk.view(*p.shape[:-2], *stacked.shape[1:])
            for p, chunk in zip(self.params, stacked.split(self.counts))
        ]

    def points(self) -> torch.Tensor:
        return self.shared if self.shared is not None else self._stack(self.params)

    def grads(self) -> torch.Tensor:
        return self._stack([p.grad for p in self.params])

    def write(self, stacked: torch.Tensor) -> None:
        if self.single or self.shared is not None:
            (self.params[0] if self.single else self.shared).copy_(stacked)
            return
        for p, new in zip(self.params, self._split(stacked)):
            p.copy_(new)

    def state(self, key: str, init=torch.zeros_like) -> torch.Tensor:
        """The stacked state `key`; parameters without it start from init(p)."""
        if self.single:
            if key not in self.states[0]:
                self.states[0][key] = init(self.params[0])
            return self.states[0][key]
        cache = self.optimizer.__dict__.setdefault("_point_stacks", {})
        tag = (key, *map(id, self.params))
        stacked, views = cache.get(tag, (None, ()))
        if len(views) == len(self.states) and all(
            st.get(key) is view for st, view in zip(self.states, views)
        ):
            return stacked
        stacked = self._stack(
            [st[key] if key in st else init(p) for st, p in zip(self.states, self.params)]
        )
        self.store(key, stacked)
        cache[tag] = (stacked, [st[key] for st in self.states])
        return stacked

    def store(self, key: str, stacked: torch.Tensor) -> None:
        """Set each parameter's state `key` to its view of `stacked` (P, ...)."""
        if self.single:
            self.states[0][key] = stacked
            return
        for st, view in zip(self.states, self._split(stacked)):
            st[key] = view

    def advance_step(self) -> int:
        """Count this step in every parameter's state["step"]; returns the (common) count. An
        int (torch.optim.Adam's load_state_dict makes it a float32 tensor; back to int here)."""
        for st in self.states:
            st["step"] = int(st.get("step", 0)) + 1
        return self.states[0]["step"]


def _shared_view(params: list, point_shape: tuple) -> torch.Tensor | None:
    """The (P, rows, r) tensor whose consecutive slices are `params`, if they are views of one
    storage in this order (contiguous, back to back); else None."""
    first = params[0]
    storage, start = first.untyped_storage(), first.storage_offset()
    end = start
    for p in params:
        if (p.untyped_storage().data_ptr() != storage.data_ptr() or p.storage_offset() != end
                or not p.is_contiguous()):
            return None
        end += p.numel()
    rows, r = point_shape
    return first.detach().new_empty(0).set_(storage, start, ((end - start) // (rows * r), rows, r))


def point_stacks(optimizer, params, default_manifold=None, by_step=False) -> list[PointStack]:
    """`params` with a gradient, grouped into PointStacks by kind (first appearance order).
    `by_step`: parameters whose state["step"] differs (a parameter skipped on some step) are
    of different kinds, so that each stack has one step count."""
    kinds: dict = {}
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError(f"{type(optimizer).__name__} does not support sparse gradients")
        manifold = getattr(p, "manifold", None) or default_manifold
        if isinstance(manifold, LowRankManifold) and p.dim() >= 2:
            key = (manifold.batch_key(), p.dtype, p.device, tuple(p.shape[-2:]))
        else:
            key = ("parameter", id(p))
        if by_step:
            key = (*key, int(optimizer.state[p].get("step", 0)))
        kinds.setdefault(key, (manifold, []))[1].append(p)
    return [PointStack(optimizer, ps, manifold) for manifold, ps in kinds.values()]


def _stabilize(optimizer, group, moment: str) -> None:
    """geoopt's stabilize_group, batched: every point of the group re-projected (projx), its
    `moment` state (where it has one) re-projected onto the new tangent space (proju)."""
    for stack in _stacks_with_state(optimizer, group):
        new_x = stack.manifold.projx(stack.points())
        stack.write(new_x)
        if moment in stack.states[0]:
            buf = stack.state(moment)
            buf.copy_(stack.manifold.proju(new_x, buf))


class RiemannianNormalized(torch.optim.Optimizer):
    r"""Transported momentum with a trust-region normalisation (docs/papers/knight.md §1, the
    template).

    For every point x (each packed point of a `geoopt.ManifoldParameter`; every point is
    stepped with its own norm, all points of a kind in one batched call, `PointStack`):
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
            for stack in point_stacks(self, group["params"], by_step=True):
                manifold = stack.manifold
                if manifold is None or isinstance(manifold, geoopt.Euclidean):
                    manifold = _EuclideanPoint
                x, grad = stack.points(), stack.grads()  # (P, rows, r) for a stack of several
                step = stack.advance_step()
                mom = stack.state("momentum")
                mom.lerp_(manifold.egrad2rgrad(x, grad), 1 - nu)  # nu M + (1 - nu) G_R
                norm = manifold.norm(x, mom, keepdim=True)  # (..., 1, 1): one norm per point
                scale = lr / norm.clamp_min(c)
                if isinstance(manifold, LowRankManifold):  # mom is tangent: the cheap form
                    new_x, new_mom = manifold.retr_transp_along(x, mom, -scale)
                else:
                    new_x, new_mom = manifold.retr_transp(x, mom * -scale, mom)
                stack.store("step_norm", norm * scale)
                if repair_every is not None and step % repair_every == 0 and hasattr(
                    manifold, "repair"
                ):
                    repaired = manifold.repair(new_x)
                    new_mom = manifold.transp(new_x, repaired, new_mom)
                    new_x = repaired
                stack.write(new_x)
                mom.copy_(new_mom)
        return loss


class RiemannianSGD(geoopt.optim.RiemannianSGD):
    """geoopt's RiemannianSGD, every kind of point stepped in one batched call (`PointStack`).

    The same step as geoopt 0.5.1's, including its first momentum buffer: the Euclidean
    gradient (before weight decay) times momentum, plus the Riemannian gradient. Weight decay
    is coupled L2 (docs/papers/knight.md §5), added to a copy: p.grad is left as it was.
    """

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
            wd, momentum = group["weight_decay"], group["momentum"]
            dampening, nesterov, lr = group["dampening"], group["nesterov"], group["lr"]
            for stack in point_stacks(self, group["params"], self._default_manifold):
                manifold = stack.manifold
                x, grad = stack.points(), stack.grads()
                if momentum > 0:  # geoopt: a new buffer is the raw gradient
                    buf = stack.state("momentum_buffer", init=lambda p: p.grad.clone())
                if wd != 0:
                    grad = grad.add(x, alpha=wd)
                rgrad = manifold.egrad2rgrad(x, grad)
                if momentum > 0:
                    buf.mul_(momentum).add_(rgrad, alpha=1 - dampening)
                    direction = rgrad.add_(buf, alpha=momentum) if nesterov else buf
                    new_x, new_buf = manifold.retr_transp(x, -lr * direction, buf)
                    buf.copy_(new_buf)
                else:
                    new_x = manifold.retr(x, -lr * rgrad)
                stack.write(new_x)
            if group["stabilize"] is not None and group["step"] % group["stabilize"] == 0:
                self.stabilize_group(group)
        return loss

    @torch.no_grad()
    def stabilize_group(self, group):
        """geoopt's: every point re-projected (projx), its momentum re-projected (proju)."""
        _stabilize(self, group, "momentum_buffer")


class RiemannianAdam(geoopt.optim.RiemannianAdam):
    """geoopt's RiemannianAdam, every kind of point stepped in one batched call (`PointStack`).

    The same step as geoopt 0.5.1's: moments of the Riemannian gradient (the second one per
    stored entry, `component_inner`), the retraction along -lr m_hat / (sqrt(v_hat) + eps)
    (projected onto the tangent space first by every geometry's `retr`), m transported. Weight
    decay is coupled L2 (docs/papers/knight.md §5), added to a copy: p.grad is left as it was.
    """

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (beta1, beta2), eps = group["betas"], group["eps"]
            wd, lr, amsgrad = group["weight_decay"], group["lr"], group["amsgrad"]
            stabilize = False
            stacks = point_stacks(self, group["params"], self._default_manifold, by_step=True)
            for stack in stacks:
                manifold = stack.manifold
                x, grad = stack.points(), stack.grads()
                step = stack.advance_step()
                exp_avg, exp_avg_sq = stack.state("exp_avg"), stack.state("exp_avg_sq")
                if wd != 0:
                    grad = grad.add(x, alpha=wd)
                rgrad = manifold.egrad2rgrad(x, grad)
                exp_avg.mul_(beta1).add_(rgrad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).add_(manifold.component_inner(x, rgrad), alpha=1 - beta2)
                bias_correction1 = 1 - beta1**step
                bias_correction2 = 1 - beta2**step
                if amsgrad:
                    max_exp_avg_sq = stack.state("max_exp_avg_sq")
                    torch.max(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
                    denom = max_exp_avg_sq.div(bias_correction2).sqrt_()
                else:
                    denom = exp_avg_sq.div(bias_correction2).sqrt_()
                direction = exp_avg.div(bias_correction1) / denom.add_(eps)
                new_x, new_exp_avg = manifold.retr_transp(x, -lr * direction, exp_avg)
                stack.write(new_x)
                exp_avg.copy_(new_exp_avg)
                if group["stabilize"] is not None and step % group["stabilize"] == 0:
                    stabilize = True
            if stabilize:
                self.stabilize_group(group)
        return loss

    @torch.no_grad()
    def stabilize_group(self, group):
        """geoopt's: every point re-projected (projx), its first moment re-projected (proju)."""
        _stabilize(self, group, "exp_avg")


def _stacks_with_state(optimizer, group) -> list[PointStack]:
    """The group's manifold parameters that have optimizer state, stacked by kind."""
    params = [
        p for p in group["params"]
        if isinstance(p, (geoopt.ManifoldParameter, geoopt.ManifoldTensor)) and optimizer.state[p]
    ]
    kinds: dict = {}
    for p in params:
        manifold = p.manifold
        if isinstance(manifold, LowRankManifold):
            key = (manifold.batch_key(), p.dtype, p.device, tuple(p.shape[-2:]))
        else:
            key = ("parameter", id(p))
        kinds.setdefault(key, (manifold, []))[1].append(p)
    return [PointStack(optimizer, ps, manifold) for manifold, ps in kinds.values()]


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
    riemannian_sgd: `RiemannianSGD`, geoopt's (momentum, default 0.9; dampening, nesterov);
    riemannian_adam: `RiemannianAdam`, geoopt's (betas, eps, amsgrad; its weight decay is
    coupled L2, docs/papers/knight.md §5); both step every kind of point in one batched call.
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
        return RiemannianSGD(params, lr, **kwargs)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return RiemannianAdam(params, lr, **kwargs)


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
    "PointStack",
    "RiemannianAdam",
    "RiemannianNormalized",
    "RiemannianSGD",
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
