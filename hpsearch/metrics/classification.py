"""Micro/macro precision, recall and F1, overall and per level (Dhall thesis §4.1).

Predictions and targets are multi-hot over all labels of the hierarchy (global index order).
For a per-level argmax classifier every image has exactly one predicted and one true label per
level, so micro P = R = F1 = accuracy over (image, level) pairs.

Macro averages run over the labels that occur in the truth or in the predictions; a label that
is neither true nor predicted anywhere is left out (the published code counted it as F1 = 1,
which inflates macro scores on small splits). The published code's convention is offered beside
it under its own names, ``macro_{precision,recall,f1}_thesis`` (:func:`macro_prf_thesis`), for
tables that sit beside the thesis' own.
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


def macro_prf_thesis(pred: Tensor, true: Tensor) -> dict[str, float]:
    """Macro P/R/F1 of multi-hot ``pred`` vs ``true`` (bool ``[N, C]``) as the thesis' published
    code scores them: the mean over **all** C labels, a label with TP = FP = FN = 0 scoring 1.

    Per label c (counts over the N images):

    - TP_c = FP_c = FN_c = 0 (neither true nor predicted): P_c = R_c = F1_c = 1;
    - TP_c = 0 otherwise: P_c = R_c = F1_c = 0;
    - else P_c = TP_c / (TP_c + FP_c), R_c = TP_c / (TP_c + FN_c), F1_c = 2 P_c R_c / (P_c + R_c).

    macro_X_thesis = (1/C) Σ_c X_c. With A the labels where TP + FP + FN > 0 this is
    (Σ_{c∈A} X_c + (C − |A|)) / C, whereas :func:`prf_from_multihot`'s ``macro_X`` is
    Σ_{c∈A} X_c / |A|: the two agree when every label is true or predicted somewhere.

    Source: ankitdhall/learning_embeddings (branch Adam1x) ``network/evaluation.py``
    ``MetricsMultiLevel.calculate_basic_metrics`` (evaluation.py:505-552), the per-level CNN
    classifiers' metrics; ``../shared/reference/implementations.md`` §1: "a label with
    tp=fp=fn=0 (absent and never predicted) counts **P=R=F1=1** in the macro average". Its
    overall row averages over all labels of all levels at once (``list(range(0, n_classes))``),
    not over the level means, and each level row over the labels of that level; so does
    :func:`level_metrics`. (The multi-label model's ``Metrics`` class uses sklearn's per-label
    scores with the default ``zero_division``, which score such a label 0, and the joint
    embedding divides the per-level sum by N_l + 1, oe.py:1894; neither is this convention.)
    """
    pred, true = pred.bool(), true.bool()
    tp = (pred & true).sum(0).double()
    fp = (pred & ~true).sum(0).double()
    fn = (~pred & true).sum(0).double()
    idle = (tp + fp + fn) == 0
    one = torch.ones_like(tp)
    p = torch.where(idle, one, _safe_div(tp, tp + fp))
    r = torch.where(idle, one, _safe_div(tp, tp + fn))
    f = torch.where(idle, one, _safe_div(2 * tp, 2 * tp + fp + fn))
    n = max(int(tp.numel()), 1)
    return {"macro_precision_thesis": float(p.sum() / n),
            "macro_recall_thesis": float(r.sum() / n), "macro_f1_thesis": float(f.sum() / n)}


def level_metrics(pred: Tensor, true: Tensor, offsets: Sequence[int],
                  sizes: Sequence[int], *, thesis_macro: bool = False) -> dict[str, float]:
    """:func:`prf_from_multihot` overall plus per level, suffixed ``_level_<i>``. With
    ``thesis_macro``, also :func:`macro_prf_thesis` overall (all labels) and per level (the
    level's labels), for tasks whose published counterpart scores macro that way (the CNN
    classifiers)."""
    out = prf_from_multihot(pred, true)
    if thesis_macro:
        out.update(macro_prf_thesis(pred, true))
    for lvl, (o, s) in enumerate(zip(offsets, sizes, strict=True)):
        part = prf_from_multihot(pred[:, o:o + s], true[:, o:o + s])
        if thesis_macro:
            part.update(macro_prf_thesis(pred[:, o:o + s], true[:, o:o + s]))
        for k, v in part.items():
            out[f"{k}_level_{lvl}"] = v
    return out


def levels_to_multihot(level_labels: Tensor, offsets: Sequence[int], num_nodes: int) -> Tensor:
    """``[N, L]`` local indices -> bool ``[N, num_nodes]`` (one true label per level)."""
    out = torch.zeros(level_labels.shape[0], num_nodes, dtype=torch.bool,
                      device=level_labels.device)
    out.scatter_(1, level_labels + torch.as_tensor(offsets, device=level_labels.device), True)
    return out
