"""Checkpoint directories of a trial: the files, how they are written and read back.

A checkpoint directory holds ``checkpoint.pt`` (everything needed to continue training: the
experiment's state, the epoch, the config, the best-so-far record), ``best.pt`` (the best
epoch's inference state) and ``reports/`` (text artifacts of the best epoch). The runner writes
one per evaluation epoch; Ray persists it; export, report and staged searches read it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hpsearch.errors import ConfigError
from hpsearch.tasks.base import Experiment, RunContext, build_experiment
from hpsearch.tasks.config import validate_trial

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"
REPORTS_DIR = "reports"  # text artifacts of the best epoch (e.g. per-label F1 tables)


@dataclass
class BestSoFar:
    value: float = math.nan
    epoch: int = -1
    test: dict[str, float] | None = None
    tie: float = math.nan  # the tie-break metric at the best epoch (NaN: none configured)

    def improves(self, v: float, mode: str, tie: float = math.nan,
                 tie_mode: str = "max") -> bool:
        """Strictly better ``v``; or an equal ``v`` with a strictly better ``tie``."""
        if math.isnan(v):
            return False
        if math.isnan(self.value):
            return True
        if v != self.value:
            return v > self.value if mode == "max" else v < self.value
        if math.isnan(tie):
            return False
        if math.isnan(self.tie):
            return True
        return tie > self.tie if tie_mode == "max" else tie < self.tie


# what only continuing the training needs; best.pt leaves it out (checkpoint.pt has it)
TRAINING_STATE_KEYS = ("optimizer", "optimizers", "scheduler", "schedulers", "generator")


def inference_state(state: dict[str, Any]) -> dict[str, Any]:
    """An experiment state without optimizer, scheduler and RNG state: what export, predict,
    reports and warm starts read from ``best.pt``. For a ResNet-18 with Adam that is a third
    of the bytes (the two Adam moments are twice the weights), in every staging directory,
    Ray checkpoint and uploaded MLflow artifact. ``load_state_dict`` of every experiment
    accepts it (optimizer state left as built)."""
    return {k: v for k, v in state.items() if k not in TRAINING_STATE_KEYS}


def save_checkpoint(path: Path, exp: Experiment, epoch: int, best: BestSoFar,
                    best_state: dict[str, Any] | None,
                    reports: dict[str, str] | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if reports:
        (path / REPORTS_DIR).mkdir(exist_ok=True)
        for name, text in reports.items():
            (path / REPORTS_DIR / name).write_text(text)
    torch.save({"experiment": exp.state_dict(), "epoch": epoch, "config": exp.cfg.model_dump(),
                "best": vars(best)}, path / CHECKPOINT_FILE)
    if best_state is not None:
        torch.save({"experiment": best_state, "epoch": best.epoch,
                    "config": exp.cfg.model_dump()}, path / BEST_FILE)


def _load(file: Path) -> dict[str, Any]:
    """The one reader of checkpoint files (``checkpoint.pt`` and ``best.pt``)."""
    return torch.load(file, map_location="cpu", weights_only=False)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The saved dict of ``path/checkpoint.pt`` (what resuming the training needs)."""
    return _load(Path(path) / CHECKPOINT_FILE)


def load_best_state(path: Path) -> dict[str, Any] | None:
    """The best epoch's experiment state from ``path/best.pt``, None when there is none."""
    f = Path(path) / BEST_FILE
    return _load(f)["experiment"] if f.exists() else None


def checkpoint_file(path: str | Path, *, best: bool = True, what: str = "checkpoint") -> Path:
    """The state file of a checkpoint directory: ``best.pt`` if present (and ``best``), else
    ``checkpoint.pt``; a :class:`ConfigError` naming ``what`` when there is neither."""
    d = Path(str(path)).expanduser()
    for name in ((BEST_FILE, CHECKPOINT_FILE) if best else (CHECKPOINT_FILE,)):
        if (d / name).is_file():
            return d / name
    raise ConfigError(f"{what}={str(path)!r}: no {BEST_FILE} or {CHECKPOINT_FILE} there; point "
                      "it at the checkpoint directory of a trained run (hpsearch train --out DIR)")


def read_state(path: str | Path, *, best: bool = True, what: str = "checkpoint"
               ) -> dict[str, Any]:
    """The saved dict of a checkpoint directory (``config``, ``experiment``, ``epoch``, ...);
    ``what`` names the setting that pointed there in the error when there is none."""
    return _load(checkpoint_file(path, best=best, what=what))


def experiment_from_checkpoint(path: Path, *, best: bool = True,
                               ctx: RunContext | None = None) -> Experiment:
    """Rebuild an experiment from a checkpoint directory (the best epoch's state by default)."""
    state = read_state(path, best=best)
    cfg = validate_trial(state["config"])
    exp = build_experiment(cfg, ctx or RunContext())
    exp.load_state_dict(state["experiment"])
    return exp
