"""Hierarchy-agnostic multi-label classifier (Dhall thesis §3.1, eq. 3.1; PCDB/OFADB §3.1.1-2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpsearch.hierarchy import Hierarchy
from hpsearch.metrics.multilabel import (
    labels_per_image_stats,
    one_fits_all_threshold,
    per_class_thresholds,
    tpr_tnr,
)
from hpsearch.models.base import (
    FamilyParams,
    Head,
    level_weights_for,
    register_head_family,
    split_levels,
)


def multihot_targets(level_labels: Tensor, h: Hierarchy) -> Tensor:
    """``[B, L]`` local labels -> float ``[B, num_nodes]`` multi-hot (global index order)."""
    offsets = torch.tensor(h.offsets, device=level_labels.device)
    out = torch.zeros(level_labels.shape[0], h.num_nodes, device=level_labels.device)
    return out.scatter_(1, level_labels.long() + offsets, 1.0)


class MultiLabelParams(FamilyParams):
    decision_rule: Literal["pcdb", "ofadb"] = "pcdb"  # per-class vs one global threshold


class MultiLabelHead(Head):
    """One linear layer to all ``N_total`` labels, one-vs-rest sigmoid per label.

    Loss (eq. 3.1): L = -(1/N_total) Σ_j w_j [y_j log σ(x_j) + (1 - y_j) log(1 - σ(x_j))],
    averaged over the batch (= ``MultiLabelSoftMarginLoss(weight)`` of the published code).
    ``w_j`` is the class weight of label j times the level weight of its level; both default
    to 1 (level weights are not in the thesis for this model, which ignores levels).

    Decision: label j is predicted when ``x_j >= θ_j``. The thresholds live in the buffer
    ``thresholds`` on the **logit** scale (0 = probability 0.5, the default before calibration)
    so checkpoints and exports carry them; logits avoid the ties that float32 sigmoid
    saturation creates near probability 1. :meth:`calibrate` sets them from the validation
    outputs with PCDB or OFADB. Unlike the published code (raw logits as well, thresholds from
    the *last* val pass), the experiment decides which pass's thresholds are kept: they are
    part of the model state, so restoring the best checkpoint restores its thresholds.
    """

    decision = "threshold"

    def __init__(self, in_dim: int, hierarchy: Hierarchy,
                 decision_rule: Literal["pcdb", "ofadb"] = "pcdb") -> None:
        super().__init__(hierarchy)
        self.decision_rule = decision_rule
        self.fc = nn.Linear(in_dim, hierarchy.num_nodes)
        self.register_buffer("thresholds", torch.zeros(hierarchy.num_nodes))  # logit scale

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(features)  # [B, N_total] logits

    def loss(self, outputs: Tensor, level_labels: Tensor, *,
             level_weights: Sequence[float] | None = None,
             class_weights: Sequence[Tensor] | None = None) -> Tensor:
        h = self.hierarchy
        x = outputs.float()
        target = multihot_targets(level_labels, h)
        lw = level_weights_for(h, level_weights)
        col = torch.cat([x.new_full((n,), w) for n, w in zip(h.level_sizes, lw, strict=True)])
        if class_weights is not None:
            col = col * torch.cat([c.to(x) for c in class_weights])
        return F.binary_cross_entropy_with_logits(x, target, weight=col[None, :])

    def level_probs(self, outputs: Tensor) -> list[Tensor]:
        """Sigmoid probability per label, split by level (rows do not sum to 1)."""
        return [z.float().sigmoid() for z in split_levels(outputs, self.hierarchy)]

    def predict_multihot(self, outputs: Tensor) -> Tensor:
        return outputs.float() >= self.thresholds.to(outputs.device)

    def calibrate(self, outputs: Tensor, level_labels: Tensor) -> None:
        """Set :attr:`thresholds` from validation logits (PCDB or OFADB, thesis §3.1.1-2)."""
        target = multihot_targets(level_labels, self.hierarchy)
        x = outputs.detach().float()
        if self.decision_rule == "pcdb":
            thr, _ = per_class_thresholds(x, target)
        else:
            t, _ = one_fits_all_threshold(x, target)
            thr = torch.full((self.hierarchy.num_nodes,), t)
        self.thresholds.copy_(thr.to(self.thresholds))

    def eval_metrics(self, outputs: Tensor, level_labels: Tensor) -> dict[str, float]:
        """Labels per image (min/max/mean/std) and micro TPR/TNR of the thresholded output."""
        pred = self.predict_multihot(outputs)
        stats = labels_per_image_stats(pred)
        tpr, tnr = tpr_tnr(pred, multihot_targets(level_labels, self.hierarchy).bool())
        out = {f"labels_per_image_{k}": v for k, v in stats.items()}
        out.update(tpr=tpr, tnr=tnr)
        return out


register_head_family("multilabel", lambda d, h, p: MultiLabelHead(d, h, p.decision_rule),
                     params=MultiLabelParams,
                     description="hierarchy-agnostic multi-label sigmoid classifier, PCDB/OFADB "
                                 "thresholds (thesis §3.1)")
