"""What every task shares: where it runs, the experiment protocol, the task spec and registry.

A *task* is a kind of experiment (image classification, label-only embedding, joint image +
label embedding). Each lives in one subpackage of :mod:`hpsearch.tasks` and registers one
:class:`TaskSpec` in :data:`TASKS`; every model family names its task
(``FamilySpec.task``), so a trial config finds its experiment as

    TASKS.get(FAMILIES.get(cfg.model.family).task).experiment(cfg, ctx)

An :class:`Experiment` is built from a validated :class:`~hpsearch.tasks.TrialConfig` and a
:class:`RunContext` (device, DDP rank/world size). The runner (:mod:`hpsearch.tasks.runner`)
drives it epoch by epoch, the same way in the trial process and inside every Ray Train worker:

    exp = build_experiment(cfg, ctx)
    for epoch in range(start, cfg.optim.epochs):
        train = exp.train_one_epoch(epoch)   # {"loss": ...}
        val = exp.evaluate("val")            # {"micro_f1": ...}

Metric dicts carry bare names; the runner prefixes them with the split (``val_micro_f1``).
No Ray and no MLflow below this line.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from hpsearch.config import OPTIM_ONLY_WHEN, FamilyParams
from hpsearch.errors import ConfigError
from hpsearch.hierarchy import Hierarchy
from hpsearch.models import FAMILIES
from hpsearch.registry import Registry

if TYPE_CHECKING:  # annotations only: the config module imports nothing from here
    from hpsearch.tasks.config import TrialConfig


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


@runtime_checkable
class Experiment(Protocol):
    """The unit of work of one trial, independent of Ray and MLflow.

    Everything a caller needs is here, so nobody probes an experiment with ``hasattr``:
    ``hierarchy`` is None for tasks without one, ``reports`` returns ``{}`` where a task has no
    text artifacts.
    """

    cfg: TrialConfig
    hierarchy: Hierarchy | None

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training data; returns e.g. ``{"loss": 0.7}``."""

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics on ``split`` ("val" or "test"), identical on every DDP rank."""

    def reports(self, split: str) -> dict[str, str]:
        """Text artifacts of the best epoch (file name -> contents), e.g. per-label tables."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: model, optimizer, scheduler, extra state."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def export(self, out_dir: Path) -> dict[str, Any]:
        """Write the deployable files into ``out_dir``; return manifest entries."""


@runtime_checkable
class LabelTable(Protocol):
    """An experiment that holds one embedding per label (label-only and joint embeddings):
    what staged initialisation reads from a finished run."""

    nodes: tuple[str, ...]

    @property
    def geometry(self) -> str: ...

    def embeddings(self) -> torch.Tensor:
        """``[N, d]`` label embeddings f(u), rows in the order of ``nodes``, on the CPU."""


ExperimentBuilder = Callable[["TrialConfig", RunContext], Experiment]


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: everything the layers above ask about it, in one place.

    Attributes:
        name: registry name; model families name it as their ``task``.
        experiment: ``(TrialConfig, RunContext) -> Experiment``.
        params: the params model every family of the task extends (its options schema).
        metric_names: the bare metric names ``evaluate("val")`` returns for a config, found
            without training (the search's pre-flight, ``best`` and ``report`` ask this).
        unused_keys: the config keys a config of this task never reads (left out of the
            params a run logs, so they do not look as if they had mattered).
        exports: what ``export`` writes: ``predictor`` (an image classifier that
            ``hpsearch predict`` serves) or ``embeddings`` (label/image embedding tables).
        default_metric: the selection metric when a search or a report names none.
        report: the tables ``hpsearch report`` prints for a run: ``levels`` (per-level
            micro/macro P/R/F1, thesis Tables 4.x) or ``edges`` (held-out edges and graph
            reconstruction, thesis Tables 6.1/6.2).
        description: one line for ``hpsearch families``.
    """

    name: str
    experiment: ExperimentBuilder
    params: type[FamilyParams]
    metric_names: Callable[[TrialConfig], set[str]]
    unused_keys: Callable[[TrialConfig], tuple[str, ...]] = lambda cfg: ()
    exports: Literal["predictor", "embeddings"] = "embeddings"
    default_metric: str = "val_micro_f1"
    report: Literal["levels", "edges"] = "levels"
    description: str = ""

    def families(self) -> list[str]:
        """The registered model families this task trains."""
        return [n for n in FAMILIES.names() if FAMILIES.get(n).task == self.name]


TASKS: Registry[TaskSpec] = Registry("task")


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` to :data:`TASKS` (a task package does this once, in its ``__init__``)."""
    TASKS.add(spec.name, spec)
    return spec


def task_of(cfg: TrialConfig) -> TaskSpec:
    """The task that trains ``cfg.model.family``."""
    return TASKS.get(FAMILIES.get(cfg.model.family).task)


def build_experiment(cfg: TrialConfig, ctx: RunContext | None = None) -> Experiment:
    """The experiment of ``cfg``'s task, built for ``ctx`` (CPU, rank 0 by default)."""
    return task_of(cfg).experiment(cfg, ctx or RunContext())


def require_family(cfg: TrialConfig, task: str) -> Any:
    """``cfg.model.params`` of a family of ``task`` (an experiment built directly, not through
    :func:`build_experiment`, may be handed another task's family)."""
    spec = FAMILIES.get(cfg.model.family)
    if spec.task != task:
        allowed = [n for n in FAMILIES.names() if FAMILIES.get(n).task == task]
        raise ConfigError(f"model.family {cfg.model.family!r} is a {spec.task!r} family; the "
                          f"{task.replace('_', '-')} experiment needs one of {allowed}")
    return cfg.model.params


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (torch's seeds every CUDA device
    too): model init and any library that draws from them. The data order, augmentation and
    negative sampling draw from generators of their own, seeded from the trial's seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def config_cpus(cfg: TrialConfig) -> float:
    """The CPUs one training process of ``cfg`` is given in a search (a Ray Train worker's
    on the TorchTrainer path, the trial's otherwise): what its torch threads follow."""
    r = cfg.resources
    return r.cpus_per_worker if r.trainer_path else r.cpus_per_trial


def trial_threads(cfg: TrialConfig, cpus: float | None = None) -> int | None:
    """The intra-op thread count ``cfg`` trains with, at least 1: ``torch_threads`` when set;
    with ``deterministic`` the CPUs the config asks for (:func:`config_cpus`), whatever the
    process was given; else the process's CPUs ``cpus``. None: leave torch's setting alone
    (no ``cpus``: ``hpsearch train`` on its own)."""
    if cfg.torch_threads is not None:
        return cfg.torch_threads
    if cfg.deterministic:
        cpus = config_cpus(cfg)
    return None if cpus is None else max(1, int(cpus))


@contextmanager
def trial_numerics(cfg: TrialConfig, cpus: float | None = None) -> Iterator[int]:
    """Set up this process's numerics for training ``cfg``; restore them on exit.

    Always: torch's intra-op threads to :func:`trial_threads` (a search trial passes its Ray
    CPUs). With ``cfg.deterministic``: :func:`seed_everything` from ``cfg.seed``,
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` (an op with no deterministic
    implementation warns instead of failing the trial: on CUDA NLLLoss and the backward of
    AdaptiveAvgPool2d, which the classifiers use, have none), cuDNN deterministic and not
    benchmarking, ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (when unset; read when cuBLAS starts).
    On the CPU that makes a trial bit-reproducible at any machine load and under any
    ``torch.set_num_threads`` the caller had, on the same hardware, software and data.

    What it costs: on the CPU the thread count is what matters (the same config trained with
    1 and 2 threads differs by 0.005 val micro-F1 after 2 demo epochs; with the same count it
    is bit-identical with or without the deterministic flags, and as fast within noise). A search
    trial already trains with its CPUs' threads, so there it costs nothing; ``hpsearch train``
    gives up torch's default of one thread per core (2 demo epochs on a quiet 2-core machine:
    7.7 s with 1 thread against 5.7 s with 2). On CUDA cuDNN stops autotuning and picks
    deterministic kernels, usually slower (not measured here).

    Yields the thread count in force.
    """
    cudnn = torch.backends.cudnn
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), cudnn.deterministic,
             cudnn.benchmark)
    try:
        threads = trial_threads(cfg, cpus)
        if threads is not None:
            torch.set_num_threads(threads)
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            cudnn.deterministic, cudnn.benchmark = True, False
            seed_everything(cfg.seed)
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        cudnn.deterministic, cudnn.benchmark = saved[3], saved[4]


def resolved_params(cfg: TrialConfig) -> dict[str, Any]:
    """The config a trial really ran with, as dotted keys for MLflow params.

    ``model.params`` is the family's typed params, defaults included, so a margin or aperture
    left at its default is still logged and comparable across runs. Settings the run ignores
    are left out instead of being logged as if they had mattered: optimizer/schedule keys of
    another optimizer or schedule (momentum under Adam, SGDR cycle under cosine,
    :data:`~hpsearch.config.OPTIM_ONLY_WHEN`), and the keys the task never reads
    (``TaskSpec.unused_keys``).
    """
    flat = cfg.flatten()
    for key, (switch, allowed) in OPTIM_ONLY_WHEN.items():
        if flat.get(switch) not in allowed:
            flat.pop(key, None)
    for key in task_of(cfg).unused_keys(cfg):
        flat.pop(key, None)
    return flat


# config keys only the classifier reads: the embedding tasks take their optimizers from
# model.params and have no AMP, channels-last or per-level loss weights
CLASSIFIER_ONLY_KEYS = ("optim.optimizer", "optim.momentum", "optim.weight_decay", "optim.amp",
                        "optim.channels_last", "optim.level_weights",
                        "optim.weight_decay_scope")
# the image backbone's keys, unused by tasks that train no backbone
BACKBONE_KEYS = ("model.backbone", "model.width", "model.pretrained_weights",
                 "model.freeze_backbone", "model.train_layers", "model.grayscale")


def untrained_metric_names(cfg: TrialConfig) -> set[str]:
    """``metric_names`` of a task whose experiment is cheap to build: build it once and
    evaluate it untrained (bad graphs or paths fail here; caches such as features are built
    once for all trials)."""
    return set(build_experiment(cfg).evaluate("val"))
