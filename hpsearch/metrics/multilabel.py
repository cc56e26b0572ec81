"""Decision thresholds and diagnostics of multi-label classifiers (Dhall thesis §3.1, §4.1).

The hierarchy-agnostic classifier scores every label independently; a label is predicted when
its score reaches a threshold tuned on the validation split:

- PCDB (per-class decision boundary, thesis §3.1.1): one threshold per label, the one that
  maximises that label's F1 on validation;
- OFADB (one-fits-all decision boundary, §3.1.2): one threshold for all labels, the one that
  maximises the micro-F1 of the whole (flattened) validation score matrix.

Both are a precision-recall sweep: every distinct score is a candidate threshold
(prediction = ``score >= threshold``), exactly the candidates of
``sklearn.metrics.precision_recall_curve``. The published code computed
F1 = 2PR / (P + R + 1e-6); here F1 = 2TP / (2TP + FP + FN), the same value without the epsilon.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_pair(scores: Tensor, targets: Tensor, what: str) -> None:
    if scores.shape != targets.shape:
        raise ValueError(f"{what}: scores {tuple(scores.shape)} and targets "
                         f"{tuple(targets.shape)} must have the same shape")
    if scores.numel() == 0:
        raise ValueError(f"{what}: got no scores; thresholds need at least one sample")
    if not torch.isfinite(scores).all():
        raise ValueError(f"{what}: scores contain NaN/inf; the model diverged")


def _sweep(scores: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Best-F1 threshold of every column of ``scores [N, C]`` (vectorised over columns)."""
    n = scores.shape[0]
    s, order = scores.float().sort(dim=0, descending=True, stable=True)  # [N, C]
    t = targets.gather(0, order).double()
    tp = t.cumsum(0)  # TP when predicting the top k+1 scores
    npred = torch.arange(1, n + 1, dtype=torch.float64, device=scores.device)[:, None]
    npos = t.sum(0, keepdim=True)  # [1, C]
    f1 = 2 * tp / (npred + npos).clamp_min(1)  # 2TP / (2TP + FP + FN)
    # A threshold keeps whole groups of tied scores: only the last row of a tie is a candidate.
    last_of_tie = torch.ones_like(s, dtype=torch.bool)
    last_of_tie[:-1] = s[:-1] != s[1:]
    f1 = torch.where(last_of_tie, f1, torch.full_like(f1, -1.0))
    best = f1.argmax(0, keepdim=True)  # first maximum = the highest threshold
    thr = s.gather(0, best)[0]
    best_f1 = f1.gather(0, best)[0]
    no_pos = npos[0] == 0
    thr = torch.where(no_pos, torch.full_like(thr, float("inf")), thr)
    best_f1 = torch.where(no_pos, torch.zeros_like(best_f1), best_f1)
    return thr, best_f1.float()


def best_f1_threshold(scores: Tensor, targets: Tensor) -> tuple[float, float]:
    """Threshold θ maximising F1 of the rule ``score >= θ`` over one set of scores.

    F1(θ) = 2·TP(θ) / (2·TP(θ) + FP(θ) + FN(θ)); candidates are the distinct scores. Among equal
    F1 values the highest θ (fewest positive predictions) wins. With no positive target the F1
    is 0 for every θ and θ = +inf (never predict the label) is returned.

    Args:
        scores: ``[N]`` real scores (logits or probabilities; any monotone scale).
        targets: ``[N]`` 0/1 or bool truth.

    Returns:
        ``(threshold, f1)``.
    """
    scores, targets = scores.reshape(-1), targets.reshape(-1)
    _check_pair(scores, targets, "best_f1_threshold")
    thr, f1 = _sweep(scores[:, None], targets[:, None])
    return float(thr[0]), float(f1[0])


def per_class_thresholds(scores: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """PCDB (thesis §3.1.1): :func:`best_f1_threshold` of every column, vectorised.

    Args:
        scores: ``[N, C]`` validation scores.
        targets: ``[N, C]`` multi-hot truth.

    Returns:
        ``(thresholds [C], f1 [C])``; classes without positives get ``(+inf, 0)``.
    """
    _check_pair(scores, targets, "per_class_thresholds")
    if scores.dim() != 2:
        raise ValueError("per_class_thresholds: expected [N, C] scores, got "
                         f"{tuple(scores.shape)}")
    return _sweep(scores, targets)


def one_fits_all_threshold(scores: Tensor, targets: Tensor) -> tuple[float, float]:
    """OFADB (thesis §3.1.2): one threshold over the flattened ``[N, C]`` matrix.

    The F1 of the flattened matrix is the micro-F1 over all labels, which is what the thesis
    maximises. Returns ``(threshold, micro_f1)``.
    """
    _check_pair(scores, targets, "one_fits_all_threshold")
    return best_f1_threshold(scores.reshape(-1), targets.reshape(-1))


def labels_per_image_stats(pred_multihot: Tensor) -> dict[str, float]:
    """Min, max, mean and (population) standard deviation of the number of predicted labels
    per image; a hierarchy with ``L`` levels has exactly ``L`` true labels per image (thesis
    Table 4.6 reports these for the multi-label baseline)."""
    if pred_multihot.dim() != 2 or pred_multihot.shape[0] == 0:
        raise ValueError("labels_per_image_stats: expected a non-empty [N, C] prediction, got "
                         f"{tuple(pred_multihot.shape)}")
    n = pred_multihot.bool().sum(1).double()
    return {"min": float(n.min()), "max": float(n.max()), "mean": float(n.mean()),
            "std": float(n.std(unbiased=False))}


def tpr_tnr(pred: Tensor, true: Tensor) -> tuple[float, float]:
    """Micro true-positive rate TP / (TP + FN) and true-negative rate TN / (TN + FP) over all
    ``[N, C]`` entries; a rate with an empty denominator is 0."""
    if pred.shape != true.shape:
        raise ValueError(f"tpr_tnr: pred {tuple(pred.shape)} and true {tuple(true.shape)} "
                         "must have the same shape")
    p, t = pred.bool(), true.bool()
    tp, fn = int((p & t).sum()), int((~p & t).sum())
    tn, fp = int((~p & ~t).sum()), int((p & ~t).sum())
    return (tp / (tp + fn) if tp + fn else 0.0, tn / (tn + fp) if tn + fp else 0.0)
