"""P3: the quotient of P2 with the canonical Stiefel metric and Cayley retraction
(docs/papers/knight.md §3)."""

from __future__ import annotations

import torch

from .base import PartialIsometryBase
from .linalg import combine, eye_like, inverse, mT, skew


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
    return cayley_from(x, w, mT(x) @ w)


def cayley_from(
    x: torch.Tensor,
    w: torch.Tensor,
    a: torch.Tensor,
    t: torch.Tensor | float = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""`cayley` from w = (d - x (x^T d) / 2) / t (..., n, r) and a = x^T (t w) (..., r, r),
    in the form
        Y = (t w) (2 N^{-1}) + x ((2I - a)(2 N^{-1}) - I),   N = t^2 w^T w / 2 + ...
    (two products with n x r factors and one r x r inverse; t scales the step without
    forming t w), into `out` if given.
    """
    eye = eye_like(a)
    b = (t * t) * (mT(w) @ w)  # (t w)^T (t w): (..., r, r)
    n_mat = 0.5 * b + (eye + 0.5 * mT(a)) @ (2 * eye - a)  # (..., r, r)
    two_n_inv = 2 * inverse(n_mat)  # (..., r, r)
    return combine(w, x, t * two_n_inv, (2 * eye - a) @ two_n_inv - eye, out=out)


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
        uu, vv, ud, vd, cu, cv, half = self._proju_parts(x, u)
        # projected velocities X_dot' = X_dot - X C' with X^T X_dot' = H (U), -H (V); then
        # w = X_dot' - X (X^T X_dot') / 2 and a = X^T w = (X^T X_dot') / 2, without products
        wu = combine(ud, uu, None, -(cu + 0.5 * half))  # (..., n, r)
        wv = combine(vd, vv, None, 0.5 * half - cv)  # (..., m, r)
        y = torch.empty_like(x)
        yu, yv = self.unpack(y)
        cayley_from(uu, wu, 0.5 * half, out=yu)
        cayley_from(vv, wv, -0.5 * half, out=yv)
        return y

    def retr_transp_along(self, x, v, t):
        """retr_transp(x, t v, v) for a horizontal v (rotation H = U^T U_dot = -V^T V_dot): the
        step t v needs no projection, w = t (X_dot - X H_X / 2), a = t H_X / 2 (H_U = H,
        H_V = -H) come from one Gram product, and t is kept out of the n x r products."""
        uu, vv = self.unpack(x)
        ud, vd = self.unpack(v)
        h = skew(mT(uu) @ ud)  # (..., r, r)
        y = torch.empty_like(x)
        yu, yv = self.unpack(y)
        cayley_from(uu, combine(ud, uu, None, -0.5 * h), 0.5 * t * h, t, out=yu)
        cayley_from(vv, combine(vd, vv, None, 0.5 * h), -0.5 * t * h, t, out=yv)
        return y, self.proju(y, v)

    def transp(self, x, y, v):
        return self.proju(y, v)
