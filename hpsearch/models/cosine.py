"""Per-level classifier with an N-dimensional label-embedding layer (Dhall thesis §5.1, §6.2.7).

Where the image embedding comes from (``projection``):

* ``shared`` (default): one ``Linear(F, N)`` for every level, then one label layer per level.
  This is the thesis (§5.1: "adding *a* linear layer that projects the final fully-connected
  layer [...] to a latent space", fig. 5.1) and the published code (``CNN2DFeat``:
  ``Linear(F, 2)`` followed by one ``Linear(2, n_l)`` per level, reference §1).
* ``per_level``: each level l has its own ``Linear(F, N)`` projection P_l and its own label
  vectors; level l's logits compare P_l(f) with level l's labels only. The slides' "a set of
  linear layers whose weights live in 2 dimensions, one such layer for every level" describes
  the per-level *label* layers (which ``shared`` has too); giving every level its own image
  projection as well is this option, an extension searched as a hyperparameter.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from hpsearch.hierarchy import Hierarchy
from hpsearch.models.base import (
    FamilyParams,
    Head,
    register_head_family,
    split_levels,
)
from hpsearch.models.per_level import PerLevelHead

Projection = Literal["shared", "per_level"]


def invert_embeddings(x: Tensor, r: float, max_norm: Tensor | float | None = None) -> Tensor:
    """Radial inversion of embeddings (thesis eq. 6.1, §6.2.7).

    x_inv = r · x · ||x_max|| / ||x||²,  so  ||x_inv|| = r · ||x_max|| / ||x||.

    The direction is kept and the norm order is reversed: the embedding with the largest norm
    ``||x_max||`` lands at norm ``r`` (the minimum norm of any inverted embedding, as the thesis
    defines r) and small-norm embeddings move far out. The thesis' printed formula has
    ``||x||`` in the denominator, which would give every embedding the same norm
    ``r·||x_max||`` and contradict both the text ("the one furthest are close to the origin
    and vice-versa", r = minimum norm) and the published code (``x · 3 · max_norm / ||x||²``,
    i.e. r = 3); the squared norm is what the text describes.

    Args:
        x: ``[..., N]`` embeddings.
        r: minimum norm after inversion (> 0).
        max_norm: ``||x_max||``; default the largest norm in ``x``.
    """
    if r <= 0:
        raise ValueError(f"inversion radius r must be > 0, got {r}")
    norm = x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny ** 0.5)
    m = norm.max() if max_norm is None else max_norm
    return r * x * m / norm.pow(2)


def cosine_logits(images: Tensor, labels: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """z_ij = s · <e_i, w_j> / (||e_i|| ||w_j||): scaled cosine similarity.

    ``images`` is ``[B, N]``, ``labels`` ``[n, N]``; returns ``[B, n]``. Norms are clamped at
    1e-12 (``F.normalize``), so a zero vector scores 0 instead of NaN. The scaled cosine is
    the normalised-softmax logit of Wang et al. 2017 ("NormFace"); the thesis' cosine
    embeddings (§5.1) use the plain dot product ``<e_i, w_j>``.
    """
    return scale * F.normalize(images, dim=-1) @ F.normalize(labels, dim=-1).T


class CosineEmbeddingParams(FamilyParams):
    dim: int = Field(2, gt=0)  # N, the label-embedding dimension (the thesis plots N = 2)
    cosine: bool = False  # logits = scale · cos(image, label) instead of the plain dot product
    scale: float = Field(10.0, gt=0)  # cosine temperature (only with cosine=True)
    learn_scale: bool = False  # train the scale (only with cosine=True)
    # image projection: one for all levels (thesis, code) or one per level (see the module)
    projection: Projection = "shared"


class CosineEmbeddingHead(Head):
    """features → image projection(s) ``Linear(F, N, bias=False)`` → per level label vectors.

    The label vectors of level l are the rows of an ``[n_l, N]`` matrix; logits are dot
    products (or ``s · cos`` with ``cosine=True``) between the image embedding and every label
    vector of the level (thesis §5.1: trained exactly like the per-level classifier, eq.
    3.2-3.3, same loss, class and level weights). The level matrices are stored as one
    ``labels = Linear(N, num_nodes)`` whose rows are level-major (hierarchy order), which is
    the same parameterisation: level l's loss reaches only its own rows.

    ``projection="shared"``: one image embedding ``proj(f)`` ``[B, N]`` for every level (the
    thesis). ``projection="per_level"``: ``level_proj[l](f)`` for level l, so each level has
    its own image space and level l's loss moves only ``level_proj[l]`` and level l's rows.
    ``cosine=True`` L2-normalises both sides (an option beyond the thesis, which used the
    plain product; the code's ``CNN2DFeat`` likewise).
    """

    # Same objective and probabilities as the per-level classifier; only the logits differ.
    loss = PerLevelHead.loss
    level_probs = PerLevelHead.level_probs

    def __init__(self, in_dim: int, hierarchy: Hierarchy, dim: int = 2, cosine: bool = False,
                 scale: float = 10.0, learn_scale: bool = False,
                 projection: Projection = "shared") -> None:
        super().__init__(hierarchy)
        hierarchy.require_leveled("the cosine-embedding classifier")
        if projection not in ("shared", "per_level"):
            raise ValueError(f"projection must be 'shared' or 'per_level', got {projection!r}")
        self.cosine = cosine
        self.projection = projection
        # the shared layout keeps the state-dict keys of earlier checkpoints (proj, labels)
        if projection == "shared":
            self.proj = nn.Linear(in_dim, dim, bias=False)
        else:
            self.level_proj = nn.ModuleList(nn.Linear(in_dim, dim, bias=False)
                                            for _ in range(hierarchy.num_levels))
        self.labels = nn.Linear(dim, hierarchy.num_nodes, bias=False)
        if cosine and learn_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, features: Tensor) -> Tensor:
        if self.projection == "shared":
            e = self.proj(features)  # [B, N] image embedding
            if not self.cosine:
                return self.labels(e)  # [B, sum n_l]
            return cosine_logits(e, self.labels.weight, self.scale)
        blocks = torch.split(self.labels.weight, list(self.hierarchy.level_sizes))  # [n_l, N]
        out = []
        for proj, w in zip(self.level_proj, blocks, strict=True):
            e = proj(features)  # [B, N]: level l's image embedding
            out.append(cosine_logits(e, w, self.scale) if self.cosine else e @ w.T)
        return torch.cat(out, dim=-1)  # [B, sum n_l]

    def image_embeddings(self, features: Tensor) -> Tensor:
        """Image embeddings of backbone features: ``[B, N]`` (shared) or ``[B, L, N]``
        (per_level, level l's embedding at ``[:, l]``)."""
        if self.projection == "shared":
            return self.proj(features)
        return torch.stack([p(features) for p in self.level_proj], dim=1)

    def label_embeddings(self) -> dict[int, Tensor]:
        """Level -> ``[n_l, N]`` label embeddings (detached copies of the weight rows)."""
        return self._per_level(self.labels.weight.detach())

    def _per_level(self, rows: Tensor) -> dict[int, Tensor]:
        # rows [num_nodes, N] level-major -> {level: [n_l, N]}
        return {lvl: b.T.clone() for lvl, b in enumerate(split_levels(rows.T, self.hierarchy))}

    def inverted_label_embeddings(self, r: float) -> dict[int, Tensor]:
        """:func:`invert_embeddings` of all label embeddings, returned per level.

        ``||x_max||`` is taken over every level with the shared projection (one space, as in
        the thesis) and within each level with ``per_level`` (each level its own space).
        """
        if self.projection == "shared":
            return self._per_level(invert_embeddings(self.labels.weight.detach(), r))
        return {lvl: invert_embeddings(e, r) for lvl, e in self.label_embeddings().items()}


register_head_family("cosine_embedding", lambda d, h, p: CosineEmbeddingHead(
    d, h, p.dim, p.cosine, p.scale, p.learn_scale, p.projection),
                     params=CosineEmbeddingParams,
                     description="per-level classifier through an N-d label-embedding layer "
                                 "(thesis §5.1)")
