"""The thesis' macro convention (``macro_*_thesis``) beside today's (``macro_*``), issue 14.

Today's macro skips labels with TP + FP + FN = 0; the published code (LE ``MetricsMultiLevel``)
averages over all labels and scores such a label P = R = F1 = 1.
"""

from __future__ import annotations

import pytest
import torch

from hpsearch.errors import HpsearchError
from hpsearch.metrics.classification import level_metrics, macro_prf_thesis, prf_from_multihot
from hpsearch.report import thesis_table
from hpsearch.tasks import RunContext, TrialConfig, build_experiment, task_of

from .conftest import TINY_DATA

# 3 images x 4 labels; level 0 = label 0, level 1 = labels 1, 2, 3.
TRUE = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
PRED = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 1]], dtype=torch.bool)
# per label (TP, FP, FN) -> P, R, F1:
#   label 0: (1, 0, 1) -> P = 1/1 = 1,   R = 1/2 = 0.5, F1 = 2*1/(2*1+0+1) = 2/3
#   label 1: (1, 1, 0) -> P = 1/2 = 0.5, R = 1/1 = 1,   F1 = 2/(2+1+0)     = 2/3
#   label 2: (0, 0, 0) -> neither true nor predicted: left out today; thesis P = R = F1 = 1
#   label 3: (0, 1, 0) -> P = R = F1 = 0
OFFSETS, SIZES = [0, 1], [1, 3]


def close(got: dict[str, float], want: dict[str, float]) -> None:
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k


def test_overall_hand_computed_both_conventions():
    # today: labels 0, 1, 3 -> P = (1 + .5 + 0)/3 = .5, R = (.5 + 1 + 0)/3 = .5,
    #        F1 = (2/3 + 2/3 + 0)/3 = 4/9
    close(prf_from_multihot(PRED, TRUE),
          {"macro_precision": 0.5, "macro_recall": 0.5, "macro_f1": 4 / 9})
    # thesis: all 4 labels -> P = (1 + .5 + 1 + 0)/4 = .625, R = (.5 + 1 + 1 + 0)/4 = .625,
    #         F1 = (2/3 + 2/3 + 1 + 0)/4 = 7/12
    close(macro_prf_thesis(PRED, TRUE),
          {"macro_precision_thesis": 0.625, "macro_recall_thesis": 0.625,
           "macro_f1_thesis": 7 / 12})


def test_level_metrics_per_level_and_overall_over_all_labels():
    m = level_metrics(PRED, TRUE, OFFSETS, SIZES, thesis_macro=True)
    # level 0 (label 0, active): both conventions P = 1, R = .5, F1 = 2/3
    close(m, {"macro_precision_level_0": 1.0, "macro_precision_thesis_level_0": 1.0,
              "macro_recall_level_0": 0.5, "macro_recall_thesis_level_0": 0.5,
              "macro_f1_level_0": 2 / 3, "macro_f1_thesis_level_0": 2 / 3})
    # level 1 (labels 1, 2, 3): today labels 1, 3 -> P = (.5 + 0)/2 = .25, R = (1 + 0)/2 = .5,
    # F1 = (2/3 + 0)/2 = 1/3; thesis -> P = (.5 + 1 + 0)/3 = .5, R = (1 + 1 + 0)/3 = 2/3,
    # F1 = (2/3 + 1 + 0)/3 = 5/9
    close(m, {"macro_precision_level_1": 0.25, "macro_recall_level_1": 0.5,
              "macro_f1_level_1": 1 / 3, "macro_precision_thesis_level_1": 0.5,
              "macro_recall_thesis_level_1": 2 / 3, "macro_f1_thesis_level_1": 5 / 9})
    # overall thesis = mean over all 4 labels (7/12), not the mean of the level rows
    # ((2/3 + 5/9)/2 = 11/18), as the published code's overall row
    assert m["macro_f1_thesis"] == pytest.approx(7 / 12)
    assert m["macro_f1_thesis"] != pytest.approx(11 / 18)
    # today's keys and values unchanged by the option
    plain = level_metrics(PRED, TRUE, OFFSETS, SIZES)
    assert not any(k.startswith("macro_") and "_thesis" in k for k in plain)
    assert {k: m[k] for k in plain} == plain


def test_conventions_agree_when_every_label_occurs():
    g = torch.Generator().manual_seed(0)
    true = torch.rand(50, 6, generator=g) > 0.5
    pred = torch.rand(50, 6, generator=g) > 0.5
    assert ((true | pred).sum(0) > 0).all()
    a, t = prf_from_multihot(pred, true), macro_prf_thesis(pred, true)
    for k in ("precision", "recall", "f1"):
        assert t[f"macro_{k}_thesis"] == pytest.approx(a[f"macro_{k}"])


def test_thesis_table_shows_the_chosen_convention():
    m = {f"test_{k}": v
         for k, v in level_metrics(PRED, TRUE, OFFSETS, SIZES, thesis_macro=True).items()}
    default = thesis_table(m, SIZES)
    assert default.splitlines()[0].startswith("| level |")  # no caption: output as before
    assert thesis_table(m, SIZES, macro="active").endswith(default)
    assert "hpsearch convention" in thesis_table(m, SIZES, macro="active").splitlines()[0]
    thesis = thesis_table(m, SIZES, macro="thesis")
    assert "thesis convention" in thesis.splitlines()[0]
    overall = thesis.splitlines()[-1].split(" | ")
    assert overall[-1].rstrip(" |") == f"{7 / 12:.4f}"  # M-F1 column: macro_f1_thesis
    assert default.splitlines()[-1].split(" | ")[-1].rstrip(" |") == f"{4 / 9:.4f}"
    with pytest.raises(HpsearchError, match="macro='sklearn'"):
        thesis_table(m, SIZES, macro="sklearn")


def test_keys_appear_in_a_tiny_classifier_evaluation(tmp_path):
    cfg = TrialConfig.from_flat({
        "model.family": "per_level", "model.width": 8, "data.params": TINY_DATA,
        "data.image_size": 16, "optim.batch_size": 32, "optim.epochs": 1,
        "metric": "val_micro_f1"})
    val = build_experiment(cfg, RunContext()).evaluate("val")  # untrained: enough for keys
    n_levels = len(TINY_DATA["level_sizes"])
    want = {f"macro_{k}_thesis" for k in ("precision", "recall", "f1")}
    want |= {f"{k}_level_{i}" for k in set(want) for i in range(n_levels)}
    assert want <= set(val)
    assert all(0.0 <= val[k] <= 1.0 for k in want)
    assert want <= task_of(cfg).metric_names(cfg)  # announced to the search's pre-flight
    assert "macro_f1" in val and "macro_f1_level_0" in val  # today's keys still there
