"""The unit of work of one trial, independent of Ray and MLflow.

An :class:`Experiment` is built from a validated :class:`TrialConfig` and a :class:`RunContext`
(device, DDP rank/world size). The driver (``hpsearch.train.driver``) runs it epoch by epoch,
the same way in the trial process and inside every Ray Train worker:

    exp = build_experiment(cfg, ctx)
    for epoch in range(start, cfg.optim.epochs):
        train = exp.train_one_epoch(epoch)   # {"loss": ...}
        val = exp.evaluate("val")            # {"micro_f1": ...}

Metric dicts carry bare names; the driver prefixes them with the split (``val_micro_f1``).
Each task (image classification, label embedding, joint embedding, ...) registers a builder
in :data:`EXPERIMENTS` under the ``task`` of its model families.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from hpsearch.config import TrialConfig
from hpsearch.registry import Registry


@dataclass(frozen=True)
class RunContext:
    """Where an experiment runs. ``world_size > 1`` means torch.distributed is initialised."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class Experiment(Protocol):
    cfg: TrialConfig

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training data; returns e.g. ``{"loss": 0.7}``."""

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics on ``split`` ("val" or "test"), identical on every DDP rank."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: model, optimizer, scheduler, extra state."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def export(self, out_dir: Path) -> dict[str, Any]:
        """Write the deployable files into ``out_dir``; return manifest entries."""


ExperimentBuilder = Callable[[TrialConfig, RunContext], Experiment]
EXPERIMENTS: Registry[ExperimentBuilder] = Registry("task")


def build_experiment(cfg: TrialConfig, ctx: RunContext | None = None) -> Experiment:
    import hpsearch.models  # noqa: F401
    import hpsearch.train.classifier  # noqa: F401  registers the "classifier" task
    from hpsearch.models import FAMILIES

    task = FAMILIES.get(cfg.model.family).task
    return EXPERIMENTS.get(task)(cfg, ctx or RunContext())
