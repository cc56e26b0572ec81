"""Entailment cones in Euclidean space and on the Poincaré ball.

Ganea, Bécigneul & Hofmann 2018, "Hyperbolic Entailment Cones for Learning Hierarchical
Embeddings" (ICML); thesis §2.2.2-2.2.3, eq. 2.4-2.6 and 2.9-2.11.

Every point x is the apex of a cone of half-aperture ψ(x) around its radial axis x/||x||.
An edge ``(u, v)`` (v is-a u) should put f(v) inside the cone of f(u). The energy
E(x, y) is the angle by which y misses the cone of x:

* angle space:  E = max(0, Ξ(x, y) − ψ(x))               (eq. 2.6, 2.11)
* cosine space: E = max(0, cos ψ(x) − cos Ξ(x, y))         (thesis §6.1.2; range [0, 2])

Both vanish exactly on the same set (cos is decreasing on [0, π]).

Numerics (the published codes clamp arccos/arcsin arguments to ±(1 − 1e-5) or ±(1 − 1e-7),
which makes Ξ ≥ ~4e-3 rad even for a child on the axis, and zero the gradient there):

* Ξ is computed as the angle between x and the *direction of the geodesic* from x to y with
  Kahan's 2·atan2(||â − b̂||, ||â + b̂||) (:func:`angle_between`): no arccos, no clamp, finite
  gradients everywhere, and exactly 0 for a child on the parent's axis. The closed forms of
  eq. 2.5/2.10 are kept (``*_cos_angle_closed_form``) as references the tests compare with.
* ψ clamps its arcsin argument to ``1 − ASIN_EPS[dtype]`` (inside the inner radius the cone
  is a half-space, ψ → π/2; the gradient there is zero, not inf).
* y = x (zero geodesic): Ξ := 0, the apex belongs to its own cone (reflexivity), E = 0.
* x = 0 (Euclidean only; outside the domain): Ξ = π/2 and ψ = π/2, E = 0, all finite.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from hpsearch.errors import ConfigError
from hpsearch.geometry._numerics import (
    ASIN_EPS,
    ZERO_NORM,
    angle_between,
    eps_for,
    safe_norm,
    safe_sqrt,
)

Space = Literal["angle", "cosine"]


def _sin_aperture(s: Tensor) -> Tensor:
    """Clamp sin ψ into [0, 1 − ASIN_EPS] (gradient 0 beyond the clamp)."""
    return s.clamp(0.0, 1.0 - eps_for(ASIN_EPS, s.dtype))


def _energy(xi: Tensor, sin_psi: Tensor, space: Space) -> Tensor:
    if space == "angle":
        return (xi - torch.asin(sin_psi)).clamp_min(0)
    if space == "cosine":
        cos_psi = safe_sqrt(1 - sin_psi * sin_psi)  # sin_psi <= 1 - eps: sqrt arg > 0
        return (cos_psi - torch.cos(xi)).clamp_min(0)
    raise ConfigError(f"cone energy space must be 'angle' or 'cosine', got {space!r}")


def _norm_floor(x: Tensor) -> Tensor:
    return safe_norm(x).clamp_min(eps_for(ZERO_NORM, x.dtype))


# ---------------------------------------------------------------------- Euclidean cones
def euclidean_cone_aperture(x: Tensor, K: float) -> Tensor:
    """ψ(x) = arcsin(K / ||x||)   (thesis eq. 2.4).

    Defined for ||x|| >= K; below it the argument is clamped (ψ = arcsin(1 − ASIN_EPS) ≈ π/2).
    """
    return torch.asin(_sin_aperture(K / _norm_floor(x)))


def euclidean_cone_angle(x: Tensor, y: Tensor) -> Tensor:
    """Ξ(x, y) = angle between x and y − x  =  arccos((||y||² − ||x||² − ||x − y||²) /
    (2 ||x|| ||x − y||))   (thesis eq. 2.5; the numerator is 2<x, y − x>).

    Computed with :func:`angle_between` (stable); Ξ(x, x) := 0.
    """
    w = y - x
    xi = angle_between(x, w)
    return torch.where(safe_norm(w) > 0, xi, torch.zeros_like(xi))


def euclidean_cone_cos_angle_closed_form(x: Tensor, y: Tensor) -> Tensor:
    """cos Ξ by eq. 2.5 literally, clamped to ±(1 − ASIN_EPS). Reference only (tests)."""
    nx, nxy = _norm_floor(x), _norm_floor(x - y)
    c = ((y * y).sum(-1) - (x * x).sum(-1) - ((x - y) ** 2).sum(-1)) / (2 * nx * nxy)
    e = eps_for(ASIN_EPS, x.dtype)
    return c.clamp(-1 + e, 1 - e)


def euclidean_cone_energy(x: Tensor, y: Tensor, K: float, *, space: Space = "angle") -> Tensor:
    """Euclidean-cone violation E(x, y) for parents x and children y (last dim).

    angle:  E = max(0, Ξ(x, y) − ψ(x))            (thesis eq. 2.6)
    cosine: E = max(0, cos ψ(x) − cos Ξ(x, y))     with cos ψ = sqrt(1 − K²/||x||²)
    (thesis §6.1.2, published ``order_embeddings.py``).

    Args:
        x: ``[..., d]`` parent embeddings.
        y: ``[..., d]`` child embeddings (broadcastable).
        K: cone constant (> 0); the published label code uses K = 3.0.
        space: ``"angle"`` or ``"cosine"``.
    """
    if K <= 0:
        raise ConfigError(f"cone constant K must be > 0, got K={K}")
    sin_psi = _sin_aperture(K / _norm_floor(x))
    return _energy(euclidean_cone_angle(x, y), sin_psi, space)


# ---------------------------------------------------------------------- hyperbolic cones
def hyperbolic_cone_aperture(x: Tensor, K: float) -> Tensor:
    """ψ(x) = arcsin(K (1 − ||x||²) / ||x||)   (thesis eq. 2.9).

    Defined for ε_K <= ||x|| < 1 (:func:`hpsearch.geometry.poincare.inner_radius`); inside ε_K
    the argument is clamped (ψ ≈ π/2).
    """
    r = _norm_floor(x)
    return torch.asin(_sin_aperture(K * (1 - r * r) / r))


def geodesic_direction(x: Tensor, y: Tensor) -> Tensor:
    """A positive multiple of log_x(y), the initial direction of the geodesic x → y:

    (1 − 2<x, y> + ||y||²)(−x) + (1 − ||x||²) y   =  numerator of (−x) ⊕ y.

    The Möbius sum's denominator is positive inside the ball, so it is dropped: that avoids a
    division that cancels catastrophically near the boundary in float32.
    """
    xy = (x * y).sum(-1, keepdim=True)
    return (1 - 2 * xy + (y * y).sum(-1, keepdim=True)) * (-x) + (
        1 - (x * x).sum(-1, keepdim=True)) * y


def hyperbolic_cone_angle(x: Tensor, y: Tensor) -> Tensor:
    """Ξ(x, y) = π − ∠(O x y): angle at x between the radial axis and the geodesic to y,

    Ξ = arccos( (<x,y>(1 + ||x||²) − ||x||²(1 + ||y||²)) /
                (||x|| ||x − y|| sqrt(1 + ||x||²||y||² − 2<x,y>)) )     (thesis eq. 2.10)

    computed as the Euclidean angle between x and :func:`geodesic_direction` (the ball is
    conformal, so tangent angles are Euclidean angles); Ξ(x, x) := 0.
    """
    w = geodesic_direction(x, y)
    xi = angle_between(x, w)
    return torch.where(safe_norm(x - y) > 0, xi, torch.zeros_like(xi))


def hyperbolic_cone_cos_angle_closed_form(x: Tensor, y: Tensor) -> Tensor:
    """cos Ξ by eq. 2.10 literally, clamped to ±(1 − ASIN_EPS). Reference only (tests)."""
    xy = (x * y).sum(-1)
    nx2, ny2 = (x * x).sum(-1), (y * y).sum(-1)
    num = xy * (1 + nx2) - nx2 * (1 + ny2)
    den = _norm_floor(x) * _norm_floor(x - y) * torch.sqrt((1 + nx2 * ny2 - 2 * xy).clamp_min(0))
    e = eps_for(ASIN_EPS, x.dtype)
    return (num / den.clamp_min(eps_for(ZERO_NORM, x.dtype))).clamp(-1 + e, 1 - e)


def hyperbolic_cone_energy(x: Tensor, y: Tensor, K: float, *, space: Space = "angle") -> Tensor:
    """Hyperbolic-cone violation on the Poincaré ball (curvature −1).

    angle:  E = max(0, Ξ(x, y) − ψ(x))           (thesis eq. 2.11)
    cosine: E = max(0, cos ψ(x) − cos Ξ(x, y))

    Args:
        x: ``[..., d]`` parents, ``||x|| < 1`` (≥ ε_K for a defined aperture).
        y: ``[..., d]`` children inside the ball (broadcastable).
        K: cone constant (> 0); 0.1 in both published codes.
        space: ``"angle"`` or ``"cosine"``.
    """
    if K <= 0:
        raise ConfigError(f"cone constant K must be > 0, got K={K}")
    r = _norm_floor(x)
    sin_psi = _sin_aperture(K * (1 - r * r) / r)
    return _energy(hyperbolic_cone_angle(x, y), sin_psi, space)
