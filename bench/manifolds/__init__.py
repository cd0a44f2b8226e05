"""The five low-rank geometries of arXiv 2606.02328 as geoopt manifolds (papers/knight.md §3).

    make("fixed_rank_embedded", n, m, r)   # R1: U S V^T, embedded, truncated-SVD retraction
    make("fixed_rank_embedded", n, m, r, retraction="orthographic")  # R1, SVD-free retraction
    make("fixed_rank_quotient", n, m, r)   # R2: L R^T modulo GL(r), Gram-scaled metric
    make("partial_isometry_embedded", ...) # P1: U V^T, embedded, polar retraction
    make("partial_isometry_quotient", ...) # P2: St x St / O(r), Euclidean Stiefel metric
    make("partial_isometry_canonical", ...)# P3: St x St / O(r), canonical metric, Cayley

A point is one packed tensor (..., rows, r); `factors(x) -> (L, R)` with W = L @ R.T is what a
model computes with. No operation forms an n x m matrix (except `to_dense`, for tests).
"""

from __future__ import annotations

from .base import LowRankManifold, PartialIsometryBase, check_dims
from .fixed_rank_embedded import FixedRankEmbedded
from .fixed_rank_quotient import FixedRankQuotient
from .partial_isometry_canonical import PartialIsometryCanonical
from .partial_isometry_embedded import PartialIsometryEmbedded
from .partial_isometry_quotient import PartialIsometryQuotient

_CLASSES: dict[str, type[LowRankManifold]] = {
    cls.name: cls
    for cls in (
        FixedRankEmbedded,
        FixedRankQuotient,
        PartialIsometryEmbedded,
        PartialIsometryQuotient,
        PartialIsometryCanonical,
    )
}

GEOMETRIES: tuple[str, ...] = tuple(_CLASSES)

FIXED_RANK: tuple[str, ...] = ("fixed_rank_embedded", "fixed_rank_quotient")
PARTIAL_ISOMETRY: tuple[str, ...] = tuple(g for g in GEOMETRIES if g not in FIXED_RANK)


def make(name: str, n: int, m: int, r: int, **options) -> LowRankManifold:
    """The geometry `name` for n x m matrices of rank r (options go to its constructor)."""
    if name not in _CLASSES:
        raise ValueError(f"unknown geometry {name!r}; allowed: {', '.join(GEOMETRIES)}")
    check_dims(n, m, r)
    return _CLASSES[name](n, m, r, **options)


__all__ = [
    "FIXED_RANK",
    "GEOMETRIES",
    "PARTIAL_ISOMETRY",
    "FixedRankEmbedded",
    "FixedRankQuotient",
    "LowRankManifold",
    "PartialIsometryBase",
    "PartialIsometryCanonical",
    "PartialIsometryEmbedded",
    "PartialIsometryQuotient",
    "check_dims",
    "make",
]
