"""Pure geometry of order-preserving embeddings: order violations, entailment cones and the
Poincaré ball. Functions only (no state); see each docstring for the formula and its source.

Convention: an edge ``(u, v)`` means *v is-a u*; energies are ``E(f(u), f(v))``, low = edge.
"""

from hpsearch.geometry._numerics import (
    ASIN_EPS,
    BOUNDARY_EPS,
    ZERO_NORM,
    angle_between,
    safe_norm,
    safe_normalize,
)
from hpsearch.geometry.cones import (
    euclidean_cone_angle,
    euclidean_cone_aperture,
    euclidean_cone_energy,
    geodesic_direction,
    hyperbolic_cone_angle,
    hyperbolic_cone_aperture,
    hyperbolic_cone_energy,
)
from hpsearch.geometry.order import order_violation
from hpsearch.geometry.poincare import (
    ConeBall,
    dist,
    egrad2rgrad,
    expmap,
    expmap0,
    inner_radius,
    lambda_x,
    logmap0,
    max_norm,
    mobius_add,
    offset_expmap0,
    offset_expmap0_inverse,
    project_norms,
)

__all__ = [
    "ASIN_EPS", "BOUNDARY_EPS", "ZERO_NORM", "ConeBall", "angle_between", "dist", "egrad2rgrad",
    "euclidean_cone_angle", "euclidean_cone_aperture", "euclidean_cone_energy", "expmap",
    "expmap0", "geodesic_direction", "hyperbolic_cone_angle", "hyperbolic_cone_aperture",
    "hyperbolic_cone_energy", "inner_radius", "lambda_x", "logmap0", "max_norm", "mobius_add",
    "offset_expmap0", "offset_expmap0_inverse", "order_violation", "project_norms",
    "safe_norm", "safe_normalize",
]
