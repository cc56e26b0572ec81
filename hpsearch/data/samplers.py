"""Imbalance handling from label counts (thesis §4.4), computed from metadata only."""

from __future__ import annotations

import numpy as np

from hpsearch.errors import ConfigError
from hpsearch.hierarchy import Hierarchy


def label_counts(level_labels: np.ndarray, hierarchy: Hierarchy) -> list[np.ndarray]:
    """Training-set count of every label of every level, ``[n_l]`` per level."""
    return [
        np.bincount(level_labels[:, lvl], minlength=hierarchy.level_sizes[lvl])
        for lvl in range(hierarchy.num_levels)
    ]


def resample_weights(level_labels: np.ndarray, hierarchy: Hierarchy, mode: str,
                     level: int = -1) -> np.ndarray | None:
    """Per-sample weights ∝ 1/count (``inverse``) or 1/sqrt(count) (``inverse_sqrt``) of the
    sample's label at ``level``; ``None`` for ``mode == "none"``.

    The published code did the same on the leaf label only and loaded every image to count;
    here the counts come from the label array.
    """
    if mode == "none":
        return None
    lvl = level % hierarchy.num_levels
    counts = np.bincount(level_labels[:, lvl], minlength=hierarchy.level_sizes[lvl])
    c = counts[level_labels[:, lvl]].astype(np.float64)
    if mode == "inverse":
        w = 1.0 / c
    elif mode == "inverse_sqrt":
        w = 1.0 / np.sqrt(c)
    else:
        raise ConfigError(f"data.resample: got {mode!r}; allowed: none, inverse, inverse_sqrt")
    return w / w.sum()


def class_weights(level_labels: np.ndarray, hierarchy: Hierarchy) -> list[np.ndarray]:
    """Loss weight per label per level, ∝ 1/count, normalised to mean 1 over seen labels.

    Labels absent from training get weight 0 (the published code divided by zero there).
    """
    out = []
    for counts in label_counts(level_labels, hierarchy):
        w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
        seen = counts > 0
        w = w / w[seen].mean() if seen.any() else w
        out.append(w.astype(np.float32))
    return out
