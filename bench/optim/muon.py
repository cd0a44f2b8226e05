"""Muon (torch.optim.Muon) on the block matrices, AdamW on everything else.

Muon steps a 2-D weight by the orthogonalised momentum: with momentum buffer M <- mu M + G and
the Nesterov look-ahead N = G + mu M, the update is -lr' NS_5(N), where NS_5 is five quintic
Newton-Schulz iterations pushing the singular values of N / ||N||_F towards 1 (U S' V^T with
S' ~ 1, not exactly U V^T). torch runs the iteration in bfloat16, one matrix at a time; here
(`MuonWithAdamW`) every matrix of one shape is iterated in one batched call, in the dtype that
is fast on the device (`newton_schulz_dtype`: bfloat16 on CUDA and on CPUs with native bfloat16
matrix instructions, float32 on other CPUs, where torch's bfloat16 matrix products are emulated
and slow), stated as the built optimizer's `ns_dtype` and in the run record's meta. In bfloat16
the step is torch.optim.Muon's; in float32 it differs from it by bfloat16's rounding only
(~3 significant digits of the update, which the method tolerates by design).
lr' = lr * adjust(shape): `optimizer.adjust_lr=original` (Keller Jordan's sqrt(max(1, out/in)))
or `match_rms_adamw` (Moonshot's 0.2 sqrt(max(out, in)): an update whose RMS matches AdamW's, so
AdamW's LR and weight decay carry over). Weight decay is decoupled, lr * optimizer.weight_decay
(torch's default 0.1 is never used: the config's value is passed).

Which parameters: Muon takes the trainable 2-D matrices inside the blocks (attention q, k, v,
o, the MLP; lora_A and lora_B in LoRA runs), or, with `optimizer.muon_modules` (e.g.
[q, k, v, o]), those of the modules with those last names only (the rest to AdamW). Embeddings
(every nn.Embedding), the output head (a module named `lm_head`, or a transformers model's
`get_output_embeddings()`; tied to the token embedding in gpt_*), norms and biases go to AdamW at
optimizer.adamw_lr (null: optimizer.lr), with the decay groups of optimizer=adamw. Manifold
points are not plain matrices: a run with a manifold geometry is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import geoopt
import torch
import torch.nn as nn
from torch.optim._muon import _adjust_lr

from bench.errors import ConfigError, choice, positive
from bench.optim.base import AdamKnobs, CombinedOptimizer, OptimizerSpec
from bench.optim.euclidean import adamw_over

ADJUST_LR = ("original", "match_rms_adamw")  # torch.optim.Muon's adjust_lr_fn


@dataclass
class MuonKnobs(AdamKnobs):
    """Muon's keys; betas, eps and adamw_lr are its AdamW part's."""

    momentum: float = 0.9  # Nesterov momentum (conf/optimizer/muon.yaml: 0.95)
    adamw_lr: float | None = None  # None: lr
    adjust_lr: str = "original"  # original | match_rms_adamw
    # the modules whose matrices Muon steps, by their last name ([q, k, v, o]: attention only,
    # the MLP to AdamW); empty: every block matrix
    muon_modules: list[str] = field(default_factory=list)


def check_muon(cfg) -> None:
    o = cfg.optimizer
    if o.adamw_lr is not None:
        positive("optimizer.adamw_lr", o.adamw_lr)
    choice("optimizer.adjust_lr", o.adjust_lr, ADJUST_LR)


def embeddings_and_head(model: nn.Module) -> set[int]:
    """ids of the parameters of the input embeddings and of the output head."""
    found = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) or name.rpartition(".")[2] == "lm_head":
            found.update(id(p) for p in module.parameters())
        output = getattr(module, "get_output_embeddings", None)
        head = output() if callable(output) else None
        if isinstance(head, nn.Module):
            found.update(id(p) for p in head.parameters())
    return found


def split_for_muon(model: nn.Module, params: list, modules: list[str] | None = None,
                   name: str = "muon") -> tuple[list, list]:
    """(the 2-D block matrices for Muon, the rest for AdamW), each in `params` order; with
    `modules`, only the matrices of modules whose last name is one of them go to Muon. Every
    matrix optimizer (`name`: the one asking, for its error line) splits by this rule."""
    if any(isinstance(p, geoopt.ManifoldParameter) for p in params):
        raise ConfigError(
            f"optimizer.name={name!r} steps plain matrices, not manifold points: "
            "model.attention.geometry and adapter.geometry must be euclidean"
        )
    outside = embeddings_and_head(model)
    matrices = [p for p in params if p.ndim == 2 and id(p) not in outside]
    if modules:
        owner = {id(p): name.rsplit(".", 1)[0].rpartition(".")[2]
                 for name, p in model.named_parameters()}  # blocks.0.attn.q.weight -> q
        matrices = [p for p in matrices if owner.get(id(p)) in set(modules)]
    chosen = {id(p) for p in matrices}
    return matrices, [p for p in params if id(p) not in chosen]


def newton_schulz_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype Muon's Newton-Schulz iteration runs in on `device`: bfloat16 on CUDA and on
    CPUs whose bfloat16 matrix products are native (oneDNN's AVX512-BF16 or AMX kernels),
    float32 on other CPUs (bfloat16 emulated: several times slower than float32 there)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu":
        try:
            native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            native = False
        return torch.bfloat16 if native else torch.float32
    return torch.float32


def newton_schulz(
    g: torch.Tensor,
    dtype: torch.dtype,
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
) -> torch.Tensor:
    """torch's `_zeropower_via_newtonschulz` for a stack of k matrices of one shape (k, a, b)
    with a <= b, in one batched call per product and in `dtype`:
        X_0 = G / max(||G||_F, eps),   A = X X^T,   X <- a X + (b A + c A^2) X   (`steps` times)
    (Keller Jordan's quintic iteration; (a, b, c) = `coefficients`). Returns (k, a, b) in dtype.
    """
    a, b, c = coefficients
    x = g.to(dtype)
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # (k, a, b)
    for _ in range(steps):
        gram = x @ x.mT  # A: (k, a, a)
        update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
        x = torch.baddbmm(x, update, x, beta=a)  # a X + (b A + c A^2) X
    return x


class MuonWithAdamW(CombinedOptimizer):
    """torch.optim.Muon (its parameters, hyperparameters and state) and AdamW stepped as one; the
    Muon step is torch's, with the Newton-Schulz iteration of all matrices of one shape (after
    torch's transposition to rows <= columns) batched in `ns_dtype` (`newton_schulz`).
    `optimizers["muon"]` stays a torch.optim.Muon: its own step() is torch's (bfloat16, one
    matrix at a time); this object's step() is the batched one."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer], ns_dtype: torch.dtype):
        super().__init__(optimizers)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        for name, opt in self.optimizers.items():
            if name == "muon":
                self._muon_step(opt)
            else:
                opt.step()

    def _muon_step(self, opt: torch.optim.Muon) -> None:
        for group in opt.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if torch.is_complex(p) or p.grad.is_sparse:
                    raise RuntimeError("Muon supports real dense gradients only")
                if "momentum_buffer" not in opt.state[p]:
                    opt.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
            grads = [p.grad for p in params]
            bufs = [opt.state[p]["momentum_buffer"] for p in params]
            momentum, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
            torch._foreach_lerp_(bufs, grads, 1 - momentum)  # M <- mu M + (1 - mu) G
            updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
            kinds: dict = {}  # one batched iteration per shape (rows <= columns)
            for i, u in enumerate(updates):
                wide = u if u.shape[0] <= u.shape[1] else u.mT
                kinds.setdefault((tuple(wide.shape), u.dtype, u.device), []).append((i, wide))
            ortho = [None] * len(params)
            for members in kinds.values():
                out = newton_schulz(torch.stack([w for _, w in members]), self.ns_dtype,
                                    group["ns_coefficients"], group["ns_steps"], group["eps"])
                for (i, _), o in zip(members, out):
                    ortho[i] = o if params[i].shape[0] <= params[i].shape[1] else o.mT
            torch._foreach_mul_(params, 1 - lr * wd)  # decoupled weight decay
            for p, o in zip(params, ortho):
                p.add_(o, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))


def block_matrices(model, params, cfg) -> tuple[list, list]:
    """split_for_muon with cfg.muon_modules, refusing a split with no matrix for the matrix
    optimizer cfg.name (one line, before anything is written)."""
    modules = list(cfg.get("muon_modules") or [])
    matrices, rest = split_for_muon(model, params, modules, cfg.name)
    if not matrices:
        where = (f" of the modules optimizer.muon_modules={modules}" if modules
                 else " inside the blocks")
        raise ConfigError(
            f"optimizer.name={cfg.name!r} found no trainable 2-D matrix{where} (embeddings and "
            "the head go to AdamW): train some, e.g. adapter.target_modules=[q, k, v, o] or "
            "adapter=lora"
        )
    return matrices, rest


def muon(model, params, cfg) -> CombinedOptimizer:
    """torch.optim.Muon (cfg.lr, cfg.momentum with Nesterov, cfg.weight_decay, cfg.adjust_lr) on
    the block matrices + AdamW (cfg.adamw_lr or cfg.lr) on the rest, stepped by MuonWithAdamW
    (Newton-Schulz batched per shape, in newton_schulz_dtype(device): its `ns_dtype`)."""
    matrices, rest = block_matrices(model, params, cfg)
    if cfg.adjust_lr not in ADJUST_LR:
        raise ConfigError(
            f"optimizer.adjust_lr={cfg.adjust_lr!r} is not allowed; allowed values: "
            f"{', '.join(ADJUST_LR)}"
        )
    opts = {"muon": torch.optim.Muon(matrices, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     momentum=cfg.momentum, adjust_lr_fn=cfg.adjust_lr)}
    if rest:
        opts["adamw"] = adamw_over(rest, cfg, lr=cfg.adamw_lr or cfg.lr)
    return MuonWithAdamW(opts, newton_schulz_dtype(matrices[0].device))


MUON = OptimizerSpec(muon, knobs=MuonKnobs, check=check_muon)
