"""Per-level classifier (Dhall thesis §3.2, eq. 3.2-3.3)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from hpsearch.hierarchy import Hierarchy
from hpsearch.models.base import (
    Head,
    level_weights_for,
    register_head_family,
    split_levels,
    weighted_level_nll,
)


class PerLevelHead(Head):
    """One linear layer to all labels, a softmax per level block.

    Loss (eq. 3.3): L = Σ_l w_l · CE(softmax(z_l), y_l), averaged over the batch, with optional
    per-label class weights inside each level's cross-entropy. Prediction: argmax per level,
    independently (so a predicted path need not be consistent).
    """

    def __init__(self, in_dim: int, hierarchy: Hierarchy) -> None:
        super().__init__(hierarchy)
        hierarchy.require_leveled("the per-level classifier")
        self.fc = nn.Linear(in_dim, hierarchy.num_nodes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(features)  # [B, sum n_l]

    def loss(self, outputs: Tensor, level_labels: Tensor, *,
             level_weights: Sequence[float] | None = None,
             class_weights: Sequence[Tensor] | None = None) -> Tensor:
        w = level_weights_for(self.hierarchy, level_weights)
        logp = [z.float().log_softmax(-1) for z in split_levels(outputs, self.hierarchy)]
        return weighted_level_nll(logp, level_labels, w, class_weights)

    def level_probs(self, outputs: Tensor) -> list[Tensor]:
        return [z.float().softmax(-1) for z in split_levels(outputs, self.hierarchy)]


register_head_family("per_level", lambda d, h, p: PerLevelHead(d, h),
                     description="per-level softmax classifier (thesis §3.2)")
