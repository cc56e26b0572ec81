"""Checkpoint directories of a trial: the files, how they are written and read back.

A checkpoint directory holds ``checkpoint.pt`` (everything needed to continue training: the
experiment's state, the epoch, the config, the best-so-far record), ``best.pt`` (the best
epoch's inference state) and ``reports/`` (text artifacts of the best epoch). The runner writes
one per evaluation epoch; Ray persists it; export, report and staged searches read it back.

Both files hold only tensors and plain data (dicts, lists, tuples, str, numbers, None): model and
optimizer ``state_dict``s, the torch RNG state (a uint8 tensor), the config as
``model_dump()``, the best-so-far record as a dict. :func:`save_checkpoint` refuses anything
else and :func:`_load` reads with ``torch.load(weights_only=True)``, so a checkpoint file cannot
run code when it is read (a ``best.pt`` from someone else, a run's ``hpsearch.checkpoint`` tag
pointing at a planted file): it is a one-line :class:`ConfigError` naming the file instead.
See docs/security.md.
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpsearch.errors import CheckpointError, ConfigError
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
    # the other objectives at the best epoch (TrialConfig.secondary_metrics), by name
    secondary: dict[str, float] | None = None

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


# what a checkpoint may hold besides dicts, lists and tuples of these: exactly what
# ``torch.load(weights_only=True)`` rebuilds without any allowlisting (no add_safe_globals)
_PLAIN_LEAVES = frozenset({str, bytes, int, float, bool, type(None), torch.dtype, torch.device,
                           torch.Size})


def plain_state(obj: Any, where: str = "state") -> Any:
    """``obj`` as tensors and plain data: numpy scalars become Python numbers (metrics are
    often ``np.float64``), containers are walked; anything else is a ``TypeError`` naming its
    place (a bug of the experiment's ``state_dict``: it would not load with
    ``weights_only=True``). Returns ``obj`` itself when nothing needed converting, so a model
    ``state_dict`` keeps its ``_metadata``."""
    # exact types: np.float64 is a float subclass, an enum a str or int one; neither loads back
    if type(obj) in _PLAIN_LEAVES or type(obj) in (torch.Tensor, torch.nn.Parameter):
        return obj
    if isinstance(obj, torch.Tensor):  # a subclass (geoopt's ManifoldParameter): its data
        return obj.detach().as_subclass(torch.Tensor)
    if isinstance(obj, np.number | np.bool_ | np.str_ | np.bytes_):
        return obj.item()
    if type(obj) in (dict, OrderedDict):
        out = {}
        for k, v in obj.items():
            k2 = plain_state(k, f"{where} key {k!r}")
            if type(k2) not in _PLAIN_LEAVES:
                raise TypeError(f"checkpoint {where} has a key of type {type(k).__name__}; "
                                "checkpoints hold only tensors and plain data")
            out[k2] = plain_state(v, f"{where}[{k!r}]")
        if len(out) == len(obj) and all(k in obj and out[k] is obj[k] for k in out):
            return obj
        new = type(obj)(out)
        if hasattr(obj, "_metadata"):
            new._metadata = obj._metadata  # type: ignore[attr-defined]
        return new
    if type(obj) in (list, tuple):
        items = [plain_state(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return obj if all(a is b for a, b in zip(items, obj, strict=True)) else type(obj)(items)
    raise TypeError(f"checkpoint {where} is a {type(obj).__module__}.{type(obj).__qualname__}; "
                    "checkpoints hold only tensors and plain data (dict, list, tuple, str, "
                    "numbers, None): convert it in the experiment's state_dict")


def save_checkpoint(path: Path, exp: Experiment, epoch: int, best: BestSoFar,
                    best_state: dict[str, Any] | None,
                    reports: dict[str, str] | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if reports:
        (path / REPORTS_DIR).mkdir(exist_ok=True)
        for name, text in reports.items():
            (path / REPORTS_DIR / name).write_text(text)
    config = plain_state(exp.cfg.model_dump(), "config")
    torch.save(plain_state({"experiment": exp.state_dict(), "epoch": int(epoch),
                            "config": config, "best": dict(vars(best))}), path / CHECKPOINT_FILE)
    if best_state is not None:
        torch.save(plain_state({"experiment": best_state, "epoch": int(best.epoch),
                                "config": config}), path / BEST_FILE)


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _load(file: Path) -> dict[str, Any]:
    """The one reader of checkpoint files (``checkpoint.pt`` and ``best.pt``): tensors and
    plain data only (``weights_only=True``). A file that needs anything else (a pickled
    ``os.system`` call, or an object an older hpsearch pickled) or is not a checkpoint at all
    is a one-line :class:`ConfigError` naming it; nothing in it is run."""
    file = Path(file)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = _GLOBAL.search(str(e))
        what = f"it needs {m.group(1)}" if m else "it holds more than tensors and plain data"
        raise CheckpointError(
            f"checkpoint file {file} refused: {what}, and checkpoints are read as tensors and "
            "plain data only (nothing in it was run); if you wrote it with an older hpsearch, "
            "re-run the training to write it again (hpsearch train / search); if you did "
            "not, do not use it") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint file {file} is not a readable checkpoint ({first}); "
                              "it is truncated or not an hpsearch checkpoint: re-run the "
                              "training to write it again") from None
    if not isinstance(state, dict) or "experiment" not in state or "config" not in state:
        raise CheckpointError(f"checkpoint file {file} is not an hpsearch checkpoint (no "
                              "'experiment' and 'config'); point at a directory written by "
                              "hpsearch train / search")
    return state


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
