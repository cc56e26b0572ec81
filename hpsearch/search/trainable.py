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
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray import tune

from hpsearch.search.codec import trainer_storage, trial_config
from hpsearch.tasks import RunContext, TrialConfig
from hpsearch.tasks.runner import run_trial, staging_dir


def _local_device(use_gpu: bool) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda", 0)  # Ray sets CUDA_VISIBLE_DEVICES per trial
    return torch.device("cpu")


def tune_trainable(config: dict[str, Any]) -> None:
    """The function trainable handed to ``tune.Tuner``."""
    cfg = trial_config(config)
    if cfg.resources.trainer_path:
        _run_torch_trainer(cfg, trainer_storage(config))
        return
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    resume_dir = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        resume_dir = staging_dir("resume")
        with ckpt.as_directory() as d:
            shutil.copytree(d, resume_dir, dirs_exist_ok=True)

    def report(metrics: dict[str, float], ckpt_dir: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None
        tune.report(metrics, checkpoint=checkpoint)

    ctx = RunContext(device=_local_device(cfg.resources.use_gpu))
    try:
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
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
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
    trainer.fit()
