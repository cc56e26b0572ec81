"""Hedged predictions and the accuracy-specificity curve, by hand.

Tree: level 0 {a, b}; level 1 {a1, a2, b1}; level 2 {a1x, a1y, a2x, b1x, b1y}.
"""

from __future__ import annotations

import pytest
import torch

from hpsearch.hierarchy import Hierarchy
from hpsearch.models.hedging import accuracy_specificity_curve, hedged_paths, predicted_path

H = Hierarchy.from_level_labels([("a", "a1", "a1x"), ("a", "a1", "a1y"), ("a", "a2", "a2x"),
                                 ("b", "b1", "b1x"), ("b", "b1", "b1y")])
# sample 0: confident path (a, a1, a1x), conf .9 .8 .7
# sample 1: marginal argmax (b, a1, b1y) is inconsistent; greedy path (b, b1, b1y), .7 .4 .6
# sample 2: greedy path (a, a2, a2x), conf .55 .5 .6
PROBS = [
    torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.55, 0.45]]),
    torch.tensor([[0.8, 0.1, 0.1], [0.5, 0.1, 0.4], [0.2, 0.5, 0.3]]),
    torch.tensor([[0.7, 0.1, 0.05, 0.05, 0.1], [0.05, 0.05, 0.1, 0.2, 0.6],
                  [0.1, 0.1, 0.6, 0.1, 0.1]]),
]
LABELS = torch.tensor([[0, 0, 1], [1, 2, 3], [1, 2, 3]])  # correct prefixes: 2, 2, 0


def test_paths():
    assert predicted_path(PROBS).tolist() == [[0, 0, 0], [1, 0, 4], [0, 1, 2]]
    assert predicted_path(PROBS, H).tolist() == [[0, 0, 0], [1, 2, 4], [0, 1, 2]]


def test_hedged_paths_stop_at_first_unconfident_level():
    depth, path = hedged_paths(PROBS, 0.5, hierarchy=H)
    assert depth.tolist() == [3, 1, 3]  # sample 1 stops at .4 although level 2 has .6
    assert path.tolist() == [[0, 0, 0], [1, -1, -1], [0, 1, 2]]
    depth, path = hedged_paths(PROBS, 0.6, hierarchy=H)
    assert depth.tolist() == [3, 1, 0]
    assert path[2].tolist() == [-1, -1, -1]
    # cumulative: .9 .72 .504 / .7 .28 / .55 -> at .6 sample 0 keeps 2 levels
    depth, _ = hedged_paths(PROBS, 0.6, hierarchy=H, cumulative=True)
    assert depth.tolist() == [2, 1, 0]
    # without the hierarchy sample 1 follows the marginal argmax a1 (.5)
    depth, path = hedged_paths(PROBS, 0.5)
    assert depth.tolist() == [3, 3, 3] and path[1].tolist() == [1, 0, 4]


def test_accuracy_specificity_curve():
    curve = accuracy_specificity_curve(PROBS, LABELS, [0.0, 0.5, 0.6, 0.95], hierarchy=H)
    acc = [c["accuracy"] for c in curve]
    depth = [c["mean_depth"] for c in curve]
    assert acc == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert depth == pytest.approx([3.0, 7 / 3, 4 / 3, 0.0])
    assert [c["specificity"] for c in curve] == pytest.approx([1.0, 7 / 9, 4 / 9, 0.0])
    assert [c["tau"] for c in curve] == [0.0, 0.5, 0.6, 0.95]


def test_curve_input_errors():
    with pytest.raises(ValueError, match="must be"):
        accuracy_specificity_curve(PROBS, LABELS[:, :2], [0.5])
    with pytest.raises(ValueError, match="hierarchy has levels"):
        predicted_path(PROBS[:2], H)
