"""Hedged predictions: trade label specificity for accuracy (beyond the thesis, §7.1).

Dhall's thesis (§7.1, "Label accuracy vs. label specificity trade-off") proposes, as future
work, predicting a more abstract but still correct label when the classifier is unsure, in the
spirit of Deng et al. 2012, "Hedging your bets". This module implements the simplest such
rule on top of any classifier's per-level probabilities: follow a predicted root-to-leaf path
and stop before the first level whose confidence is below a threshold τ. Sweeping τ traces an
accuracy-specificity curve (τ = 0: always predict all L levels; τ > 1: predict nothing).

These are pure functions of ``level_probs`` (one ``[B, n_l]`` tensor per level, as returned by
``Head.level_probs``). For the marginalization and hierarchical-softmax heads the level
probabilities are exact marginals, so along a consistent path confidence can only fall with
depth and "stop at the first level below τ" equals "the deepest level whose probability is
>= τ". For heads whose scores are not marginals (per-level: independent softmaxes; masked:
conditionals given the predicted parent) use ``cumulative=True``, which scores level l by the
product of the probabilities along the path down to l (for the masked head, its estimate of
the joint probability of that prefix).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hpsearch.hierarchy import Hierarchy
from hpsearch.models.masked import child_masks, greedy_top_down


def predicted_path(level_probs: Sequence[Tensor], hierarchy: Hierarchy | None = None) -> Tensor:
    """``[B, L]`` path to hedge along.

    With ``hierarchy`` (a leveled tree): the consistent top-down greedy path, argmax on level 0
    and then argmax among the children of the node chosen above. Without it: the independent
    per-level argmax of ``level_probs`` (the marginal argmax, which may be inconsistent).
    """
    if hierarchy is None:
        return torch.stack([p.argmax(-1) for p in level_probs], dim=1)
    if list(hierarchy.level_sizes) != [p.shape[-1] for p in level_probs]:
        raise ValueError(f"level_probs have sizes {[p.shape[-1] for p in level_probs]} but the "
                         f"hierarchy has levels {list(hierarchy.level_sizes)}")
    return greedy_top_down(list(level_probs), child_masks(hierarchy))[0]


def _confidence(level_probs: Sequence[Tensor], path: Tensor, cumulative: bool) -> Tensor:
    conf = torch.stack([p.gather(1, path[:, i : i + 1])[:, 0]
                        for i, p in enumerate(level_probs)], dim=1).double()  # [B, L]
    return conf.cumprod(1) if cumulative else conf


def hedged_paths(level_probs: Sequence[Tensor], tau: float, *,
                 hierarchy: Hierarchy | None = None,
                 cumulative: bool = False) -> tuple[Tensor, Tensor]:
    """Truncate the predicted path at the first level whose confidence is below ``tau``.

    depth_b = max{d : conf_b[l] >= τ for all l < d}, where conf_b[l] is the probability of the
    path's level-l label (or the product down to l with ``cumulative=True``).

    Args:
        level_probs: one ``[B, n_l]`` probability tensor per level, top level first.
        tau: confidence threshold.
        hierarchy: pick the consistent top-down path (see :func:`predicted_path`); without it
            the per-level argmax is used.
        cumulative: score a level by the product of probabilities along the path.

    Returns:
        ``(depth [B], path [B, L])``: ``depth`` is the number of predicted levels (0 = nothing
        confident, i.e. only the root); ``path`` holds the predicted local labels with ``-1``
        on the levels below ``depth``.
    """
    path = predicted_path(level_probs, hierarchy)
    return _truncate(_confidence(level_probs, path, cumulative), path, tau)


def _truncate(conf: Tensor, path: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    keep = (conf >= tau).long().cumprod(1)  # [B, L]: 1 on the confident prefix
    depth = keep.sum(1)
    return depth, torch.where(keep.bool(), path, torch.full_like(path, -1))


def accuracy_specificity_curve(level_probs: Sequence[Tensor], level_labels: Tensor,
                               taus: Sequence[float], *, hierarchy: Hierarchy | None = None,
                               cumulative: bool = False) -> list[dict[str, float]]:
    """Accuracy and specificity of hedged predictions for every τ.

    accuracy(τ) = fraction of images whose hedged prediction is correct on every level it
    returns (depth 0 counts as correct: the root is always right); mean_depth(τ) = mean number
    of predicted levels; specificity(τ) = mean_depth / L.

    Args:
        level_probs: one ``[B, n_l]`` tensor per level.
        level_labels: ``[B, L]`` true local labels.
        taus: thresholds to evaluate.
        hierarchy, cumulative: as in :func:`hedged_paths`.

    Returns:
        one ``{"tau", "accuracy", "mean_depth", "specificity"}`` dict per τ, in input order.
    """
    n_levels = len(level_probs)
    if level_labels.dim() != 2 or level_labels.shape[1] != n_levels:
        raise ValueError(f"level_labels {tuple(level_labels.shape)} must be [B, {n_levels}]")
    path = predicted_path(level_probs, hierarchy)
    conf = _confidence(level_probs, path, cumulative)
    # number of leading levels predicted correctly
    correct_prefix = (path == level_labels.to(path.device)).long().cumprod(1).sum(1)
    out = []
    for tau in taus:
        depth, _ = _truncate(conf, path, tau)
        mean_depth = float(depth.double().mean())
        out.append({"tau": float(tau),
                    "accuracy": float((correct_prefix >= depth).double().mean()),
                    "mean_depth": mean_depth, "specificity": mean_depth / n_levels})
    return out
