"""Ray side of one trial: the Tune function trainable and the Ray Train worker loop.

The trial's config comes from the Tune config through :mod:`hpsearch.search.codec`; the
training itself is :func:`hpsearch.tasks.runner.run_trial`, the same everywhere.

* One worker (default): the trial trains **in the Tune trial process** - no TorchTrainer
  start-up cost (15-30 s per trial). Checkpoints go through ``tune.report``; a restarted
  trial resumes from ``tune.get_checkpoint()``.
* Several workers (or ``resources.force_trainer``): the trial drives a Ray Train
  ``TorchTrainer`` (real DDP: gloo on CPU, nccl on GPU). Rank-0 metrics reach Tune through
  ``TuneReportCallback``; the Train run is named ``train-<trial_id>`` so a retried or restored
  trial resumes the Train run from its latest checkpoint.

Resuming (a retried trial, or every unfinished trial after ``--resume``) starts from the newest
*complete* checkpoint: Tune's, or a newer one in the trial's own storage directory that Tune's
experiment state does not know yet (the driver saves that state periodically, so a driver killed
between two saves forgets the trial's last checkpoints). When the newer one is used, its result
is reported again first (with the checkpoint), so Tune, the scheduler and the MLflow callback see
the epoch the driver may never have processed; the callback logs each step once.

A deterministic failure (any :class:`HpsearchError`: a bad sampled combination, a NaN loss, ...)
is not raised to Tune, which would retry it ``max_failures`` times with the same outcome: the
trial reports one terminal result carrying the error (``ERROR_KEY``, ``done``) and ends; the
callback closes its MLflow run FAILED with the message. Anything else (a dead worker or node, an
``OSError``) raises and Tune retries it from its checkpoint. A full disk under the storage path is
reported the same way with ``ERROR_KIND_KEY = "disk_full"`` (the callback then stops the search:
every other trial would fail the same way).
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray import tune

from hpsearch.errors import HpsearchError
from hpsearch.search.codec import BASE_KEY, trainer_storage, trial_config
from hpsearch.tasks import RunContext, TrialConfig
from hpsearch.tasks.base import trial_numerics
from hpsearch.tasks.runner import checkpoint_report, newest_checkpoint, run_trial, staging_dir

ERROR_KEY = "hpsearch_error"  # in a trial's terminal result: "<ErrorType>: message"
ERROR_KIND_KEY = "hpsearch_error_kind"  # "deterministic" or "disk_full"
RESUMED_KEY = "hpsearch_resumed_from"  # in the first result after a resume: its epoch
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "database or disk is full")


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an exception it was raised from says the disk is full."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if any(t in str(exc).lower() for t in DISK_FULL_TEXT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def disk_full_message(path: str | Path, doing: str) -> str:
    """One line: which path's disk is full, how much is free, what to do."""
    free = ""
    try:
        u = shutil.disk_usage(path)
        free = f", {u.free / 2**20:.1f} of {u.total / 2**20:.1f} MiB free"
    except OSError:
        pass
    return (f"the disk holding {path} is full (no space left on device while {doing}{free}): "
            "free space there, or point --results-dir at a disk with room")


def _local_device(use_gpu: bool) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda", 0)  # Ray sets CUDA_VISIBLE_DEVICES per trial
    return torch.device("cpu")


def tune_trainable(config: dict[str, Any]) -> None:
    """The function trainable handed to ``tune.Tuner``."""
    try:
        cfg = trial_config(config)
    except HpsearchError as e:  # a sampled combination the config refuses: same every time
        base = config.get(BASE_KEY, {})
        _end_failed(str(base.get("metric") or "val_micro_f1"), e,
                    secondary=base.get("secondary_metrics") or ())
        return
    try:
        if cfg.resources.trainer_path:
            _run_torch_trainer(cfg, trainer_storage(config))
        else:
            _run_in_process(cfg)
    except HpsearchError as e:
        _end_failed(cfg.metric, e, secondary=cfg.secondary_metrics)
    except OSError as e:
        if not is_disk_full(e):
            raise  # infrastructure: Tune retries it (FailureConfig.max_failures)
        name = getattr(e, "filename", None)  # Ray's checkpoint copy (pyarrow) names none
        message = (disk_full_message(Path(name).parent, f"writing {name}") if name else
                   disk_full_message(Path(_trial_dir() or ".").parent,
                                     "saving a trial checkpoint"))
        _drop_partial_checkpoint()  # gives the space back, so the runs can still be closed
        _end_failed(cfg.metric, e, kind="disk_full", message=message,
                    secondary=cfg.secondary_metrics)


def _end_failed(metric: str, e: BaseException, kind: str = "deterministic",
                message: str | None = None, secondary: Any = ()) -> None:
    """End the trial with one terminal result carrying the error instead of raising it (Tune
    would retry it). ``done`` stops the trial before the scheduler and the searcher see the
    result; the metric (NaN) is there because Tune insists on it in every result; no
    ``epoch``, so ASHA records nothing for it; Optuna records the trial as failed (NaN). The
    searcher's metrics (``best_<objective>``) are there too, NaN, for the same reason."""
    text = message or f"{type(e).__name__}: {' '.join(str(e).split())}"
    nan = {m: math.nan for m in (metric, f"best_{metric}", *(f"best_{o}" for o in secondary))}
    tune.report({**nan, ERROR_KEY: text[:4000], ERROR_KIND_KEY: kind, "done": True})


def _trial_dir() -> Path | None:
    """The trial's directory on the storage path, when that is a local (or shared) one."""
    try:
        storage = tune.get_context().get_storage()
    except Exception:  # noqa: BLE001 - outside a Tune session
        return None
    if storage is None or storage.storage_filesystem.type_name != "local":
        return None
    return Path(storage.trial_fs_path)


def _drop_partial_checkpoint() -> None:
    """Delete the checkpoint directory Ray was writing when the disk filled up (incomplete,
    so no resume would use it)."""
    trial_dir = _trial_dir()
    if trial_dir is None:
        return
    current = Path(tune.get_context().get_storage().checkpoint_fs_path)
    if current.parent == trial_dir and current.is_dir() and checkpoint_report(current) is None:
        shutil.rmtree(current, ignore_errors=True)


def _resume_point(ckpt: Any) -> tuple[Path | None, dict[str, Any] | None, bool]:
    """Where a (re)started trial continues: (staged directory, its report, whether it is newer
    than what Tune handed over). Also moves the session's checkpoint index past every
    checkpoint directory already on disk, so no new checkpoint is written over one a killed
    attempt left (Tune's saved index may be older than the directories)."""
    tune_dir = Path(ckpt.path) if ckpt is not None and ckpt.filesystem.type_name == "local" \
        else None
    trial_dir = _trial_dir()
    on_disk = sorted(trial_dir.glob("checkpoint_*")) if trial_dir and trial_dir.is_dir() else []
    if on_disk:
        storage = tune.get_context().get_storage()
        last = max((int(d.name.rsplit("_", 1)[1]) for d in on_disk
                    if d.name.rsplit("_", 1)[1].isdigit()), default=-1)
        storage.current_checkpoint_index = max(storage.current_checkpoint_index, last)
    newest = newest_checkpoint(on_disk + ([tune_dir] if tune_dir else []))
    src: Any = None
    report, newer = None, False
    if newest is not None:
        src, report = newest
        known = newest_checkpoint([tune_dir]) if tune_dir else None
        newer = known is None or report["epoch"] > known[1]["epoch"]
    elif ckpt is not None:
        src = ckpt  # a checkpoint without a report (or on remote storage): Tune's, as before
    if src is None:
        return None, None, False
    resume_dir = staging_dir("resume")
    if isinstance(src, Path):
        shutil.copytree(src, resume_dir, dirs_exist_ok=True)
    else:
        with src.as_directory() as d:
            shutil.copytree(d, resume_dir, dirs_exist_ok=True)
        report = checkpoint_report(resume_dir)  # its epoch, for the resumed_from tag
    return resume_dir, report, newer


def _run_in_process(cfg: TrialConfig) -> None:
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    resume_dir, resumed, newer = _resume_point(tune.get_checkpoint())
    first = {RESUMED_KEY: resumed["epoch"]} if resumed else {}

    def report(metrics: dict[str, float], ckpt_dir: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None
        tune.report({**metrics, **first}, checkpoint=checkpoint)
        first.clear()

    ctx = RunContext(device=_local_device(cfg.resources.use_gpu))
    try:
        if resumed and newer:  # the result of that epoch may never have reached the driver
            report(dict(resumed["metrics"]), resume_dir)
        with trial_numerics(cfg, cpus):  # threads = the trial's CPUs; cfg.deterministic
            run_trial(cfg, report, ctx=ctx, resume_from=resume_dir)
    finally:
        if resume_dir is not None:
            shutil.rmtree(resume_dir, ignore_errors=True)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Body of every Ray Train worker: DDP process group already set up by TorchTrainer."""
    import ray.train.torch  # Ray Train's torch backend: only on the TorchTrainer path

    cfg = TrialConfig.model_validate(loop_config["cfg"])
    tctx = ray.train.get_context()
    device = ray.train.torch.get_device() if cfg.resources.use_gpu else torch.device("cpu")
    ctx = RunContext(device=device, rank=tctx.get_world_rank(),
                     world_size=tctx.get_world_size())
    resume_dir = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        resume_dir = staging_dir("resume")
        with ckpt.as_directory() as d:
            shutil.copytree(d, resume_dir, dirs_exist_ok=True)

    def report(metrics: dict[str, float], ckpt_dir: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    try:
        with trial_numerics(cfg, cfg.resources.cpus_per_worker if device.type == "cpu"
                            else None):
            run_trial(cfg, report, ctx=ctx, resume_from=resume_dir)
    finally:
        if resume_dir is not None:
            shutil.rmtree(resume_dir, ignore_errors=True)


def _run_torch_trainer(cfg: TrialConfig, storage: str | None) -> None:
    # Ray Train's torch backend and Tune bridge: only on the TorchTrainer path
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    r = cfg.resources
    per_worker: dict[str, float] = {"CPU": r.cpus_per_worker}
    if r.use_gpu:
        per_worker["GPU"] = r.gpus_per_worker or 1.0  # gpus_per_trial alone: one per worker
    storage = storage or os.path.join(tempfile.gettempdir(), "hpsearch-train")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump()},
        torch_config=TorchConfig(backend="nccl" if r.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}", storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=1, controller_failure_limit=3),
            callbacks=[TuneReportCallback()]),
    )
    try:
        trainer.fit()
    except Exception as e:  # noqa: BLE001 - Ray Train wraps what the workers raised
        cause = _worker_hpsearch_error(e)
        if cause is None:
            raise
        raise cause from None  # deterministic: tune_trainable ends the trial without a retry


def _worker_hpsearch_error(e: BaseException) -> HpsearchError | None:
    """The :class:`HpsearchError` a Ray Train worker raised, from Train's wrapping of it."""
    failures = getattr(e, "worker_failures", None) or {}
    for exc in [*failures.values(), e]:
        seen = 0
        while exc is not None and seen < 20:
            if isinstance(exc, HpsearchError):
                return exc
            exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None
