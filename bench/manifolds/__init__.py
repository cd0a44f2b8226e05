"""The five low-rank geometries of arXiv 2606.02328 as geoopt manifolds (docs/papers/knight.md §3).

    make("fixed_rank_embedded", n, m, r)   # R1: U S V^T, embedded, truncated-SVD retraction
    make("fixed_rank_embedded", n, m, r, retraction="orthographic")  # R1, SVD-free retraction
    make("fixed_rank_quotient", n, m, r)   # R2: L R^T modulo GL(r), Gram-scaled metric
    make("partial_isometry_embedded", ...) # P1: U V^T, embedded, polar retraction
    make("partial_isometry_quotient", ...) # P2: St x St / O(r), Euclidean Stiefel metric
    make("partial_isometry_canonical", ...)# P3: St x St / O(r), canonical metric, Cayley

A point is one packed tensor (..., rows, r); `factors(x) -> (L, R)` with W = L @ R.T is what a
model computes with. No operation forms an n x m matrix (except `to_dense`, for tests).

`MANIFOLDS` is the one list of geometries (model.attention.geometry, adapter.geometry): each
class states its `name`, its `kind` and its `retractions`; FIXED_RANK and PARTIAL_ISOMETRY are
read off the classes. Adding a geometry is its module and one entry below.
"""

from __future__ import annotations

from .base import KINDS, LowRankManifold, PartialIsometryBase, check_dims
from .fixed_rank_embedded import FixedRankEmbedded
from .fixed_rank_quotient import FixedRankQuotient
from .partial_isometry_canonical import PartialIsometryCanonical
from .partial_isometry_embedded import PartialIsometryEmbedded
from .partial_isometry_quotient import PartialIsometryQuotient


def _registry(*classes: type[LowRankManifold]) -> dict[str, type[LowRankManifold]]:
    """name -> class; a class whose `kind` is not one of KINDS is refused at import."""
    for cls in classes:
        if getattr(cls, "kind", None) not in KINDS:
            raise TypeError(
                f"manifold {cls.__name__} states kind={getattr(cls, 'kind', None)!r}; "
                f"known kinds: {', '.join(KINDS)}"
            )
    return {cls.name: cls for cls in classes}


MANIFOLDS = _registry(
    FixedRankEmbedded,
    FixedRankQuotient,
    PartialIsometryEmbedded,
    PartialIsometryQuotient,
    PartialIsometryCanonical,
)

GEOMETRIES: tuple[str, ...] = tuple(MANIFOLDS)
FIXED_RANK: tuple[str, ...] = tuple(g for g, c in MANIFOLDS.items() if c.kind == "fixed_rank")
PARTIAL_ISOMETRY: tuple[str, ...] = tuple(
    g for g, c in MANIFOLDS.items() if c.kind == "partial_isometry"
)


def _check_name(name: str) -> None:
    if name not in MANIFOLDS:
        raise ValueError(f"unknown geometry {name!r}; allowed: {', '.join(GEOMETRIES)}")


def geometry_kind(name: str) -> str:
    """The kind (one of KINDS) of the geometry `name`."""
    _check_name(name)
    return MANIFOLDS[name].kind


def make(name: str, n: int, m: int, r: int, **options) -> LowRankManifold:
    """The geometry `name` for n x m matrices of rank r (options go to its constructor)."""
    _check_name(name)
    check_dims(n, m, r)
    return MANIFOLDS[name](n, m, r, **options)


__all__ = [
    "FIXED_RANK",
    "GEOMETRIES",
    "KINDS",
    "MANIFOLDS",
    "PARTIAL_ISOMETRY",
    "FixedRankEmbedded",
    "FixedRankQuotient",
    "LowRankManifold",
    "PartialIsometryBase",
    "PartialIsometryCanonical",
    "PartialIsometryEmbedded",
    "PartialIsometryQuotient",
    "check_dims",
    "geometry_kind",
    "make",
]
