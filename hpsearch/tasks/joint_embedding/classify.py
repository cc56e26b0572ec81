"""Classification by a joint embedding (thesis eq. 5.1): per level, the label whose cone (or
orthant) holds the image best, ties broken by how deep inside the image lies."""

from __future__ import annotations

import torch
from torch import Tensor

from hpsearch.geometry import (
    euclidean_cone_angle,
    euclidean_cone_aperture,
    hyperbolic_cone_angle,
    hyperbolic_cone_aperture,
)
from hpsearch.models.joint_embedding import JointEmbedding

CHUNK_ELEMS = 1 << 22  # energies × dim per block when scoring all labels against all images
HIT_KS = (3, 5)


def signed_violation(model: JointEmbedding, x: Tensor, y: Tensor) -> Tensor:
    """Tie-break key for eq. 5.1: negative inside the cone / orthant, larger = worse.

    cones: Ξ(x, y) − ψ(x) (angle units, for either energy space; same zero set as E);
    order embeddings: max_j (x_j − y_j) (≤ 0 iff y ⪰ x).
    """
    if model.geometry == "order":
        return (x - y).amax(-1)
    K = model.labels.K
    if model.geometry == "euclidean_cone":
        return euclidean_cone_angle(x, y) - euclidean_cone_aperture(x, K)
    return hyperbolic_cone_angle(x, y) - hyperbolic_cone_aperture(x, K)


@torch.no_grad()
def classify_levels(model: JointEmbedding, label_emb: Tensor, image_emb: Tensor,
                    offsets: tuple[int, ...], sizes: tuple[int, ...],
                    true_local: Tensor | None = None, ks: tuple[int, ...] = HIT_KS
                    ) -> tuple[Tensor, dict[int, Tensor]]:
    """Eq. 5.1 for every image and level.

    Args:
        model: gives the energy and the tie-break key.
        label_emb: ``[N, d]`` all label embeddings.
        image_emb: ``[n, d]`` image embeddings.
        offsets, sizes: the hierarchy's level layout.
        true_local: ``[n, L]`` true local labels, for hit@k.
        ks: the k of hit@k.

    Returns:
        ``(pred [n, L] local indices, {k: hits [n, L] bool})`` (hits empty without labels).
        Labels are ordered by (E, signed violation); ties in both go to the lower index.
    """
    n, d = image_emb.shape
    pred = torch.zeros(n, len(sizes), dtype=torch.int64, device=image_emb.device)
    hits = {k: torch.zeros(n, len(sizes), dtype=torch.bool, device=image_emb.device)
            for k in (ks if true_local is not None else ())}
    for lvl, (o, s) in enumerate(zip(offsets, sizes, strict=True)):
        lab = label_emb[o:o + s]
        rows = max(1, CHUNK_ELEMS // max(s * d, 1))
        for a in range(0, n, rows):
            img = image_emb[a:a + rows, None, :]  # [r, 1, d]
            e = model.energy(lab[None], img)  # [r, s]
            t = signed_violation(model, lab[None], img)  # [r, s]
            best = e.min(1, keepdim=True).values
            key = torch.where(e <= best, t, torch.full_like(t, float("inf")))
            pred[a:a + rows, lvl] = key.argmin(1)
            if hits:
                y = true_local[a:a + rows, lvl:lvl + 1].to(e.device)  # type: ignore[index]
                e_y, t_y = e.gather(1, y), t.gather(1, y)
                better = (e < e_y) | ((e == e_y) & (t < t_y))
                rank = better.sum(1)  # labels strictly ahead of the true one
                for k in hits:
                    hits[k][a:a + rows, lvl] = rank < k
    return pred, hits
