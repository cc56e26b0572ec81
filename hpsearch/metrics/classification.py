"""Micro/macro precision, recall and F1, overall and per level (Dhall thesis §4.1).

Predictions and targets are multi-hot over all labels of the hierarchy (global index order).
For a per-level argmax classifier every image has exactly one predicted and one true label per
level, so micro P = R = F1 = accuracy over (image, level) pairs.

Macro averages run over the labels that occur in the truth or in the predictions; a label that
is neither true nor predicted anywhere is left out (the published code counted it as F1 = 1,
which inflates macro scores on small splits).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _safe_div(a: Tensor, b: Tensor) -> Tensor:
    return torch.where(b > 0, a / b.clamp_min(1e-12), torch.zeros_like(a))


def prf_from_multihot(pred: Tensor, true: Tensor) -> dict[str, float]:
    """Micro and macro P/R/F1 of multi-hot ``pred`` vs ``true`` (bool ``[N, C]``).

    micro: P = ΣTP / (ΣTP + ΣFP), R = ΣTP / (ΣTP + ΣFN), F1 = 2PR / (P + R).
    macro: unweighted mean of the per-label P, R, F1 over labels with TP + FP + FN > 0.
    """
    pred, true = pred.bool(), true.bool()
    tp = (pred & true).sum(0).double()
    fp = (pred & ~true).sum(0).double()
    fn = (~pred & true).sum(0).double()
    TP, FP, FN = tp.sum(), fp.sum(), fn.sum()
    mp, mr = _safe_div(TP, TP + FP), _safe_div(TP, TP + FN)
    mf = _safe_div(2 * mp * mr, mp + mr)
    p, r = _safe_div(tp, tp + fp), _safe_div(tp, tp + fn)
    f = _safe_div(2 * tp, 2 * tp + fp + fn)
    active = (tp + fp + fn) > 0
    n = active.sum().clamp_min(1)
    return {
        "micro_precision": float(mp), "micro_recall": float(mr), "micro_f1": float(mf),
        "macro_precision": float(p[active].sum() / n), "macro_recall": float(r[active].sum() / n),
        "macro_f1": float(f[active].sum() / n),
    }


def level_metrics(pred: Tensor, true: Tensor, offsets: Sequence[int],
                  sizes: Sequence[int]) -> dict[str, float]:
    """:func:`prf_from_multihot` overall plus per level, suffixed ``_level_<i>``."""
    out = prf_from_multihot(pred, true)
    for lvl, (o, s) in enumerate(zip(offsets, sizes, strict=True)):
        for k, v in prf_from_multihot(pred[:, o:o + s], true[:, o:o + s]).items():
            out[f"{k}_level_{lvl}"] = v
    return out


def levels_to_multihot(level_labels: Tensor, offsets: Sequence[int], num_nodes: int) -> Tensor:
    """``[N, L]`` local indices -> bool ``[N, num_nodes]`` (one true label per level)."""
    out = torch.zeros(level_labels.shape[0], num_nodes, dtype=torch.bool,
                      device=level_labels.device)
    out.scatter_(1, level_labels + torch.as_tensor(offsets, device=level_labels.device), True)
    return out
