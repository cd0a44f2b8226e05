"""What the five low-rank geometries share: the packed layout, shapes, sampling and checks.

A point is ONE tensor of shape (..., rows, r): the factors of an n x m rank-r matrix stacked
along rows (leading dimensions are a batch of independent points, e.g. the heads of a layer).
Tangent vectors and Riemannian gradients are packed the same way, so a point, its gradient and
an optimizer's moments are single tensors of one shape. `factors(x) -> (L, R)` gives the dense
matrix W = L @ R.T; a model computes with L and R (never with W), and autograd's gradient of the
packed tensor is then the factor gradients, from which `egrad2rgrad` builds the Riemannian
gradient in O((n + m) r^2 + r^3). Geometries and references: docs/papers/knight.md §3.
"""

from __future__ import annotations

import math
import numbers

import geoopt
import torch

from .linalg import combine, factored_svd, frob, mT, polar_svd, qr_pos, skew, sym

# What a geometry's points are: "fixed_rank" (W of rank r, its singular values free) or
# "partial_isometry" (W = U V^T, every singular value 1; a model adds a scale s of s U V^T).
# Every concrete class states its `kind` itself; code that treats the kinds differently
# refuses a kind it does not know.
KINDS: tuple[str, ...] = ("fixed_rank", "partial_isometry")


def check_dims(n: int, m: int, r: int) -> None:
    """Reject sizes that cannot describe an n x m matrix of rank r."""
    for label, value in (("n", n), ("m", m), ("r", r)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{label} must be an integer, got {value!r}")
    if n < 1 or m < 1:
        raise ValueError(f"matrix sizes must be positive, got n={n}, m={m}")
    if not 1 <= r <= min(n, m):
        raise ValueError(
            f"rank r={r} must satisfy 1 <= r <= min(n, m) = {min(n, m)} (n={n}, m={m})"
        )


def default_tol(dtype: torch.dtype) -> float:
    """Tolerance of the on-manifold checks: 1e-8 in float64, about 1e-4 in float32."""
    return max(1e-8, 1000 * torch.finfo(dtype).eps)


def orthonormality_error(a: torch.Tensor) -> torch.Tensor:
    """max |a^T a - I| over the whole batch."""
    gram = mT(a) @ a  # (..., r, r)
    return (gram - torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)).abs().amax()


class LowRankManifold(geoopt.Manifold):
    """Base class: n x m matrices of rank r, stored as packed factors of shape (..., rows, r).

    Subclasses define `block_rows` (the row counts of the packed blocks), `factors`,
    `from_factors`, the geometry (`proju`, `egrad2rgrad`, `inner`, `retr`, `transp`) and the
    checks. `component_inner` is elementwise (u * v in packed coordinates), so geoopt's
    RiemannianAdam keeps one second moment per stored entry, like Adam; its direction is then
    not tangent, which is why every `retr` projects its input onto the tangent space first.

    Every concrete class states its `name` (model.attention.geometry, adapter.geometry), its
    `kind` (one of KINDS) and, when its constructor takes `retraction=`, the choices in
    `retractions` (the first the default); an empty `retractions` means one retraction.
    """

    ndim = 2
    reversible = False
    name = "low_rank"
    kind: str  # no default: a class that does not state its kind is refused (bench.manifolds)
    retractions: tuple[str, ...] = ()

    def __init__(self, n: int, m: int, r: int):
        super().__init__()
        check_dims(n, m, r)
        self.n, self.m, self.r = int(n), int(m), int(r)

    # ----------------------------------------------------------------- layout
    @property
    def block_rows(self) -> tuple[int, ...]:
        """Row counts of the packed blocks, top to bottom."""
        return (self.n, self.m)

    @property
    def point_shape(self) -> tuple[int, int]:
        return (sum(self.block_rows), self.r)

    def unpack(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The blocks of a packed point or tangent vector (views, no copy)."""
        # narrow, not torch.split: single-output views stay usable after in-place updates
        blocks, start = [], 0
        for rows in self.block_rows:
            blocks.append(x.narrow(-2, start, rows))
            start += rows
        return tuple(blocks)

    def pack(self, *blocks: torch.Tensor) -> torch.Tensor:
        if len(blocks) != len(self.block_rows):
            raise ValueError(f"{self.name} packs {len(self.block_rows)} blocks, got {len(blocks)}")
        return torch.cat(blocks, dim=-2)

    def factors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, R) with W = L @ R.T; L: (..., n, r), R: (..., m, r)."""
        blocks = self.unpack(x)
        return blocks[0], blocks[1]

    def to_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The n x m matrix W (tests and small problems only)."""
        left, right = self.factors(x)
        return left @ mT(right)

    def tangent_to_dense(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The n x m matrix dW of a tangent vector u at x (tests and small problems only)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"n={self.n}, m={self.m}, r={self.r}"

    def batch_key(self) -> tuple:
        """Equal for manifolds that act alike on points of one shape: their points may be
        stacked along a leading dimension and stepped by one batched call (bench.optim's
        Riemannian optimizers do). A subclass with options adds them."""
        return (type(self), self.n, self.m, self.r)

    def _check_shape(self, shape, name):
        if len(shape) < 2 or tuple(shape[-2:]) != self.point_shape:
            rows, r = self.point_shape
            return False, (
                f"`{name}` must have shape (..., {rows}, {r}) for {self!r} "
                f"(blocks of {self.block_rows} rows), got {tuple(shape)}"
            )
        return True, None

    # ----------------------------------------------------------------- points
    def from_factors(
        self, left: torch.Tensor, right: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A packed point built from dense factors L (..., n, r), R (..., m, r)."""
        raise NotImplementedError

    def _gaussian_factors(self, batch, dtype, device, generator):
        left = torch.randn(
            *batch, self.n, self.r, dtype=dtype, device=device, generator=generator
        ) / math.sqrt(self.n)
        right = torch.randn(
            *batch, self.m, self.r, dtype=dtype, device=device, generator=generator
        ) / math.sqrt(self.m)
        return left, right

    def random_point(
        self, *batch: int, dtype=torch.float64, device=None, generator=None
    ) -> torch.Tensor:
        """A random packed point of shape (*batch, rows, r) (plain tensor)."""
        left, right = self._gaussian_factors(batch, dtype, device, generator)
        return self.from_factors(left, right)[0]

    def random(self, *size, dtype=None, device=None, generator=None, **kwargs):
        """geoopt's sampler: `size` is the full shape (..., rows, r), or empty for one point."""
        if len(size) == 1 and not isinstance(size[0], int):
            size = tuple(size[0])
        if size:
            self._assert_check_shape(tuple(size), "x")
            batch = tuple(size[:-2])
        else:
            batch = ()
        x = self.random_point(
            *batch, dtype=dtype or torch.get_default_dtype(), device=device, generator=generator
        )
        return geoopt.ManifoldTensor(x, manifold=self)

    def random_tangent(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """A random tangent vector at x (Gaussian in packed coordinates, then projected)."""
        g = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        return self.proju(x, g)

    def repair(self, x: torch.Tensor) -> torch.Tensor:
        """Undo numerical drift (docs/papers/knight.md §5: re-orthonormalise by QR, floor S)."""
        raise NotImplementedError

    def check_point(self, x: torch.Tensor, *, explain=False, atol: float | None = None):
        """Raise ValueError unless x is a point of this manifold (shape and constraints).

        Stricter than geoopt's `check_point` (which only checks the shape and returns False):
        a point whose stored orthonormal factors are not orthonormal is rejected with the
        reason. Returns True (or (True, None) with explain=True) on success.
        """
        ok, reason = self._check_shape(x.shape, "x")
        if ok:
            tol = default_tol(x.dtype) if atol is None else atol
            ok, reason = self._check_point_on_manifold(x, atol=tol, rtol=tol)
        if not ok:
            raise ValueError(f"not a point of {self!r}: {reason}")
        return (True, None) if explain else True

    # --------------------------------------------------------- shared geometry
    def component_inner(self, x, u, v=None):
        return u * (u if v is None else v)

    def retr_transp(self, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor):
        """Retract along u (projected onto the tangent space first) and transport v there."""
        y = self.retr(x, u)
        return y, self.transp(x, y, v)

    def retr_transp_along(self, x: torch.Tensor, v: torch.Tensor, t: torch.Tensor):
        """retr_transp(x, t v, v) for a TANGENT v at x and step sizes t (a tensor that
        broadcasts against the points, e.g. one per point, (..., 1, 1)): the step of an
        optimizer that moves along its own transported momentum (RiemannianNormalized).
        Geometries with a cheaper exact form for this case (no projection of a tangent step,
        Gram products shared by retraction and transport) override it."""
        return self.retr_transp(x, t * v, v)

    def expmap(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """No closed-form exponential map is used: the retraction stands in (as in geoopt)."""
        return self.retr(x, u)

    def norm(self, x: torch.Tensor, u: torch.Tensor, *, keepdim=False) -> torch.Tensor:
        return self.inner(x, u, keepdim=keepdim).clamp_min(0).sqrt()

    @staticmethod
    def _small(a: torch.Tensor, atol: float, rtol: float, scale: torch.Tensor | float = 1.0):
        """|a| <= atol + rtol * scale elementwise (scale: a typical size of the terms)."""
        return bool((a.abs() <= atol + rtol * scale).all())


def euclidean_inner(u: torch.Tensor, v: torch.Tensor | None, keepdim: bool) -> torch.Tensor:
    return frob(u, u if v is None else v, keepdim=keepdim)


class PartialIsometryBase(LowRankManifold):
    r"""Shared part of P1-P3: rank-r partial isometries W = U V^T (all singular values 1).

    Point: U in St(n, r), V in St(m, r), packed [U; V] of shape (..., n + m, r); factors(x) =
    (U, V). The scale s of s U V^T is not part of the manifold (a Euclidean parameter of the
    model). Tangent vectors of U V^T are U Omega V^T + U_p V^T + U V_p^T (Omega skew,
    U^T U_p = 0, V^T V_p = 0). All three geometries store them as factor velocities
    (U_dot, V_dot) = (U_p + U Omega / 2, V_p - V Omega / 2), i.e. the horizontal space of
    St(n, r) x St(m, r) / O(r):
        U^T U_dot = -V^T V_dot = a = Omega / 2 (skew),
    so that dW = U_dot V^T + U V_dot^T. `proju` is the orthogonal projection onto that space
    (Stiefel projection of each factor, then removal of the vertical part (U A, V A), A skew);
    it coincides with the orthogonal projection of the dense matrix U_dot V^T + U V_dot^T onto
    the tangent space of the embedded set, so it serves all three metrics.

    The three metrics differ only in the weight w (`rotation_weight`) of the rotational part a:
        <u, u> = ||U_p||^2 + ||V_p||^2 + w ||a||^2,
    w = 4 (P1: Frobenius norm of dW, since Omega = 2a), 2 (P2: Euclidean metric on each
    Stiefel factor), 1 (P3: canonical metric tr(D^T (I - X X^T / 2) D) on each factor). Hence
    the Riemannian gradient, from the factor gradients G_U = G V, G_V = G^T U, is
        U_dot = (I - U U^T) G_U + (2 / w) U theta,
        V_dot = (I - V V^T) G_V - (2 / w) V theta,
        theta = (skew(U^T G_U) - skew(V^T G_V)) / 2   (= skew(U^T G V)).
    Subclasses set `kind = "partial_isometry"` and `rotation_weight`, and define `retr` and
    `transp`.
    """

    rotation_weight = 2.0

    def tangent_to_dense(self, x, u):
        uu, vv = self.unpack(x)
        ud, vd = self.unpack(u)
        return ud @ mT(vv) + uu @ mT(vd)

    def from_factors(self, left, right):
        """The polar factor U V^T of L R^T = U Sigma V^T, and s = ||Sigma||_F / sqrt(r).

        Returns (x, s) with s of shape (...,) (the batch shape).
        """
        u, sigma, v = factored_svd(left, right)
        scale = sigma.norm(dim=-1) / math.sqrt(self.r)
        return self.pack(u, v), scale

    def random_point(self, *batch, dtype=torch.float64, device=None, generator=None):
        left, right = self._gaussian_factors(batch, dtype, device, generator)
        return self.pack(qr_pos(left)[0], qr_pos(right)[0])

    def projx(self, x):
        """Nearest orthonormal factors (polar factors by thin SVD, as geoopt's Stiefel)."""
        return self.pack(*(polar_svd(f) for f in self.unpack(x)))

    def repair(self, x):
        """Re-orthonormalise U and V by QR (diag(R) > 0, so an orthonormal factor is kept)."""
        return self.pack(*(qr_pos(f)[0] for f in self.unpack(x)))

    def _proju_parts(self, x, u):
        """(U, V, U_dot, V_dot, C_u, C_v, H) for the projection of u: with C_u = U^T U_dot,
        C_v = V^T V_dot (r x r) the projection (`proju`) is
            U_dot - U C_u',  V_dot - V C_v',   C_u' = sym(C_u) + A,  C_v' = sym(C_v) + A,
        A = (skew(C_u) + skew(C_v)) / 2 (the vertical part), and the projected vector's
        rotation is H = U^T U_dot' = -V^T V_dot' = (skew(C_u) - skew(C_v)) / 2. Retractions
        take these r x r matrices instead of recomputing them from the projected vector."""
        uu, vv = self.unpack(x)
        ud, vd = self.unpack(u)
        cu = mT(uu) @ ud  # (..., r, r)
        cv = mT(vv) @ vd  # (..., r, r)
        su, sv = skew(cu), skew(cv)
        vertical = 0.5 * (su + sv)
        return uu, vv, ud, vd, sym(cu) + vertical, sym(cv) + vertical, 0.5 * (su - sv)

    def _proju_blocks(self, x, u):
        uu, vv, ud, vd, cu, cv, _ = self._proju_parts(x, u)
        return combine(ud, uu, None, -cu), combine(vd, vv, None, -cv)

    def proju(self, x, u):
        uu, vv, ud, vd, cu, cv, _ = self._proju_parts(x, u)
        out = torch.empty_like(u)  # the blocks are written in place: no concatenation
        ou, ov = self.unpack(out)
        combine(ud, uu, None, -cu, out=ou)
        combine(vd, vv, None, -cv, out=ov)
        return out

    def egrad2rgrad(self, x, u):
        uu, vv = self.unpack(x)
        gu, gv = self.unpack(u)
        cu = mT(uu) @ gu  # U^T G_U = U^T G V: (..., r, r)
        cv = mT(vv) @ gv  # V^T G_V = V^T G^T U: (..., r, r)
        rot = (skew(cu) - skew(cv)) / self.rotation_weight  # (2 / w) theta
        out = torch.empty_like(u)  # the blocks are written in place: no concatenation
        ou, ov = self.unpack(out)
        combine(gu, uu, None, rot - cu, out=ou)
        combine(gv, vv, None, -(cv + rot), out=ov)
        return out

    def _rotation(self, x, u):
        """a = (U^T U_dot - V^T V_dot) / 2 (the rotational part of a tangent vector)."""
        uu, vv = self.unpack(x)
        ud, vd = self.unpack(u)
        return 0.5 * (mT(uu) @ ud - mT(vv) @ vd)

    def inner(self, x, u, v=None, *, keepdim=False):
        # packed Euclidean product = ||U_p||^2 + ||V_p||^2 + 2 ||a||^2; add (w - 2) ||a||^2
        out = euclidean_inner(u, v, keepdim)
        if self.rotation_weight != 2.0:
            au = self._rotation(x, u)
            av = au if v is None else self._rotation(x, v)
            out = out + (self.rotation_weight - 2.0) * frob(au, av, keepdim=keepdim)
        return out

    def _check_point_on_manifold(self, x, *, atol=1e-5, rtol=1e-5):
        for label, f in zip(("U", "V"), self.unpack(x)):
            err = orthonormality_error(f)
            if not err <= atol:
                return False, (
                    f"factor {label} of a partial isometry is not orthonormal: "
                    f"max|{label}^T {label} - I| = {err:.3g} > {atol:.3g}"
                )
        return True, None

    def _check_vector_on_tangent(self, x, u, *, atol=1e-5, rtol=1e-5):
        uu, vv = self.unpack(x)
        ud, vd = self.unpack(u)
        cu = mT(uu) @ ud
        cv = mT(vv) @ vd
        scale = u.abs().amax()
        if not self._small(sym(cu), atol, rtol, scale):
            return False, "U^T U_dot is not skew"
        if not self._small(sym(cv), atol, rtol, scale):
            return False, "V^T V_dot is not skew"
        if not self._small(cu + cv, atol, rtol, scale):
            return False, "not horizontal: U^T U_dot + V^T V_dot != 0"
        return True, None
