"""Per-level classifier with an N-dimensional label-embedding layer (Dhall thesis §5.1, §6.2.7)."""

from __future__ import annotations

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


class CosineEmbeddingParams(FamilyParams):
    dim: int = Field(2, gt=0)  # N, the label-embedding dimension (the thesis plots N = 2)
    cosine: bool = False  # logits = scale · cos(image, label) instead of the plain dot product
    scale: float = Field(10.0, gt=0)  # cosine temperature (only with cosine=True)
    learn_scale: bool = False  # train the scale (only with cosine=True)


class CosineEmbeddingHead(Head):
    """features → ``Linear(F, N, bias=False)`` → per level ``Linear(N, n_l, bias=False)``.

    The rows of the level matrices are N-dimensional label embeddings; logits are dot
    products between the image embedding and every label embedding (thesis §5.1: trained
    exactly like the per-level classifier, eq. 3.2-3.3, same loss, class and level weights).
    The level matrices are stored as one ``Linear(N, num_nodes)`` whose rows are level-major,
    which is the same parameterisation. With ``cosine=True`` both sides are L2-normalised and
    the logits are ``s · cos`` (an option beyond the thesis, which used the plain product;
    the code's ``CNN2DFeat`` likewise).
    """

    # Same objective and probabilities as the per-level classifier; only the logits differ.
    loss = PerLevelHead.loss
    level_probs = PerLevelHead.level_probs

    def __init__(self, in_dim: int, hierarchy: Hierarchy, dim: int = 2, cosine: bool = False,
                 scale: float = 10.0, learn_scale: bool = False) -> None:
        super().__init__(hierarchy)
        hierarchy.require_leveled("the cosine-embedding classifier")
        self.cosine = cosine
        self.proj = nn.Linear(in_dim, dim, bias=False)
        self.labels = nn.Linear(dim, hierarchy.num_nodes, bias=False)
        if cosine and learn_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, features: Tensor) -> Tensor:
        e = self.proj(features)  # [B, N] image embedding
        if not self.cosine:
            return self.labels(e)  # [B, sum n_l]
        return self.scale * F.normalize(e, dim=-1) @ F.normalize(self.labels.weight, dim=-1).T

    def image_embeddings(self, features: Tensor) -> Tensor:
        """``[B, N]`` image embeddings of backbone features."""
        return self.proj(features)

    def label_embeddings(self) -> dict[int, Tensor]:
        """Level -> ``[n_l, N]`` label embeddings (detached copies of the weight rows)."""
        return self._per_level(self.labels.weight.detach())

    def _per_level(self, rows: Tensor) -> dict[int, Tensor]:
        # rows [num_nodes, N] level-major -> {level: [n_l, N]}
        return {lvl: b.T.clone() for lvl, b in enumerate(split_levels(rows.T, self.hierarchy))}

    def inverted_label_embeddings(self, r: float) -> dict[int, Tensor]:
        """:func:`invert_embeddings` of all label embeddings, ``||x_max||`` taken over every
        level, returned per level."""
        return self._per_level(invert_embeddings(self.labels.weight.detach(), r))


register_head_family("cosine_embedding", lambda d, h, p: CosineEmbeddingHead(
    d, h, p.dim, p.cosine, p.scale, p.learn_scale), params=CosineEmbeddingParams,
                     description="per-level classifier through an N-d label-embedding layer "
                                 "(thesis §5.1)")
