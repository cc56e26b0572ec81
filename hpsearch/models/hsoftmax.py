"""Hierarchical softmax classifier (Dhall thesis §3.5, eq. 3.9-3.12)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from hpsearch.hierarchy import Hierarchy
from hpsearch.models.base import (
    FamilyParams,
    Head,
    level_weights_for,
    register_head_family,
    split_levels,
    weighted_level_nll,
)
from hpsearch.models.marginalization import leaf_path_prediction, segment_logsumexp


def sibling_groups(h: Hierarchy) -> tuple[np.ndarray, int]:
    """Sibling-group id of every node of a leveled tree, ``[num_nodes]`` int64, and the number
    of groups: group 0 holds the level-0 nodes (children of the virtual root); every internal
    node p gets its own group for its children, numbered in global order of p."""
    h.require_leveled("sibling groups")
    internal = [p for p in range(h.num_nodes) if h.children[p]]
    gid = {p: i + 1 for i, p in enumerate(internal)}
    groups = np.array([gid[ps[0]] if ps else 0 for ps in h.parents], dtype=np.int64)
    return groups, len(internal) + 1


class HSoftmaxParams(FamilyParams):
    # "marginal": argmax of every level's marginal, as the published code evaluated (a path
    # can be inconsistent); "leaf_path": root path of the most probable leaf (consistent).
    prediction: Literal["marginal", "leaf_path"] = "marginal"


class HSoftmaxHead(Head):
    """A softmax per sibling group; the joint is the product of conditionals along the path.

    p(v | parent(v)) = softmax over the siblings of v (eq. 3.9), one group per internal node
    plus one for the top level. The published code used one ``Linear`` per group
    (1 + 6 + 21 + 135 = 163 on ETHEC); here one ``Linear(F, num_nodes)`` produces all logits,
    which is the same parameterisation, and a segment log-softmax over the group index
    normalises every group at once. log p(v) = log p(v | parent) + log p(parent) (eq. 3.10)
    accumulates level by level; in a tree these joints are exact per-level marginals, so each
    level's probabilities sum to 1 and a parent's equals the sum of its children's.

    Loss: with ``level_weights=None`` (default) only the leaf term NLL(log p_L, τ_L) of
    eq. 3.11-3.12, as in the thesis and code. Given level weights, the loss is
    Σ_l w_l · NLL(log p_l, τ_l) over the per-level marginals (an extension; weights
    ``[0, ..., 0, 1]`` reproduce the thesis). Class weights of level l weight level l's term.
    """

    def __init__(self, in_dim: int, hierarchy: Hierarchy,
                 prediction: Literal["marginal", "leaf_path"] = "marginal") -> None:
        super().__init__(hierarchy)
        hierarchy.require_leveled("the hierarchical softmax")
        self.prediction = prediction
        self.fc = nn.Linear(in_dim, hierarchy.num_nodes)
        groups, self.num_groups = sibling_groups(hierarchy)
        self.register_buffer("groups", torch.from_numpy(groups), persistent=False)
        for lvl in range(1, hierarchy.num_levels):
            self.register_buffer(f"parent_{lvl}", torch.from_numpy(hierarchy.parent_local(lvl)),
                                 persistent=False)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(features)  # [B, num_nodes] logits, sibling groups normalised later

    def conditional_log_probs(self, outputs: Tensor) -> Tensor:
        """``[B, num_nodes]`` log p(v | parent(v)) (log p(v) on level 0)."""
        x = outputs.float()
        lse = segment_logsumexp(x, self.groups, self.num_groups)  # [B, G]
        return x - lse.gather(1, self.groups.expand(x.shape[0], -1))

    def level_log_probs(self, outputs: Tensor) -> list[Tensor]:
        """Joint (= marginal) log-probabilities per level, top level first."""
        cond = split_levels(self.conditional_log_probs(outputs), self.hierarchy)
        joint = [cond[0]]
        for lvl in range(1, self.hierarchy.num_levels):
            joint.append(cond[lvl] + joint[-1][:, getattr(self, f"parent_{lvl}")])
        return joint

    def loss(self, outputs: Tensor, level_labels: Tensor, *,
             level_weights: Sequence[float] | None = None,
             class_weights: Sequence[Tensor] | None = None) -> Tensor:
        h = self.hierarchy
        if level_weights is None:
            w = [0.0] * (h.num_levels - 1) + [1.0]
        else:
            w = level_weights_for(h, level_weights)
        return weighted_level_nll(self.level_log_probs(outputs), level_labels, w, class_weights)

    def level_probs(self, outputs: Tensor) -> list[Tensor]:
        return [lp.exp() for lp in self.level_log_probs(outputs)]

    def predict_levels(self, outputs: Tensor) -> Tensor:
        if self.prediction == "leaf_path":
            return leaf_path_prediction(self.level_log_probs(outputs)[-1], self.hierarchy)
        return super().predict_levels(outputs)


register_head_family("hsoftmax", lambda d, h, p: HSoftmaxHead(d, h, p.prediction),
                     params=HSoftmaxParams,
                     description="hierarchical softmax: one softmax per sibling group, joint "
                                 "along the path (thesis §3.5)")
