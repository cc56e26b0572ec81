"""The Poincaré ball D^n = {x : ||x|| < 1} (curvature −1): thin wrappers over geoopt.

The maths is ``geoopt.manifolds.stereographic.math`` with ``k = −1``; this module adds the
clipping conventions of hyperbolic entailment cones (an *inner* radius below which the cone
aperture is undefined, and the ball boundary), and :class:`ConeBall`, a geoopt manifold whose
projection enforces both so that ``geoopt.optim.RiemannianSGD``/``RiemannianAdam`` keep
parameters in the cones' domain after every step.

Sources: Ganea, Bécigneul & Hofmann 2018, "Hyperbolic Entailment Cones for Learning
Hierarchical Embeddings" (§3-4); thesis eq. 2.7-2.15.
"""

from __future__ import annotations

import math

import geoopt
import geoopt.manifolds.stereographic.math as gmath
import torch
from torch import Tensor

from hpsearch.errors import ConfigError
from hpsearch.geometry._numerics import BOUNDARY_EPS, eps_for, safe_norm


def _k(x: Tensor) -> Tensor:
    return torch.tensor(-1.0, dtype=x.dtype, device=x.device)


def inner_radius(K: float) -> float:
    """ε_K = 2K / (1 + sqrt(1 + 4K²)): the norm where K(1 − r²)/r = 1.

    Hyperbolic-cone apertures ψ(x) = arcsin(K(1 − ||x||²)/||x||) exist only for ||x|| ≥ ε_K
    (Ganea et al. 2018, §4; dalab/hyperbolic_cones ``hyp_cones_model.py``). ε_0.1 ≈ 0.0990.
    """
    if K <= 0:
        raise ConfigError(f"cone constant K must be > 0, got K={K}")
    return 2 * K / (1 + math.sqrt(1 + 4 * K * K))


def max_norm(dtype: torch.dtype) -> float:
    """Largest norm kept inside the ball: ``1 − BOUNDARY_EPS[dtype]``."""
    return 1.0 - eps_for(BOUNDARY_EPS, dtype)


def project_norms(x: Tensor, min_norm: float = 0.0, max_norm_: float | None = None) -> Tensor:
    """Rescale every row so that ``min_norm <= ||x|| <= max_norm_`` (direction kept).

    ``max_norm_`` defaults to the ball boundary ``1 − BOUNDARY_EPS``. A zero row has no
    direction; it is sent along (1, ..., 1)/sqrt(d) (the published code adds 1e-15 to every
    coordinate, which amounts to the same direction). Differentiable (zero gradient along the
    radius where clamped).
    """
    hi = max_norm(x.dtype) if max_norm_ is None else max_norm_
    if not 0 <= min_norm < hi:
        raise ConfigError(f"norm interval must satisfy 0 <= min_norm < max_norm, got "
                          f"[{min_norm}, {hi}]")
    r = safe_norm(x, keepdim=True)
    default = torch.full_like(x, 1.0 / math.sqrt(x.shape[-1]))
    direction = torch.where(r > 0, x / torch.where(r > 0, r, torch.ones_like(r)), default)
    return direction * r.clamp(min_norm, hi)


def expmap0(u: Tensor) -> Tensor:
    """exp_0(u) = tanh(||u||) u/||u||: tangent vector at the origin -> ball (thesis eq. 2.15
    at x = 0, where λ_0 = 2). geoopt ``math.expmap0``."""
    return gmath.expmap0(u, k=_k(u))


def logmap0(y: Tensor) -> Tensor:
    """log_0(y) = artanh(||y||) y/||y||, the inverse of :func:`expmap0`. geoopt ``logmap0``."""
    return gmath.logmap0(y, k=_k(y))


def expmap(x: Tensor, u: Tensor) -> Tensor:
    """exp_x(u) = x ⊕ tanh(λ_x ||u|| / 2) u/||u||  (Möbius addition ⊕; equals thesis eq. 2.15).
    geoopt ``math.expmap``."""
    return gmath.expmap(x, u, k=_k(x))


def mobius_add(x: Tensor, y: Tensor) -> Tensor:
    """x ⊕ y = ((1 + 2<x,y> + ||y||²) x + (1 − ||x||²) y) / (1 + 2<x,y> + ||x||²||y||²)."""
    return gmath.mobius_add(x, y, k=_k(x))


def dist(x: Tensor, y: Tensor) -> Tensor:
    """d(x, y) = arccosh(1 + 2||x − y||² / ((1 − ||x||²)(1 − ||y||²))) = 2 artanh(||−x ⊕ y||)
    (thesis eq. 2.7). geoopt ``math.dist``."""
    return gmath.dist(x, y, k=_k(x))


def lambda_x(x: Tensor) -> Tensor:
    """Conformal factor λ_x = 2 / (1 − ||x||²) (thesis §2.2.4; *not* the 2/(1 − ||x||) of the
    published label-embedding code)."""
    return gmath.lambda_x(x, k=_k(x))


def egrad2rgrad(x: Tensor, grad: Tensor) -> Tensor:
    """Riemannian gradient (1/λ_x)² ∇_x (thesis eq. 2.14) = grad · ((1 − ||x||²)/2)²."""
    return gmath.egrad2rgrad(x, grad, k=_k(x))


def offset_expmap0(w: Tensor, min_norm: float) -> Tensor:
    """f(w) = tanh(artanh(min_norm) + ||w||) · w/||w||  =  exp_0((||w|| + artanh(min_norm)) ŵ).

    The "Adam with exp-map-at-0" parametrisation of hyperbolic label embeddings (thesis §5.6):
    Euclidean parameters w, mapped into the ball; the offset artanh(ε_K) makes every image lie
    outside the inner radius ε_K (as in the published oe_h.py), so no point gets stuck where
    the cone aperture is undefined. Follow with :func:`project_norms` to stay off the boundary
    (tanh rounds to 1 in float32 for arguments above ~9).
    """
    if not 0 <= min_norm < 1:
        raise ConfigError(f"min_norm must lie in [0, 1), got {min_norm}")
    r = safe_norm(w, keepdim=True)
    return _offset_dir(w, r) * torch.tanh(r + math.atanh(min_norm))


def _offset_dir(w: Tensor, r: Tensor) -> Tensor:
    default = torch.full_like(w, 1.0 / math.sqrt(w.shape[-1]))
    return torch.where(r > 0, w / torch.where(r > 0, r, torch.ones_like(r)), default)


def offset_expmap0_inverse(x: Tensor, min_norm: float) -> Tensor:
    """Inverse of :func:`offset_expmap0` on ``||x|| >= min_norm``:
    w = (artanh(||x||) − artanh(min_norm)) x/||x||, with norms clipped into the valid range."""
    r = safe_norm(x, keepdim=True).clamp(min_norm, max_norm(x.dtype))
    return _offset_dir(x, r) * (torch.atanh(r) - math.atanh(min_norm))


class ConeBall(geoopt.PoincareBall):
    """A curvature −1 Poincaré ball whose projection clips norms into
    ``[min_norm, 1 − BOUNDARY_EPS]``.

    Give it to ``geoopt.ManifoldParameter``: geoopt's Riemannian optimizers rescale gradients
    by (1/λ_x)² (``egrad2rgrad``), step with :meth:`retr` and thereby re-project after every
    update, exactly the RSGD of thesis eq. 2.13-2.14 plus the clipping of Ganea et al.

    Args:
        min_norm: inner radius (ε_K plus a margin for cones; 0 for plain Poincaré embeddings).
        exact: ``True``: retraction = exact exponential map exp_x(u) (thesis eq. 2.13/2.15);
            ``False``: first-order retraction x + u (what Ganea et al.'s Table 1 used).
    """

    def __init__(self, min_norm: float = 0.0, exact: bool = True) -> None:
        super().__init__(c=1.0)
        if not 0 <= min_norm < 1:
            raise ConfigError(f"ConeBall min_norm must lie in [0, 1), got {min_norm}")
        self.min_norm = float(min_norm)
        self.exact = bool(exact)

    def projx(self, x: Tensor, *, dim: int = -1) -> Tensor:
        return project_norms(x, self.min_norm)

    def retr(self, x: Tensor, u: Tensor, *, dim: int = -1) -> Tensor:
        y = gmath.expmap(x, u, k=_k(x)) if self.exact else x + u
        return self.projx(y)

    def extra_repr(self) -> str:
        return f"min_norm={self.min_norm:.6g}, exact={self.exact}"
