"""Attention whose per-head products are points of a low-rank manifold
(docs/papers/knight.md §2-§4).

Per head h (width D, model width C) the logits are X A_h X^T with A_h = W_Q,h^T W_K,h and the
value path P_h X B_h with B_h = W_V,h^T W_O,h^T: two C x C matrices of rank D, stored here as
manifold points (factors L, R with A = L R^T) and stepped by a Riemannian optimizer. The model
still computes in factored form, q = X L, k = X R (never C x C):

  QK point of head h:  L = W_Q,h^T (C x D),  R = W_K,g(h)^T (C x D)
  VO point of head h:  L = W_V,g(h)^T (C x D), R = W_O,h (C x D), the head's columns of W_O

`block=true` (docs/papers/knight.md §4): with grouped-query attention the k = H / G query heads of
KV group g
(`heads_per_group`) share W_K,g and W_V,g, so [A_h1; ...; A_hk] (k C x C) = [L_h1; ...; L_hk] R_g^T
is ONE rank-D point per group (and [B_h1 ... B_hk] = L_g [R_h1; ...; R_hk]^T likewise); one
retraction per group. Without `block`, every head is its own point, so a GQA group's shared K and
V factors are copied into each of its heads (the per-head geometry cannot share a factor between
points). For MHA both coincide.

Initialisation keeps the Euclidean model's function for the fixed-rank geometries (the same
L R^T); partial isometries start from the polar factor of L R^T with the scale s = ||Sigma||_F /
sqrt(D) (a Euclidean parameter per point, on AdamW).
"""

from __future__ import annotations

import geoopt
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.errors import ConfigError
from bench.manifolds import make
from bench.models.gpt import GPT, CausalSelfAttention


def _heads(weight: torch.Tensor, n: int, d: int) -> torch.Tensor:
    """Rows of a projection weight (n * D, C) split per head -> (n, C, D), each W_h^T."""
    return weight.detach().view(n, d, -1).transpose(1, 2)


class ManifoldAttention(nn.Module):
    def __init__(self, attn: CausalSelfAttention, geometry: str, block: bool, **options):
        super().__init__()
        if attn.q.bias is not None:
            raise ConfigError("model.bias must be false with a manifold attention geometry")
        H, G, D = attn.n_head, attn.n_kv, attn.head_dim
        C = attn.q.weight.shape[1]
        self.n_head, self.n_kv, self.head_dim, self.dropout = H, G, D, attn.dropout
        self.block, self.heads_per_group = block and G < H, H // G
        per_group = self.heads_per_group
        wq = _heads(attn.q.weight, H, D)  # (H, C, D): W_Q,h^T
        wk = _heads(attn.k.weight, G, D)  # (G, C, D)
        wv = _heads(attn.v.weight, G, D)  # (G, C, D)
        wo = attn.o.weight.detach().view(C, H, D).transpose(0, 1)  # (H, C, D): W_O,h
        group = torch.arange(H) // per_group  # KV group of each query head
        if self.block:  # one point per KV group: query heads (and their W_O,h) stacked
            qk = (wq.reshape(G, per_group * C, D), wk)
            vo = (wv, wo.reshape(G, per_group * C, D))
            shape_qk, shape_vo = (per_group * C, C), (C, per_group * C)
        else:  # one point per head: the group's K and V factors copied into each head
            qk, vo = (wq, wk[group]), (wv[group], wo)
            shape_qk = shape_vo = (C, C)
        self.qk_manifold = make(geometry, *shape_qk, D, **options)
        self.vo_manifold = make(geometry, *shape_vo, D, **options)
        x_qk, s_qk = self.qk_manifold.from_factors(*(t.double() for t in qk))
        x_vo, s_vo = self.vo_manifold.from_factors(*(t.double() for t in vo))
        dtype = attn.q.weight.dtype
        self.qk = geoopt.ManifoldParameter(x_qk.to(dtype), manifold=self.qk_manifold)
        self.vo = geoopt.ManifoldParameter(x_vo.to(dtype), manifold=self.vo_manifold)
        kind = self.qk_manifold.kind
        if kind == "partial_isometry":  # attention needs a temperature: s per point
            self.qk_scale = nn.Parameter(s_qk.to(dtype))
            self.vo_scale = nn.Parameter(s_vo.to(dtype))
        elif kind == "fixed_rank":  # the singular values are part of the point
            self.qk_scale = self.vo_scale = None
        else:
            raise ValueError(f"geometry {geometry!r} has kind {kind!r}, unknown to attention")

    def _per_head(self, t: torch.Tensor) -> torch.Tensor:
        """(G, k C, D) stacked factors of a group -> (H, C, D) per head."""
        return t.reshape(self.n_head, -1, t.shape[-1]) if self.block else t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C)."""
        lq, rk = self.qk_manifold.factors(self.qk)  # (P, n, D), (P, m, D)
        lv, ro = self.vo_manifold.factors(self.vo)
        if self.qk_scale is not None:
            lq = lq * self.qk_scale[:, None, None]
            lv = lv * self.vo_scale[:, None, None]
        q = torch.einsum("btc,hcd->bhtd", x, self._per_head(lq))  # (B, H, T, D)
        k = torch.einsum("btc,pcd->bptd", x, rk)  # (B, G or H, T, D)
        v = torch.einsum("btc,pcd->bptd", x, lv)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=k.shape[1] != self.n_head,
        )  # (B, H, T, D)
        return torch.einsum("bhtd,hcd->btc", y, self._per_head(ro))  # sum_h y_h W_O,h^T


def share_storage(params: list[nn.Parameter]) -> None:
    """Give the points of one kind one storage: every parameter of `params` whose manifold has
    the same batch_key (and dtype, point shape) becomes a view of one stacked (P, rows, r)
    tensor, in order. Values, shapes and parameters are unchanged; a Riemannian optimizer then
    steps the whole stack in place (bench.optim.riemannian.PointStack) instead of gathering the
    points of every layer into a new tensor and copying them back each step."""
    kinds: dict = {}
    for p in params:
        key = (p.manifold.batch_key(), p.dtype, p.device, tuple(p.shape[-2:]))
        kinds.setdefault(key, []).append(p)
    for group in kinds.values():
        if len(group) < 2:
            continue
        stacked = torch.cat([p.detach().reshape(-1, *p.shape[-2:]) for p in group])
        for p, view in zip(group, stacked.split([p[..., 0, 0].numel() for p in group])):
            p.data = view.view(p.shape)


def to_manifold_attention(model: GPT, geometry: str, block: bool, **options) -> GPT:
    """Replace every attention layer's q, k, v, o by manifold points (same function at init for
    the fixed-rank geometries); `options` go to the geometry's constructor (e.g. retraction).
    The points of all layers share one storage per kind (`share_storage`)."""
    for blk in model.blocks:
        blk.attn = ManifoldAttention(blk.attn, geometry, block, **options)
    share_storage([p for blk in model.blocks for p in (blk.attn.qk, blk.attn.vo)])
    return model
