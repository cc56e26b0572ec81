"""Epoch loop shared by every execution mode (plain process, Tune trial, Ray Train worker).

The loop trains, validates, tests the best epoch so far, checkpoints every epoch and hands
metrics plus the checkpoint directory to a :class:`Reporter`. Ray-specific reporters live in
``hpsearch.search.trainable``; this module imports neither Ray nor MLflow.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from hpsearch.errors import ConfigError
from hpsearch.tasks.base import Experiment, RunContext, build_experiment, task_of
from hpsearch.tasks.checkpoint import (
    CHECKPOINT_FILE,
    REPORTS_DIR,
    BestSoFar,
    inference_state,
    load_best_state,
    load_checkpoint,
    save_checkpoint,
)
from hpsearch.tasks.config import TrialConfig

STAGING_PREFIX = "hpsearch-"  # + kind ("ckpt", "resume") + "-<host>-<pid>-<random>"
# written last into every checkpoint directory: the epoch, the metrics reported with it and the
# size of every other file, so a copy cut short (a process killed while Ray persisted it) is
# told from a complete one without loading it (see checkpoint_report)
REPORT_FILE = "report.json"


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"


def staging_dir(kind: str, root: Path | None = None) -> Path:
    """A fresh scratch directory named after this host and process, for one checkpoint.

    The name carries the pid so that :func:`sweep_staging` can tell directories of live
    processes from those left behind by a process that was killed while it held one (Ray
    kills a trial's worker when a scheduler stops the trial, often inside ``report``).
    """
    prefix = f"{STAGING_PREFIX}{kind}-{_host_tag()}-{os.getpid()}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def sweep_staging(root: Path | None = None, kinds: tuple[str, ...] = ("ckpt", "resume")) -> int:
    """Delete this host's staging directories whose process no longer exists; return the count.

    Only names made by :func:`staging_dir` on this host are considered, so a temp dir shared
    between nodes never loses a directory a live process on another node still uses.
    """
    root = Path(root or tempfile.gettempdir())
    pattern = re.compile(rf"{re.escape(STAGING_PREFIX)}(?:{'|'.join(map(re.escape, kinds))})"
                         rf"-{re.escape(_host_tag())}-(\d+)-")
    removed = 0
    try:
        entries = list(root.iterdir())
    except OSError:
        return 0
    for d in entries:
        m = pattern.match(d.name)
        if m and d.is_dir() and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
            removed += not d.exists()
    return removed


class Reporter(Protocol):
    def __call__(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        """Publish one epoch's metrics; ``checkpoint_dir`` (rank 0 only) may be moved away."""


def require_metrics(cfg: TrialConfig, names: set[str]) -> None:
    """``cfg.metric`` and ``cfg.tie_break`` must be among the metric names (without ``val_``)
    the family evaluates, else :class:`ConfigError` listing the ones it has."""

    for what, m in (("metric", cfg.metric), ("tie_break", cfg.tie_break),
                    *(("objectives", o) for o in cfg.secondary_metrics)):
        if m is not None and m.removeprefix("val_") not in names:
            raise ConfigError(f"{what}: {m!r} is not produced by family "
                              f"{cfg.model.family!r}; choose one of: "
                              f"{', '.join('val_' + k for k in sorted(names))}")


def check_metrics(cfg: TrialConfig) -> None:
    """The search's pre-flight: ``cfg.metric`` and ``cfg.tie_break`` are among the metrics the
    task logs for this config (``TaskSpec.metric_names``), else one-line :class:`ConfigError`."""
    require_metrics(cfg, task_of(cfg).metric_names(cfg))


def run_trial(cfg: TrialConfig, report: Reporter, *, ctx: RunContext | None = None,
              resume_from: Path | None = None,
              experiment_factory: Callable[[TrialConfig, RunContext], Experiment] | None = None
              ) -> BestSoFar:
    """Train ``cfg`` for ``cfg.optim.epochs`` epochs (continuing from ``resume_from``).

    Every evaluation epoch (every epoch by default; ``optim.eval_every`` = k: every k-th and the
    last) reports ``epoch``, ``train_*``, ``val_*`` and the ``test_*`` metrics of the best
    validation epoch so far (``best_epoch``, ``best_<metric>``), with a checkpoint directory
    holding the latest state and the best weights.
    """
    ctx = ctx or RunContext()
    if ctx.is_main:
        sweep_staging()  # checkpoints of trials on this node that were killed mid-report
    exp = (experiment_factory or build_experiment)(cfg, ctx)
    best, start, best_state, reports = BestSoFar(), 0, None, {}
    if resume_from is not None and (Path(resume_from) / CHECKPOINT_FILE).exists():
        state = load_checkpoint(resume_from)
        exp.load_state_dict(state["experiment"])
        start = state["epoch"] + 1
        best = BestSoFar(**state["best"])
        rdir = Path(resume_from) / REPORTS_DIR
        if rdir.is_dir():
            reports = {f.name: f.read_text() for f in rdir.iterdir() if f.is_file()}
        best_state = load_best_state(resume_from)
    metric = cfg.metric.removeprefix("val_")
    tie = cfg.tie_break.removeprefix("val_") if cfg.tie_break else None
    for epoch in range(start, cfg.optim.epochs):
        train = exp.train_one_epoch(epoch)
        if (epoch + 1) % cfg.optim.eval_every and epoch + 1 < cfg.optim.epochs:
            continue  # not an evaluation epoch: the next report carries this epoch's training
        val = exp.evaluate("val")
        require_metrics(cfg, set(val))
        tie_v = float(val[tie]) if tie is not None else math.nan
        if best.improves(val[metric], cfg.mode, tie_v, cfg.tie_break_mode):
            best.value, best.epoch, best.tie = val[metric], epoch, tie_v
            best.secondary = {m: float(val[m.removeprefix("val_")])
                              for m in cfg.secondary_metrics}
            best.test = exp.evaluate("test")
            best_state = _cpu_copy(inference_state(exp.state_dict()))
            reports = exp.reports("test")
        metrics: dict[str, float] = {"epoch": float(epoch + 1)}
        metrics.update({f"train_{k}": v for k, v in train.items()})
        metrics.update({f"val_{k}": v for k, v in val.items()})
        metrics.update({f"test_{k}": v for k, v in (best.test or {}).items()})
        metrics["best_epoch"] = float(best.epoch + 1)
        metrics[f"best_{cfg.metric}"] = best.value
        if cfg.tie_break:
            metrics[f"best_{cfg.tie_break}"] = best.tie
        for m, v in (best.secondary or {}).items():
            metrics[f"best_{m}"] = v
        ckpt = staging_dir("ckpt") if ctx.is_main else None
        try:
            if ckpt is not None:
                save_checkpoint(ckpt, exp, epoch, best, best_state, reports)
                write_report(ckpt, metrics)
            report(metrics, ckpt)  # Ray persists the checkpoint to storage before returning
        finally:  # also when report raises (a stopped trial); a killed one is swept later
            if ckpt is not None:
                shutil.rmtree(ckpt, ignore_errors=True)
    return best


def write_report(ckpt: Path, metrics: dict[str, float]) -> None:
    """``ckpt/report.json``: the reported metrics and the size of every file written so far."""
    files = {f.relative_to(ckpt).as_posix(): f.stat().st_size
             for f in sorted(ckpt.rglob("*")) if f.is_file() and f.name != REPORT_FILE}
    (ckpt / REPORT_FILE).write_text(json.dumps({"epoch": int(metrics["epoch"]),
                                                "metrics": metrics, "files": files}))


def checkpoint_report(ckpt: Path) -> dict[str, Any] | None:
    """The ``report.json`` of a complete checkpoint directory (every file it lists present at
    its size), else None: no report (written before reports existed, or cut short before it
    was copied) or a file missing or shorter than when it was saved."""
    try:
        rep = json.loads((Path(ckpt) / REPORT_FILE).read_text())
        complete = all((Path(ckpt) / name).stat().st_size == size
                       for name, size in rep["files"].items())
        return rep if complete and isinstance(rep.get("epoch"), int) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def newest_checkpoint(dirs: list[Path]) -> tuple[Path, dict[str, Any]] | None:
    """The complete checkpoint directory with the highest epoch among ``dirs`` (the latest
    name on a tie) and its report; None when none is complete."""
    best: tuple[int, str, Path, dict[str, Any]] | None = None
    for d in dirs:
        rep = checkpoint_report(d)
        if rep is not None and (best is None or (rep["epoch"], d.name) > best[:2]):
            best = (rep["epoch"], d.name, d, rep)
    return (best[2], best[3]) if best else None


def _cpu_copy(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _cpu_copy(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_cpu_copy(v) for v in state)
    return state


class DirectoryReporter:
    """Keeps the latest checkpoint in ``out_dir`` and the metric history in memory (no Ray)."""

    def __init__(self, out_dir: Path, echo: Callable[[str], None] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.history: list[dict[str, float]] = []
        self.echo = echo

    def __call__(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        self.history.append(dict(metrics))
        if checkpoint_dir is not None:
            tmp = self.out_dir.with_name(self.out_dir.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(checkpoint_dir, tmp)
            shutil.rmtree(self.out_dir, ignore_errors=True)
            tmp.rename(self.out_dir)
        if self.echo:
            keys = [k for k in ("epoch", "train_loss", "val_micro_f1", "val_macro_f1")
                    if k in metrics]
            self.echo("  ".join(f"{k}={metrics[k]:.4g}" for k in keys))
