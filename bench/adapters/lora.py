"""LoRA (Hu et al. 2021) in PEFT's notation: W = W0 + s * B @ A, s = alpha / r.

A = `lora_A` (r x in, kaiming-uniform), B = `lora_B` (out x r, zeros), so the model's function is
unchanged at init. Base weights are frozen. Options, each PEFT's (peft 0.21.2, `LoraConfig`):
`rslora` scales by s = alpha / sqrt(r) (`use_rslora`); `init` = pissa | olora (`init_lora_weights`)
starts B A from W0 and rewrites the base to W0 - s B A, so the function is still unchanged:

    pissa  W0 = U S V^T (exact SVD): B = U_r sqrt(S_r / s), A = sqrt(S_r / s) V_r^T; s B A is W0's
           best rank-r part and A A^T = B^T B = S_r / s (balanced)
    olora  W0 = Q R (reduced QR): B = Q_r (B^T B = I), A = R_r (its first r rows); no 1/s, so the
           adapter starts at s Q_r R_r (maximally unbalanced)
 `balora/gap = ||B^T B - A A^T||_F` is logged for
plain LoRA too: under gradient flow it is conserved, so LoRA never balances itself
(docs/papers/balora.md §2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import geoopt
import torch
import torch.nn as nn

from bench.adapters.balancing import balancing_gap
from bench.adapters.base import Adapter, AdapterKnobs, find_targets, freeze_all
from bench.errors import ConfigError, choice, in_unit, positive
from bench.manifolds import FIXED_RANK, geometry_kind, make

# adapter.init: how B A starts (module docstring)
INITS = ("default", "pissa", "olora")


@dataclass
class FactorKnobs(AdapterKnobs):
    """The keys of every adapter with factors B (out x r) and A (r x in): LoRA, BaLoRA, DoRA."""

    r: int = 8
    alpha: float = 16.0
    # alpha / r itself: when set, alpha is scale * r (a rank sweep at a fixed scale s = alpha /
    # r; with rslora s = scale * sqrt(r)); adapter.alpha must then stay at its default
    scale: float | None = None
    dropout: float = 0.0
    init: str = "default"  # default | pissa | olora: PEFT's init_lora_weights
    rslora: bool = False  # scale alpha / sqrt(r) instead of alpha / r: PEFT's use_rslora


@dataclass
class LoRAKnobs(FactorKnobs):
    """LoRA's keys: the factor keys plus a Riemannian geometry of the update B A."""

    geometry: str = "euclidean"  # euclidean | a fixed_rank geometry of bench.manifolds
    init_scale: float = 1e-3  # the Riemannian LoRA's random start, ||B A|| ~ init_scale


def check_factors(cfg) -> None:
    """The factor keys' values (FactorKnobs) of the adapter group of `cfg`."""
    a = cfg.adapter
    positive("adapter.r", a.r)
    positive("adapter.alpha", a.alpha)
    if a.get("scale") is not None:
        positive("adapter.scale", a.scale)
        if a.alpha != FactorKnobs.alpha:
            raise ConfigError(f"adapter.alpha={a.alpha:g} and adapter.scale={a.scale:g} are both "
                              "set: set one (alpha = scale * r)")
    in_unit("adapter.dropout", a.dropout)
    choice("adapter.init", a.init, INITS)
    for key, value, default in (("init", a.init, "default"), ("rslora", a.rslora, False)):
        if value != default and cfg.task != "lm":
            raise ConfigError(f"adapter.{key}={value!r} applies to task=lm only (got {cfg.task!r})")


def lora_scale(alpha: float, r: int, rslora: bool = False) -> float:
    """s = alpha / r, or alpha / sqrt(r) with rsLoRA (Kalajdzievski 2023)."""
    return alpha / math.sqrt(r) if rslora else alpha / r


def lora_alpha(cfg) -> float:
    """The adapter group's alpha: adapter.scale * r when adapter.scale is set, else alpha."""
    scale = cfg.get("scale")
    return float(scale) * cfg.r if scale is not None else cfg.alpha


class LoRALinear(nn.Module):
    """y = base(x) + s * dropout(x) A^T B^T, with x (..., in) -> y (..., out)."""

    def __init__(
        self,
        base: nn.Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        init: str = "default",
        rslora: bool = False,
    ):
        super().__init__()
        if init not in INITS:
            raise ConfigError(f"adapter.init={init!r} is not allowed; allowed values: "
                              f"{', '.join(INITS)}")
        self.base = base
        out_features, in_features = base.weight.shape
        self.r, self.scaling = r, lora_scale(alpha, r, rslora)
        self.lora_A = nn.Parameter(torch.empty(r, in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, device=base.weight.device))
        if init == "default":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's init of A
        else:
            self._init_from_base(init)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @torch.no_grad()
    def _init_from_base(self, init: str) -> None:
        """PiSSA or OLoRA (module docstring), in float32 as PEFT; the base becomes W0 - s B A."""
        weight = self.base.weight
        w0, r, s = weight.float(), self.r, self.scaling  # (out, in)
        if init == "pissa":
            U, S, Vh = torch.linalg.svd(w0, full_matrices=False)  # (out, k), (k,), (k, in)
            root = (S[:r] / s).sqrt()  # (r,)
            A, B = root[:, None] * Vh[:r], U[:, :r] * root  # (r, in), (out, r)
        else:
            Q, R = torch.linalg.qr(w0)  # (out, k), (k, in)
            A, B = R[:r], Q[:, :r]
        self.lora_A.copy_(A)
        self.lora_B.copy_(B)
        weight.copy_(w0 - (s * B) @ A)  # the residual, so that W0 - s B A + s B A = W0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold s B A into the base weight (for export or fast evaluation)."""
        if not self.merged:
            self.base.weight += self.scaling * (self.lora_B @ self.lora_A)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.scaling * (self.lora_B @ self.lora_A)
            self.merged = False


class ManifoldLoRALinear(nn.Module):
    """Riemannian LoRA: the update s * dW with dW = L R^T a point of a rank-r manifold.

    dW = 0 is not on a fixed-rank manifold, so the point starts at a small random rank-r dW0
    (entries ~ init_scale) and s * dW0 is subtracted from the frozen base weight: the function at
    init is unchanged (issue: Riemannian LoRA). x (..., in) -> base(x) + s (x R) L^T.
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int,
        alpha: float,
        geometry: str,
        init_scale: float,
        rslora: bool = False,
    ):
        super().__init__()
        if geometry_kind(geometry) != "fixed_rank":
            raise ConfigError(
                f"adapter.geometry={geometry!r}: a LoRA update is a rank-r matrix, use "
                f"{' or '.join(FIXED_RANK)}"
            )
        out_f, in_f = base.weight.shape
        self.base, self.r, self.scaling = base, r, lora_scale(alpha, r, rslora)
        self.manifold = make(geometry, out_f, in_f, r)
        x0 = self.manifold.random_point(dtype=torch.float64)
        left, right = self.manifold.factors(x0)  # (out, r), (in, r), entries ~ 1 / sqrt(dim)
        c = init_scale * (out_f * in_f) ** 0.25  # so that dW0 = c^2 L R^T has entries ~ init_scale
        x0, _ = self.manifold.from_factors(c * left, c * right)
        self.point = geoopt.ManifoldParameter(x0.to(base.weight.dtype), manifold=self.manifold)
        with torch.no_grad():
            left, right = self.manifold.factors(self.point)
            base.weight -= self.scaling * (left @ right.T)  # keep the function at init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = self.manifold.factors(self.point)  # (out, r), (in, r)
        return self.base(x) + (x @ right) @ left.T * self.scaling


def _is_shared(model: nn.Module, linear: nn.Linear) -> bool:
    """Whether linear's weight is also another module's parameter (tied embeddings)."""
    return any(
        p is linear.weight
        for m in model.modules()
        if m is not linear
        for p in m.parameters(recurse=False)
    )


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


class LoRA(Adapter):
    name = "lora"
    layer_class = LoRALinear  # the (A, B)-factored layer; DoRA's subclasses it
    knobs = LoRAKnobs

    @classmethod
    def check(cls, cfg) -> None:
        """The factor keys, and a geometry of B A: a fixed-rank manifold, stepped by an optimizer
        that steps manifolds, from its own random start."""
        check_factors(cfg)
        a = cfg.adapter
        choice("adapter.geometry", a.geometry, ("euclidean", *FIXED_RANK))
        if a.geometry != "euclidean":
            positive("adapter.init_scale", a.init_scale)
            if a.init != "default":
                raise ConfigError(f"adapter.init={a.init!r} with adapter.geometry={a.geometry!r}: "
                                  "allowed adapter.init=default (a Riemannian LoRA starts at its "
                                  "own random point)")

    def apply(self, model: nn.Module) -> nn.Module:
        targets = find_targets(model, self.cfg.target_modules)
        freeze_all(model)
        r = self.cfg.r
        self.targets = []
        for name, linear in targets:
            out_f, in_f = linear.weight.shape
            if not 0 < r <= min(in_f, out_f):
                raise ConfigError(
                    f"adapter.r={r} does not fit module {name} of shape {out_f} x {in_f}: "
                    f"allowed 1 <= r <= {min(in_f, out_f)}"
                )
            if self.cfg.get("init", "default") != "default" and _is_shared(model, linear):
                raise ConfigError(
                    f"adapter.init={self.cfg.init} rewrites the base weight of {name}, which is "
                    "tied to another module (model.tie_embeddings): allowed adapter.init=default "
                    "or adapter.target_modules without it"
                )
            layer = self.make_layer(linear)
            _set_module(model, name, layer)
            self.targets.append((name, layer))
        return model

    def make_layer(self, linear: nn.Linear) -> nn.Module:
        c = self.cfg
        init, rslora = c.get("init", "default"), c.get("rslora", False)
        if c.get("geometry", "euclidean") != "euclidean":
            if init != "default":
                raise ConfigError(
                    f"adapter.init={init!r} with adapter.geometry={c.geometry!r}: allowed "
                    "adapter.init=default (a Riemannian LoRA starts at its own random point)"
                )
            return ManifoldLoRALinear(linear, c.r, lora_alpha(c), c.geometry, c.init_scale,
                                      rslora)
        return self.layer_class(linear, c.r, lora_alpha(c), c.dropout, init, rslora)

    def layers(self) -> list[LoRALinear]:
        """The (A, B)-factored layers (not the Riemannian ones, which have no A and B)."""
        return [layer for _, layer in self.targets if isinstance(layer, LoRALinear)]

    def metrics(self) -> dict:
        """Mean ||B^T B - A A^T||_F over layers (docs/papers/balora.md §2)."""
        gaps = [balancing_gap(layer.lora_A, layer.lora_B) for layer in self.layers()]
        return {"balora/gap": sum(gaps) / len(gaps)} if gaps else {}

    def merge(self) -> None:
        for layer in self.layers():
            layer.merge()
