"""P3: the quotient of P2 with the canonical Stiefel metric and Cayley retraction
(docs/papers/knight.md §3)."""

from __future__ import annotations

import torch

from .base import PartialIsometryBase
from .linalg import eye_like, mT


def cayley(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    r"""Cayley retraction on St(n, r) along a tangent d (x^T d skew), in O(n r^2 + r^3).

    Y = (I - A/2)^{-1} (I + A/2) x with the skew n x n matrix A = w x^T - x w^T,
    w = d - x (x^T d) / 2, so that A x = d (first order; Wen & Yin 2013; Li, Fuxin & Todorovic
    2020). With A = P Q^T, P = [w, x], Q = [x, -w] (n x 2r), Woodbury gives
    Y = x + P (I_2r - Q^T P / 2)^{-1} Q^T x; eliminating the 2r x 2r system by blocks (using
    x^T x = I; a = x^T w, b = w^T w) leaves one r x r inverse:
        N = b / 2 + (I + a^T / 2)(2I - a),   Y = (w + x (2I - a)) (2 N^{-1}) - x.
    No n x n matrix is formed (geoopt's `CanonicalStiefel.retr` solves an n x n system and
    builds A from d itself, which doubles the skew part of the velocity).
    """
    w = d - 0.5 * x @ (mT(x) @ d)  # (..., n, r)
    a = mT(x) @ w  # (..., r, r)
    b = mT(w) @ w  # (..., r, r)
    eye = eye_like(a)
    n_mat = 0.5 * b + (eye + 0.5 * mT(a)) @ (2 * eye - a)  # (..., r, r)
    return (w + x @ (2 * eye - a)) @ (2 * torch.linalg.inv(n_mat)) - x


class PartialIsometryCanonical(PartialIsometryBase):
    r"""Partial isometries W = U V^T on St(n, r) x St(m, r) / O(r), canonical Stiefel metric.

    Each factor carries the canonical metric of geoopt's `CanonicalStiefel`,
    <D, E>_X = tr(D^T (I - X X^T / 2) E) (Edelman, Arias & Smith 1998), which weighs the
    rotational part of a tangent vector half as much as the Euclidean one (rotation_weight = 1
    in `PartialIsometryBase`): the Riemannian gradient is G - X G^T X per factor,
    U_dot = U_p + 2 U skew(U^T G V), V_dot = V_p - 2 V skew(U^T G V) (already horizontal).
    Horizontal projection and transport (projection onto the new horizontal space) are those of
    P2: the normal space {X S, S symmetric} and the vertical space {(U A, V A)} are the same
    under both metrics. Retraction: the Cayley transform of each factor (`cayley`), which is
    O(r)-equivariant and keeps the factors orthonormal. Cost O((n + m) r^2 + r^3).
    """

    name = "partial_isometry_canonical"
    kind = "partial_isometry"
    rotation_weight = 1.0

    def retr(self, x, u):
        uu, vv = self.unpack(x)
        ud, vd = self._proju_blocks(x, u)
        return self.pack(cayley(uu, ud), cayley(vv, vd))

    def transp(self, x, y, v):
        return self.proju(y, v)
