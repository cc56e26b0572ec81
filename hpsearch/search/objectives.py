"""What a search optimises: one metric, or several at once (a multi-objective search).

A search's objectives are ``(metric, mode)`` pairs; the first is the primary one: it picks each
trial's best epoch (the checkpoint a trial keeps and exports), drives ASHA, and ranks runs when
a single order is needed. A multi-objective search hands Optuna every objective's value at that
epoch (``best_<metric>``), and its result is the Pareto front of the trials.

Plain Python: no Ray, no MLflow, no Optuna (what ``best`` and ``report`` need without them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

OBJECTIVES_TAG = "objectives"  # parent-run tag: JSON [[metric, mode], ...]


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """Whether point ``a`` Pareto-dominates ``b``: at least as good in every objective and
    strictly better in one ("max": larger is better, "min": smaller)."""
    better = False
    for x, y, m in zip(a, b, modes, strict=True):
        if m == "min":
            x, y = -x, -y
        if x < y:
            return False
        better = better or x > y
    return better


def pareto_front(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (Deb et al. 2002, the first front of NSGA-II's
    non-dominated sorting), in input order. A point with a NaN coordinate is never on the front;
    equal points are all on it. O(n^2 k): fronts of searches (≤ 10^4 trials) are cheap."""
    ok = [i for i, p in enumerate(points) if all(math.isfinite(float(v)) for v in p)]
    return [i for i in ok
            if not any(dominates(points[j], points[i], modes) for j in ok if j != i)]


def encode(objectives: Sequence[tuple[str, str]]) -> str:
    """The parent run's ``objectives`` tag."""
    return json.dumps([[m, mode] for m, mode in objectives])


def decode(tag: str | None) -> list[tuple[str, str]]:
    """``objectives`` tag -> ``[(metric, mode), ...]`` (empty for a run without the tag)."""
    if not tag:
        return []
    return [(str(m), str(mode)) for m, mode in json.loads(tag)]
