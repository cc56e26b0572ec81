"""Marginalization (bottom-up) classifier (Dhall thesis §3.3, eq. 3.4-3.6)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from hpsearch.hierarchy import Hierarchy
from hpsearch.models.base import (
    FamilyParams,
    Head,
    level_weights_for,
    register_head_family,
    weighted_level_nll,
)


def segment_logsumexp(x: Tensor, segment: Tensor, num_segments: int) -> Tensor:
    """Log-sum-exp over groups of the last dimension.

    out[..., s] = log Σ_{j : segment[j] = s} exp(x[..., j]), computed stably as
    m_s + log Σ exp(x_j - m_s) with m_s the (detached) group maximum; the result does not
    depend on m_s, so detaching it leaves the gradient exact. An empty group gives -inf with a
    zero (not NaN) gradient.

    Args:
        x: ``[..., n]`` values (log-probabilities, logits).
        segment: ``[n]`` int64 group id of every entry, in ``[0, num_segments)``.
        num_segments: number of groups.

    Returns:
        ``[..., num_segments]``.
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # [B, n]
    idx = segment.to(x.device).expand(x2.shape[0], -1)
    m = x2.new_full((x2.shape[0], num_segments), float("-inf"))
    m = m.scatter_reduce(1, idx, x2.detach(), reduce="amax", include_self=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = x2.new_zeros((x2.shape[0], num_segments))
    s = s.scatter_add(1, idx, (x2 - m.gather(1, idx)).exp())
    pos = s > 0
    out = torch.where(pos, torch.where(pos, s, torch.ones_like(s)).log() + m,
                      torch.full_like(s, float("-inf")))
    return out.reshape(*lead, num_segments)


def leaf_path_prediction(leaf_scores: Tensor, h: Hierarchy) -> Tensor:
    """``[B, L]`` root path of the argmax leaf: the most probable consistent path when
    ``leaf_scores`` are leaf (joint) log-probabilities of a tree."""
    paths = torch.from_numpy(h.leaf_paths).to(leaf_scores.device)  # [n_L, L]
    return paths[leaf_scores.argmax(-1)]


class MarginalizationParams(FamilyParams):
    # "marginal": argmax of every level's marginal (the thesis/code; a path can be
    # inconsistent); "leaf_path": the root path of the argmax leaf (always consistent).
    prediction: Literal["marginal", "leaf_path"] = "marginal"


class MarginalizationHead(Head):
    """One softmax over the leaves; every upper level is its children's sum.

    p_L = softmax(x) (eq. 3.6); p_l[j] = Σ_{c ∈ children(j)} p_{l+1}[c] (eq. 3.5), evaluated in
    log space: log p_l = segment-logsumexp of log p_{l+1} grouped by parent, so no probability
    underflows to log 0 (the published code took ``torch.log`` of summed probabilities
    without an epsilon). Loss (eq. 3.4) with level and class weights:
    L = Σ_l w_l · NLL(log p_l, τ_l), each a (class-weighted) batch mean; a weight of 0 drops
    a level, which expresses the level-term ablation of thesis Table 4.10. Class weights work
    here (the published code crashed with them).
    """

    def __init__(self, in_dim: int, hierarchy: Hierarchy,
                 prediction: Literal["marginal", "leaf_path"] = "marginal") -> None:
        super().__init__(hierarchy)
        hierarchy.require_leveled("the marginalization classifier")
        self.prediction = prediction
        self.fc = nn.Linear(in_dim, hierarchy.level_sizes[-1])
        for lvl in range(1, hierarchy.num_levels):
            self.register_buffer(f"parent_{lvl}", torch.from_numpy(hierarchy.parent_local(lvl)),
                                 persistent=False)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(features)  # [B, n_L] leaf logits

    def level_log_probs(self, outputs: Tensor) -> list[Tensor]:
        """``log p_l`` for every level, top level first."""
        h = self.hierarchy
        logp = [outputs.float().log_softmax(-1)]
        for lvl in range(h.num_levels - 1, 0, -1):
            parent = getattr(self, f"parent_{lvl}")
            logp.insert(0, segment_logsumexp(logp[0], parent, h.level_sizes[lvl - 1]))
        return logp

    def loss(self, outputs: Tensor, level_labels: Tensor, *,
             level_weights: Sequence[float] | None = None,
             class_weights: Sequence[Tensor] | None = None) -> Tensor:
        w = level_weights_for(self.hierarchy, level_weights)
        return weighted_level_nll(self.level_log_probs(outputs), level_labels, w, class_weights)

    def level_probs(self, outputs: Tensor) -> list[Tensor]:
        return [lp.exp() for lp in self.level_log_probs(outputs)]

    def predict_levels(self, outputs: Tensor) -> Tensor:
        if self.prediction == "leaf_path":
            return leaf_path_prediction(outputs.float(), self.hierarchy)
        return super().predict_levels(outputs)


register_head_family("marginalization",
                     lambda d, h, p: MarginalizationHead(d, h, p.prediction),
                     params=MarginalizationParams,
                     description="leaf softmax, upper levels by summing children (thesis §3.3)")
