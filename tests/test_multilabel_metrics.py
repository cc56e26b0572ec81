"""Hand-checked threshold selection (PCDB / OFADB) and multi-label diagnostics."""

from __future__ import annotations

import math

import pytest
import torch

from hpsearch.metrics.multilabel import (
    best_f1_threshold,
    labels_per_image_stats,
    one_fits_all_threshold,
    per_class_thresholds,
    tpr_tnr,
)


def test_best_f1_threshold_by_hand():
    s = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    y = torch.tensor([1, 0, 1, 0, 0])
    # F1 at 0.9: 2/3, 0.8: 1/2, 0.7: 4/5, 0.6: 2/3, 0.5: 4/7
    thr, f1 = best_f1_threshold(s, y)
    assert thr == pytest.approx(0.7) and f1 == pytest.approx(0.8)


def test_best_f1_threshold_keeps_ties_together():
    s = torch.tensor([0.5, 0.2, 0.5])
    y = torch.tensor([1, 1, 0])
    # 0.5 predicts both tied rows: TP 1, FP 1 -> 1/2; 0.2: TP 2, FP 1 -> 4/5
    thr, f1 = best_f1_threshold(s, y)
    assert thr == pytest.approx(0.2) and f1 == pytest.approx(0.8)


def test_best_f1_threshold_prefers_highest_on_equal_f1_and_handles_no_positive():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])
    thr, f1 = best_f1_threshold(s, torch.tensor([1, 0, 0, 1]))
    assert thr == 3.0 and f1 == pytest.approx(2 / 3)  # 3.0 and 0.0 both give 2/3
    thr, f1 = best_f1_threshold(torch.tensor([3.0, 2.0]), torch.tensor([0, 0]))
    assert thr == math.inf and f1 == 0.0


def test_per_class_matches_columnwise_and_brute_force():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 6, (30, 7), generator=g).float() / 5  # many ties
    y = torch.rand(30, 7, generator=g) < 0.3
    y[:, 6] = False
    thr, f1 = per_class_thresholds(s, y)
    for c in range(7):
        t1, f = best_f1_threshold(s[:, c], y[:, c])
        assert thr[c].item() == t1 and f1[c].item() == pytest.approx(f)
        best = 0.0
        for cand in s[:, c].unique():
            p = s[:, c] >= cand
            tp = (p & y[:, c]).sum().item()
            denom = p.sum().item() + y[:, c].sum().item()
            best = max(best, 2 * tp / denom if denom else 0.0)
        assert f == pytest.approx(best, abs=1e-6)
    assert thr[6] == math.inf


def test_one_fits_all_is_flattened_sweep():
    s = torch.tensor([[0.9, 0.1], [0.4, 0.8]])
    y = torch.tensor([[1, 0], [0, 1]])
    # flattened: .9(1) .8(1) .4(0) .1(0): cut at .8 -> F1 = 1
    assert one_fits_all_threshold(s, y) == (pytest.approx(0.8), pytest.approx(1.0))


def test_threshold_input_errors():
    with pytest.raises(ValueError, match="same shape"):
        per_class_thresholds(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="NaN"):
        best_f1_threshold(torch.tensor([0.0, float("nan")]), torch.tensor([0, 1]))


def test_labels_per_image_stats():
    pred = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    st = labels_per_image_stats(pred)  # counts 2, 4, 0
    assert st["min"] == 0 and st["max"] == 4 and st["mean"] == pytest.approx(2.0)
    assert st["std"] == pytest.approx(math.sqrt(8 / 3))  # population std


def test_tpr_tnr():
    pred = torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=torch.bool)
    true = torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    # TP 2 (0,0),(1,2); FN 1 (0,1); TN 2 (1,0),(1,1); FP 1 (0,2)
    assert tpr_tnr(pred, true) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert tpr_tnr(torch.zeros(1, 2, dtype=torch.bool), torch.zeros(1, 2, dtype=torch.bool)) \
        == (0.0, 1.0)
