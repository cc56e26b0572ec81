"""Named, dtype-dependent numerical constants and gradient-safe vector primitives.

Every clamp used by :mod:`hpsearch.geometry` is one of the constants below, chosen by dtype
(geoopt's convention). Half-precision inputs use the float32 entries: the energies are meant to
be computed in float32 or float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: A vector whose norm is below this is treated as the zero vector (its direction is
#: undefined). float32: 1e-18 keeps the squared norm (1e-36) a normal number.
ZERO_NORM: dict[torch.dtype, float] = {torch.float32: 1e-18, torch.float64: 1e-150}

#: arcsin/arccos arguments are clamped to at most ``1 - ASIN_EPS``: their slope is infinite at
#: 1. Beyond the clamp the gradient is zero (the value is constant), never inf or NaN.
ASIN_EPS: dict[torch.dtype, float] = {torch.float32: 1e-6, torch.float64: 1e-12}

#: Largest norm of a point of the Poincaré ball: ``1 - BOUNDARY_EPS``. Both published codes
#: (dalab/hyperbolic_cones, ankitdhall/learning_embeddings) clip to 1 - 1e-5; in float32,
#: 1 - ||x||^2 still has ~3 significant digits there.
BOUNDARY_EPS: dict[torch.dtype, float] = {torch.float32: 1e-5, torch.float64: 1e-5}


def eps_for(table: dict[torch.dtype, float], dtype: torch.dtype) -> float:
    """The constant of ``table`` for ``dtype`` (float32's entry for other float dtypes)."""
    return table.get(dtype, table[torch.float32])


def safe_sqrt(s: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``sqrt(s)`` for ``s >= 0`` that is exactly 0 with a zero gradient where
    ``s <= ZERO_NORM**2`` (the plain sqrt has an infinite slope at 0)."""
    tiny = eps_for(ZERO_NORM, dtype or s.dtype) ** 2
    pos = s > tiny
    return torch.where(pos, torch.sqrt(torch.where(pos, s, torch.ones_like(s))),
                       torch.zeros_like(s))


def safe_norm(v: Tensor, *, keepdim: bool = False) -> Tensor:
    """Euclidean norm over the last dim; exactly 0 (zero gradient) for a zero vector."""
    return safe_sqrt((v * v).sum(-1, keepdim=keepdim))


def safe_normalize(v: Tensor) -> Tensor:
    """``v / ||v||`` over the last dim; the zero vector maps to the zero vector."""
    n = safe_norm(v, keepdim=True)
    nz = n > 0
    return torch.where(nz, v / torch.where(nz, n, torch.ones_like(n)), torch.zeros_like(v))


def angle_between(a: Tensor, b: Tensor) -> Tensor:
    """Angle in [0, π] between ``a`` and ``b`` (last dim), stable at 0 and π.

    Θ(a, b) = 2 · atan2(||â − b̂||, ||â + b̂||)   (Kahan, "How futile are mindless assessments of
    roundoff", 2006, §12). Unlike ``arccos(<â, b̂>)`` it needs no clamp and its gradient is
    finite everywhere, including for parallel and antiparallel vectors; it is exactly 0 for
    ``b = c·a`` with c > 0 up to the rounding of the normalisation.

    A zero vector has direction 0, giving Θ = π/2 against any non-zero vector (callers that
    need another convention override it with ``torch.where``).
    """
    ah, bh = safe_normalize(a), safe_normalize(b)
    num = safe_norm(ah - bh)
    den = safe_norm(ah + bh)
    both0 = (num == 0) & (den == 0)  # only when a = b = 0; atan2(0, 0) has a NaN gradient
    return 2 * torch.atan2(num, torch.where(both0, torch.ones_like(den), den))
