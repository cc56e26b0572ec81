"""Order embeddings: the reversed product order on R^n and its violation energy.

Convention of the whole package: an edge ``(u, v)`` means *v is-a u* (u is the parent, the
more abstract concept); the energy is ``E(x = f(u), y = f(v))`` and low energy means "edge".
"""

from __future__ import annotations

from torch import Tensor

from hpsearch.geometry._numerics import safe_sqrt


def order_violation(parent: Tensor, child: Tensor, *, squared: bool = False) -> Tensor:
    """Order-violation energy over the last dim.

    E(x, y) = ||max(0, x − y)||            (``squared=False``; thesis eq. 2.2)
    E(x, y) = ||max(0, x − y)||²           (``squared=True``; the published code's energy)

    Zero iff y ⪰ x coordinate-wise, i.e. the child lies in the parent's translated orthant
    (reversed product order, thesis eq. 2.1). Vendrov et al. 2016, "Order-Embeddings of Images
    and Language", eq. 2. Coordinates are unconstrained (no abs, as in thesis §5.2).

    Numerics: the plain norm uses a sqrt that is exactly 0 with a zero gradient at 0, so a
    satisfied pair contributes neither energy nor gradient (torch's sqrt would give NaN).

    Args:
        parent: ``[..., d]`` embeddings of the parents (x).
        child: ``[..., d]`` embeddings of the children (y), broadcastable with ``parent``.
        squared: use the squared norm.

    Returns:
        ``[...]`` non-negative energies.
    """
    d = (parent - child).clamp_min(0)
    s = (d * d).sum(-1)
    return s if squared else safe_sqrt(s)
