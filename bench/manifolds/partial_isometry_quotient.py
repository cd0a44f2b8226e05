"""P2: partial isometries as St(n, r) x St(m, r) / O(r), Euclidean metric
(docs/papers/knight.md §3, P2)."""

from __future__ import annotations

import torch

from .base import PartialIsometryBase
from .linalg import combine, eye_like, polar_pair


class PartialIsometryQuotient(PartialIsometryBase):
    r"""Partial isometries W = U V^T as the quotient St(n, r) x St(m, r) / O(r).

    (U, V) ~ (U Q, V Q) for Q in O(r); each Stiefel factor carries the Euclidean metric
    (geoopt's `EuclideanStiefel`), so <u, v> is the plain product of the packed blocks
    (rotation_weight = 2 in `PartialIsometryBase`). Riemannian gradient: the Stiefel projections
    G_U - U sym(U^T G_U), G_V - V sym(V^T G_V) minus their vertical part (U A, V A), which
    gives U_dot = U_p + U skew(U^T G V), V_dot = V_p - V skew(U^T G V) (Absil, Mahony &
    Sepulchre 2008, §3.6 for quotient manifolds).

    Retraction: the polar factor of each factor, U' = (U + U_dot)(I + U_dot^T U_dot)^{-1/2}
    (r x r eigendecompositions, both factors' in one call: `polar_pair`). We use the polar
    rather than the QR retraction of geoopt's `EuclideanStiefel` because polar(A Q) =
    polar(A) Q: the retraction is then well defined on the quotient (QR would make U'V'^T
    depend on the representative). Transport: the orthogonal projection onto the horizontal
    space at the new point. Cost O((n + m) r^2 + r^3).
    """

    name = "partial_isometry_quotient"
    kind = "partial_isometry"
    rotation_weight = 2.0

    def retr(self, x, u):
        uu, vv, ud, vd, cu, cv, _ = self._proju_parts(x, u)
        eye = eye_like(cu)
        # X + X_dot' = X_dot + X (I - C') with the projected X_dot' = X_dot - X C'
        y = torch.empty_like(x)
        polar_pair(combine(ud, uu, None, eye - cu), combine(vd, vv, None, eye - cv),
                   out=self.unpack(y))
        return y

    def retr_transp_along(self, x, v, t):
        """retr_transp(x, t v, v) for a horizontal v: the step needs no projection, so the
        retraction is polar(X + t X_dot) per factor (one eigendecomposition call for both)."""
        uu, vv = self.unpack(x)
        ud, vd = self.unpack(v)
        y = torch.empty_like(x)
        yu, yv = self.unpack(y)
        polar_pair(torch.addcmul(uu, t, ud), torch.addcmul(vv, t, vd), out=(yu, yv))
        return y, self.proju(y, v)

    def transp(self, x, y, v):
        return self.proju(y, v)
