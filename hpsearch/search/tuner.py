"""Run a search: Ray Tune + Optuna TPE (seeded) + ASHA, tracked in MLflow.

Layout under ``results_dir``: ``mlflow.db`` (default tracking store), ``mlruns/`` (artifacts),
``ray/<search_id>/`` (Tune experiment state, trial checkpoints), ``ray/train/`` (TorchTrainer
runs). ``--storage`` moves ``ray/`` elsewhere: a path every node of the cluster sees, or a
pyarrow filesystem URI (``s3://``, ``gs://``, ``file://``); MLflow's store stays put.
``--resume`` restores the newest unfinished search of the same space name in that storage.

Before anything is written: the address, the results dir and the storage are checked, the
cluster is probed (reachable, token accepted); right after ``ray.init`` and before any MLflow
run: every trial fits on a node of the cluster (see :mod:`hpsearch.search.cluster`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from hpsearch.data import load_dataset
from hpsearch.data._io import shared_dir
from hpsearch.data.base import dataset_profile
from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.provenance import code_version
from hpsearch.search import cluster, samplers
from hpsearch.search.callbacks import (
    MLflowTrialCallback,
    failed_trials,
    finish_open_trials,
    hpsearch_cause,
    source_tags,
)
from hpsearch.search.cluster import Storage, Target
from hpsearch.search.codec import constants
from hpsearch.search.objectives import OBJECTIVES_TAG, encode
from hpsearch.search.progress import LiveView
from hpsearch.search.space import DefineByRun, SearchSpace
from hpsearch.search.trainable import tune_trainable
from hpsearch.tasks.runner import check_metrics, sweep_staging
from hpsearch.tracking import Tracker, default_tracking_uri


@dataclass(frozen=True)
class SearchOptions:
    num_samples: int | None = None
    max_epochs: int | None = None
    data_root: str | None = None
    experiment: str | None = None
    tracking_uri: str | None = None
    address: str | None = None
    seed: int | None = None
    resume: bool = False
    results_dir: str = "results"
    verbose: int = 1
    storage: str | None = None  # Tune's storage: path or URI (default: results_dir/ray)
    optuna_storage: str | None = None  # Optuna's RDB storage URL (default: the space's, else
    # sqlite:///<results_dir>/optuna.db)
    space_file: str | None = None  # the YAML the space came from (an artifact of the parent)


@dataclass(frozen=True)
class SearchOutcome:
    search_id: str
    experiment: str
    tracking_uri: str
    parent_run_id: str
    num_trials: int
    num_errors: int
    num_stopped_early: int
    best: dict[str, Any] | None
    wall_s: float
    num_unfinished: int = 0  # trial runs an interruption left open (closed KILLED, resumable)
    interrupted: bool = False  # stopped by Ctrl+C / SIGTERM: continue with --resume


RUN_REF_KEYS = ("model.params.init_from", "model.params.feature_checkpoint")


def resolve_run_refs(space: SearchSpace, opts: SearchOptions, tracker: Tracker
                     ) -> dict[str, Any]:
    """Fixed values of the form ``mlflow:...`` (see :meth:`Tracker.resolve_run_ref`) become
    local checkpoint directories, once, on the driver, before any trial starts."""
    out: dict[str, Any] = {}
    dst = Path(opts.results_dir).resolve() / "resolved-runs"
    for key in RUN_REF_KEYS:
        value = space.fixed.get(key)
        if isinstance(value, str) and value.startswith("mlflow:"):
            out[key] = str(tracker.resolve_run_ref(value, dst))
    return out


def _overrides(space: SearchSpace, opts: SearchOptions) -> dict[str, Any]:
    o: dict[str, Any] = {}
    if opts.max_epochs is not None:
        o["optim.epochs"] = opts.max_epochs
    if opts.data_root is not None:
        o["data.root"] = str(Path(opts.data_root).resolve())
    elif "data.root" in space.fixed and space.fixed["data.root"]:
        o["data.root"] = str(Path(space.fixed["data.root"]).expanduser().resolve())
    if opts.seed is not None:
        o["seed"] = opts.seed
    return o


def preflight(space: SearchSpace, opts: SearchOptions
              ) -> tuple[Tracker, Any, dict[str, Any]]:
    """Everything that can fail on bad input, before a single run is written anywhere:
    the config resolves, ``mlflow:`` run references resolve, the dataset loads (and its cache
    is built once for all trials), the tracking store answers. Returns the tracker, the base
    config and the overrides every trial gets."""
    if opts.num_samples is not None and opts.num_samples <= 0:
        raise ConfigError(f"--num-samples must be positive, got {opts.num_samples}")
    cluster.check_num_samples(opts.num_samples or space.budget.num_samples)
    if space.sampler.type == "grid":  # past its last point Optuna's grid has nothing to ask
        n, points = opts.num_samples or space.budget.num_samples, samplers.grid_size(space)
        if n > points:
            raise ConfigError(f"the grid has {points} points but {n} trials were asked for; "
                              f"set budget.num_samples (or --num-samples) to {points} at most")
    if opts.max_epochs is not None and opts.max_epochs <= 0:
        raise ConfigError(f"--max-epochs must be positive, got {opts.max_epochs}")
    if opts.data_root is not None and not Path(opts.data_root).exists():
        raise ConfigError(f"--data-root {opts.data_root} does not exist (a dataset folder, or "
                          "an archive file for datasets that read one, e.g. CIFAR's .tar.gz)")
    uri = opts.tracking_uri or default_tracking_uri(opts.results_dir)

    def make_tracker() -> Tracker:  # opening a SQLite store creates it: only when needed
        return search_tracker(uri, opts.experiment or space.name, opts.results_dir)

    tracker = None
    overrides = _overrides(space, opts)
    if any(isinstance(space.fixed.get(k), str) and space.fixed[k].startswith("mlflow:")
           for k in RUN_REF_KEYS):
        tracker = make_tracker()
        tracker.check()
        overrides.update(resolve_run_refs(space, opts, tracker))
    cfg = space.resolve({}, overrides)
    # the task says which metrics it logs; building that answer loads the data (caches are
    # built once here for all trials) and fails now on bad graphs or paths
    check_metrics(cfg)
    tracker = tracker or make_tracker()
    tracker.check()
    return tracker, cfg, overrides


def _max_concurrent(space: SearchSpace, opts: SearchOptions, per_trial: dict[str, float]
                    ) -> int:
    import ray

    if space.budget.max_concurrent:
        return space.budget.max_concurrent
    res = ray.cluster_resources()
    fits = [res.get(k.upper(), 0.0) / v for k, v in per_trial.items() if v > 0]
    return max(1, int(math.floor(min(fits) + 1e-9))) if fits else 1


def run_search(space: SearchSpace, opts: SearchOptions) -> SearchOutcome:
    """Launch (or resume) the search described by ``space``; returns its outcome."""
    t0 = time.time()
    _train_env_defaults()
    target, storage = where_to_run(opts)  # nothing written yet; the cluster answers
    resume_path = None
    if opts.resume:  # the stored search decides its options; a conflicting flag is an error
        resume_path, meta = _resumable(storage, space.name)
        opts = _resume_options(space, opts, meta, resume_path.name)
    tracker, base_cfg, overrides = preflight(space, opts)
    optuna_url = samplers.storage_url(space, opts.results_dir, opts.optuna_storage)
    if not (opts.optuna_storage or space.sampler.storage):  # the default: optuna.db there
        Path(opts.results_dir).mkdir(parents=True, exist_ok=True)
    samplers.open_storage(optuna_url)  # a bad URL is one line now, not after the parent run
    data_input = dataset_input(space, base_cfg)
    _init_ray(opts, target)
    check_cluster_fits(space, target)  # before any MLflow run or Ray dir of this search
    storage.mkdir()
    trainable, max_conc = _trainable(space, opts)

    search_dir = resume_path or _new_search_dir(storage, space.name)
    search_id = search_dir.name
    num_samples = opts.num_samples or space.budget.num_samples
    max_epochs = base_cfg.optim.epochs
    if resume_path is None:
        _write_meta(search_dir, _search_meta(space, opts, tracker, num_samples, max_epochs),
                    storage)
    parent = tracker.search_run(search_id, search_id, tags={
        "family": space.family, "dataset": space.data_label, "metric": space.metric,
        "code_version": code_version(), "storage": storage.display,
        OBJECTIVES_TAG: encode(space.objective_pairs),
        "optuna_storage": samplers.redact(optuna_url), "optuna_study": search_id},
        params=_search_params(space, opts, num_samples, max_epochs, max_conc))
    if resume_path is not None:  # the parent keeps the version it started with
        tracker.set_tags(parent, {"code_version_resumed": code_version()})
    else:
        tracker.set_tags(parent, source_tags())
        tracker.log_dict(parent, space.model_dump(mode="json"), SPACE_ARTIFACT)
        if opts.space_file:
            tracker.log_artifact(parent, opts.space_file)
        if data_input:
            tracker.log_dataset(parent, **data_input)
    # what an MLflow outage kept from the server when the search ends (Tracker.close)
    spool = Path(opts.results_dir).resolve() / f"mlflow-spool-{search_id}.jsonl"
    hurry = False
    try:
        from ray import tune

        callback = MLflowTrialCallback(tracker.uri, tracker.experiment_name, search_id, parent,
                                       family=space.family, dataset=space.data_label,
                                       max_epochs=max_epochs, scheduler=space.scheduler,
                                       dataset_input=data_input)
        if resume_path is not None:
            tuner = tune.Tuner.restore(str(resume_path), trainable=trainable,
                                       resume_unfinished=True, resume_errored=True,
                                       storage_filesystem=storage.filesystem())
        else:
            tuner = _new_tuner(space, opts, trainable, callback, search_id, storage, overrides,
                               num_samples, max_epochs, max_conc, optuna_url)
        with _interruptible() as interrupt:
            grid = tuner.fit()
        sweep_staging()  # checkpoint dirs of trials killed on this node while reporting
        if interrupt.seen:  # resumable: the runs reopen with --resume
            unfinished = _close_unfinished(tracker, search_id)
        else:  # Tune ended them (time_budget_s): finished runs, with their checkpoints
            unfinished = 0
            finish_open_trials(tracker, search_id, grid, stopped_by=(
                "time_budget" if space.budget.time_budget_s else "tune"))
            _write_meta(search_dir, {**_read_meta(search_dir, storage), "finished": True},
                        storage)
        errors = failed_trials(grid)  # raised, or ended by the trainable with an error
        stopped = tracker.count_runs(search_id=search_id, role="trial", stopped_early="true")
        best = _best_of(grid, space)
        tracker.log_metrics(parent, {"num_trials": len(grid), "num_errors": errors,
                                     "num_stopped_early": stopped,
                                     **({f"best_{space.metric}": best["value"]} if best and
                                        best["value"] is not None else {})}, step=0)
        tracker.end_run(parent, "KILLED" if interrupt.seen else
                        "FINISHED" if errors < len(grid) else "FAILED")
        return SearchOutcome(search_id, tracker.experiment_name, tracker.uri, parent, len(grid),
                             errors, stopped, best, time.time() - t0, unfinished, interrupt.seen)
    except BaseException as e:
        # whatever escapes fit (a callback, the searcher, the store, a second Ctrl+C) must not
        # leave the search's runs RUNNING forever
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        hurry = isinstance(e, KeyboardInterrupt)  # a second Ctrl+C: no waiting on the server
        cause = hpsearch_cause(e)  # a callback's HpsearchError reaches us inside a TuneError
        # each on its own: a failing read in the first must not keep the parent RUNNING
        with contextlib.suppress(Exception):
            _close_unfinished(tracker, search_id, status)
        with contextlib.suppress(Exception):
            tracker.set_tags(parent, {"error": (str(cause) if cause is not None else
                                                f"{type(e).__name__}: {e}")[:4000]})
        with contextlib.suppress(Exception):
            tracker.end_run(parent, status)
        if cause is not None and cause is not e:
            raise cause from None  # the CLI prints it as one line
        raise
    finally:
        tracker.close(spool, wait=not hurry)


SPACE_ARTIFACT = "space.json"  # the validated space, on the parent run


def dataset_input(space: SearchSpace, cfg: Any) -> dict[str, Any] | None:
    """``Tracker.log_dataset``'s arguments for the image dataset of a search (None for the
    label-only families, which read a label source instead): its name, digest, source and
    split sizes (:func:`hpsearch.data.base.dataset_profile`). The data loads from the cache
    the pre-flight built."""
    if space.dataset is None:
        return None
    prof = dataset_profile(load_dataset(cfg.data), cfg.data)
    return {**prof, "source": cfg.data.root or f"embedded:{cfg.data.name}"}


def _train_env_defaults() -> None:
    """Ray Train / Tune settings a search needs unless the user set them."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # a loaded node can take over Train's default 60 s to start a worker group
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune saves its experiment state (what --resume restores: trials, their checkpoints, the
    # searcher) at most every 10 s by default; a driver killed in between forgets what
    # happened since. 1 s narrows that window at a small cost per save.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")


def where_to_run(opts: SearchOptions) -> tuple[Target, Storage]:
    """The cluster and the storage of a search, checked before anything is written: the
    address has a known form and answers (and accepts this process's token), the results
    dir and the storage can be written. One-line errors."""
    target = cluster.parse_address(opts.address)
    # something goes to results_dir (MLflow's store, Tune's state, the Optuna study)
    if opts.tracking_uri is None or opts.storage is None or opts.optuna_storage is None:
        cluster.check_writable_dir(Path(opts.results_dir), "--results-dir")
    storage = Storage.parse(opts.storage, opts.results_dir)
    if opts.storage is not None:
        storage.check()
    cluster.probe(target)
    return target, storage


def worker_env() -> dict[str, str]:
    """The environment variables the driver hands every worker: its ``RAY_TRAIN_*`` and
    ``HPSEARCH_*`` (Train's controller and workers read these; a remote cluster gets them this
    way), plus ``HPSEARCH_SHARED`` pinned to the driver's reference-data folder when it has one.
    A worker runs hpsearch from Ray's ``py_modules`` copy, so "the folder beside the repo" seen
    from there is not the driver's: without the pin, a space's ``../shared/...`` path resolves
    on the driver and fails in every trial. A cluster whose nodes keep the data elsewhere sets
    ``HPSEARCH_SHARED`` itself (it is passed on unchanged)."""
    env = {k: v for k, v in os.environ.items() if k.startswith(("RAY_TRAIN_", "HPSEARCH_"))}
    if "HPSEARCH_SHARED" not in env and shared_dir().is_dir():
        env["HPSEARCH_SHARED"] = str(shared_dir().resolve())
    return env


def _init_ray(opts: SearchOptions, target: Target | None = None) -> None:
    """Join the cluster ``target`` (default: from ``opts.address``), or start a private local
    one, unless Ray is up already. The job ships this hpsearch to the workers."""
    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ray.is_initialized():
        return
    if target is None:
        target = cluster.parse_address(opts.address)
        cluster.probe(target)
    cluster.say(cluster.ignored_env_line(target))
    env = worker_env()
    with cluster.init_environ(target) as workers_env, \
            cluster.runtime_env({**env, **workers_env}) as runtime_env:
        try:
            if target.kind == "local":
                ray.init(address="local", log_to_driver=opts.verbose > 1,
                         include_dashboard=None, runtime_env=runtime_env)
            else:
                ray.init(address=target.init_address, log_to_driver=opts.verbose > 1,
                         runtime_env=runtime_env)
        except (ConnectionError, RuntimeError, ValueError) as e:
            if target.kind == "local":
                raise
            raise cluster.init_error(target, e) from e


def check_cluster_fits(space: SearchSpace, target: Target) -> None:
    """Refuse a trial that no node of the connected cluster can ever hold (one line); a
    configured autoscaler may add such a node, so then the line is only printed."""
    nodes = cluster.alive_nodes()
    if nodes is None:  # not connected to a real cluster (a test double): nothing to check
        return
    where = target.describe()
    scaler = cluster.configured_autoscaler() if target.kind != "local" else None
    cluster.say(cluster.check_fits(space.resources, nodes, where, scaler))


def _trainable(space: SearchSpace, opts: SearchOptions) -> tuple[Any, int]:
    """The trainable with the resources one trial holds, and how many trials run at once."""
    from ray import tune

    r = space.resources
    per_trial = ({"cpu": r.driver_cpus} if r.trainer_path else
                 {"cpu": r.cpus_per_trial, "gpu": r.gpus_per_trial})
    need = ({"cpu": r.driver_cpus + r.num_workers * r.cpus_per_worker,
             "gpu": r.num_workers * r.gpus_per_worker} if r.trainer_path else per_trial)
    trainable = tune.with_resources(tune_trainable, {k: v for k, v in per_trial.items() if v})
    return trainable, _max_concurrent(space, opts, need)


def _search_params(space: SearchSpace, opts: SearchOptions, num_samples: int, max_epochs: int,
                   max_conc: int) -> dict[str, Any]:
    """The parent run's params: the search's settings and every searched dimension."""
    return {"space": space.name, "num_samples": num_samples, "max_epochs": max_epochs,
            "scheduler": space.scheduler, "sampler": space.sampler.type,
            "grace_period": space.budget.grace_period,
            "reduction_factor": space.budget.reduction_factor,
            "objectives": ",".join(f"{m}:{mode}" for m, mode in space.objective_pairs),
            "points_to_evaluate": len(space.points_to_evaluate),
            "sampler.seed": space.sampler.seed if opts.seed is None else opts.seed,
            "max_concurrent": max_conc,
            **{f"search.{k}": v.model_dump_json(exclude_none=True)
               for k, v in space.search.items()}}


def _best_of(grid: Any, space: SearchSpace) -> dict[str, Any] | None:
    """The best trial of a finished ``fit`` by its best epoch (None when no trial reported)."""
    try:
        b = grid.get_best_result(metric=space.metric, mode=space.mode, scope="all")
    except RuntimeError:  # Tune: no trial reported the metric
        return None
    m = b.metrics or {}  # a lone trial is returned even when it reported nothing
    if f"best_{space.metric}" not in m and space.metric not in m:
        return None
    return {"metric": space.metric,  # best epoch of the best trial, not its last one
            "value": m.get(f"best_{space.metric}", m.get(space.metric)),
            "config": {k: v for k, v in (b.config or {}).items() if not k.startswith("__")},
            "trial_id": m.get("trial_id")}


def _new_tuner(space: SearchSpace, opts: SearchOptions, trainable: Any, callback: Any,
               search_id: str, storage: Storage, overrides: dict[str, Any], num_samples: int,
               max_epochs: int, max_conc: int, optuna_url: str) -> Any:
    """The ``tune.Tuner`` of a new search: the space's seeded Optuna sampler with its study in
    the storage at ``optuna_url`` (named ``search_id``), its Tune scheduler, warm-start points,
    the MLflow callback, checkpoints kept per trial."""
    from ray import tune

    carried = constants(space.base_tree(overrides), storage.uri("train"))
    seed = space.sampler.seed if opts.seed is None else opts.seed
    searcher = samplers.make_searcher(space, DefineByRun(space, carried), seed, max_conc,
                                      search_id, optuna_url)
    scheduler = samplers.make_scheduler(space, max_epochs)
    # one compact view (in place on a terminal, one line per event in logs), not Tune's
    # reprinted tables
    reporter = LiveView(metric=space.metric, mode=space.mode, searched=list(space.search),
                        num_samples=num_samples, max_epochs=max_epochs,
                        max_concurrent=max_conc, search=search_id, tty=sys.stdout.isatty())
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric=space.metric, mode=space.mode,
                                    search_alg=searcher, scheduler=scheduler,
                                    num_samples=num_samples, max_concurrent_trials=max_conc,
                                    time_budget_s=space.budget.time_budget_s,
                                    trial_name_creator=trial_name,
                                    trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(
            name=search_id, **storage.tune_kwargs(), callbacks=[callback],
            progress_reporter=reporter, verbose=opts.verbose,
            failure_config=tune.FailureConfig(max_failures=space.resources.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )
    return tuner


@dataclass
class _Interrupt:
    seen: bool = False


@contextlib.contextmanager
def _interruptible():
    """Around ``Tuner.fit``: treat SIGTERM (what Slurm, Kubernetes and ``kill`` send first) like
    Ctrl+C, so Tune's SIGINT handler saves the experiment state and stops, the search can be
    continued with ``--resume`` and its MLflow runs are closed instead of the process dying
    with runs left RUNNING; and tell afterwards whether the search was interrupted.

    Tune installs its SIGINT handler when ``fit`` starts and puts the previous one back only
    when it receives the signal, so a handler equal to the previous one after ``fit`` means
    Tune was interrupted (unless ``TUNE_DISABLE_SIGINT_HANDLER`` kept it from installing
    one). The previous SIGINT handler is restored either way. Main thread only (signal
    handlers cannot be set elsewhere)."""
    state = _Interrupt()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    sigint_before = signal.getsignal(signal.SIGINT)

    def on_term(*_: Any) -> None:
        if state.seen:  # scancel signals the driver and the batch script forwards it again
            return
        state.seen = True
        signal.raise_signal(signal.SIGINT)

    term_before = signal.signal(signal.SIGTERM, on_term)
    try:
        yield state
    finally:
        signal.signal(signal.SIGTERM, term_before)
        tune_handles = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") in ("", "0")
        if tune_handles and signal.getsignal(signal.SIGINT) is sigint_before:
            state.seen = True
        signal.signal(signal.SIGINT, sigint_before)


def _close_unfinished(tracker: Tracker, search_id: str, status: str = "KILLED") -> int:
    """After ``fit`` returns: the trial runs of this search still RUNNING in MLflow belong to
    trials an interruption (Ctrl+C, SIGTERM) left unfinished (the callback closes every trial
    that completes or fails; trials not started yet have no run). Mark them ``status``
    (``KILLED``: ``--resume`` reopens the same runs; ``FAILED`` when the search itself
    failed) and return how many there were."""
    open_runs = tracker.open_trial_runs(search_id)
    for rid in open_runs:
        tracker.end_run(rid, status)
    return len(open_runs)


def search_tracker(uri: str, experiment: str, results_dir: str | Path) -> Tracker:
    """The tracker of a search. A local SQLite store keeps artifacts beside it
    (``results_dir/mlruns``); a server or a file store chooses its own artifact location (a
    local path would be wrong for a server's other users, and inside a file store's root it
    reads as a malformed experiment)."""
    local = uri.startswith("sqlite:")
    return Tracker(uri, experiment, artifact_root=Path(results_dir) / "mlruns" if local else None)


def trial_name(trial: Any) -> str:
    """Trial name and directory: ``tune_trainable_<id>``. Tune's default appends the config,
    which here is the constants every trial shares (the sampled values live in Optuna), so
    it only made names long, not distinguishable. Module-level: Tune pickles it to resume."""
    return f"{trial.trainable_name}_{trial.trial_id}"


SEARCH_META = "hpsearch-search.json"  # in the search's Ray dir: the options it was started with
# the options a resumed search takes from its start (Tune restores the trials, the searcher
# and the callbacks as they were pickled; different values would be silently ignored)
RESUME_KEYS = ("experiment", "tracking_uri", "num_samples", "max_epochs", "seed", "data_root")


def _search_id_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(name)}-\d{{8}}-\d{{6}}(?:-\d+)?")


def _new_search_dir(storage: Storage | Path, name: str) -> Any:
    """Claim ``<name>-<YYYYmmdd-HHMMSS>[-n]`` (atomically on a local storage): two searches of
    one space started in the same second into one storage get two ids, not one shared Ray dir
    and run. A :class:`~pathlib.Path` for a local storage, else a ``PurePosixPath`` of the
    storage's filesystem."""
    storage = Storage.coerce(storage)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 10_000):
        d = storage.new_dir(f"{name}-{stamp}" if n == 1 else f"{name}-{stamp}-{n}")
        if d is not None:
            return d
    raise HpsearchError(f"could not create a new search directory under {storage}")


def _search_meta(space: SearchSpace, opts: SearchOptions, tracker: Tracker,
                 num_samples: int, max_epochs: int) -> dict[str, Any]:
    return {"space": space.name, "space_json": space.model_dump_json(),
            "experiment": tracker.experiment_name, "tracking_uri": tracker.uri,
            "num_samples": num_samples, "max_epochs": max_epochs,
            "seed": space.sampler.seed if opts.seed is None else opts.seed,
            "data_root": _abs_data_root(opts), "finished": False}


def _abs_data_root(opts: SearchOptions) -> str | None:
    return str(Path(opts.data_root).resolve()) if opts.data_root else None


def _write_meta(search_dir: PurePath, meta: dict[str, Any],
                storage: Storage | None = None) -> None:
    Storage.coerce(storage or Path(search_dir).parent).write_text(
        search_dir / SEARCH_META, json.dumps(meta, indent=1))


def _read_meta(search_dir: PurePath, storage: Storage | None = None) -> dict[str, Any]:
    text = Storage.coerce(storage or Path(search_dir).parent).read_text(search_dir / SEARCH_META)
    return json.loads(text) if text else {}


def _resumable(storage: Storage | Path, name: str) -> tuple[Any, dict[str, Any]]:
    """The newest unfinished search of space ``name`` in ``storage`` (a local path or a URI's
    filesystem) and its stored options.

    Only ids of exactly this space match (``demo`` does not pick up ``demo-x-<stamp>``); a
    search that ended (all trials done, or its time budget spent) is not resumed."""
    from ray import tune

    storage = Storage.coerce(storage)
    pat = _search_id_pattern(name)
    cands = [p for p, _ in sorted(((p, t) for p, t in storage.dirs() if pat.fullmatch(p.name)),
                                  key=lambda pt: pt[1], reverse=True)]
    done = []
    for p in cands:
        meta = _read_meta(p, storage)
        if meta.get("finished"):
            done.append(p.name)
        elif tune.Tuner.can_restore(str(p), storage_filesystem=storage.filesystem()):
            return p, meta
    if done:
        raise ConfigError(f"--resume: every search named {name!r} under {storage} has finished "
                          f"(newest: {done[0]}); start a new one without --resume")
    raise ConfigError(f"--resume: no earlier search named {name!r} under {storage}; start one "
                      "without --resume (or pass the --results-dir it used)")


def _resume_options(space: SearchSpace, opts: SearchOptions, meta: dict[str, Any],
                    search_id: str) -> SearchOptions:
    """Options of a resumed search: the stored ones. A flag that asks for something else, or
    an edited space file, is refused instead of being silently ignored."""
    if not meta:  # started before options were stored: nothing to check against
        return opts
    if meta.get("space_json") not in (None, space.model_dump_json()):
        raise ConfigError(f"--resume: the space file changed since {search_id} started; a "
                          "resumed search runs the space it started with: restore the file "
                          "or start a new search without --resume")
    # RESUME_KEYS are SearchOptions fields; data_root compared as an absolute path
    asked = {**{k: getattr(opts, k) for k in RESUME_KEYS}, "data_root": _abs_data_root(opts)}
    for key in RESUME_KEYS:
        if asked[key] is not None and key in meta and asked[key] != meta[key]:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"--resume: {search_id} was started with {flag} {meta[key]}; "
                              f"it cannot continue with {flag} {asked[key]} (drop the flag, "
                              "or start a new search without --resume)")
    return dataclasses.replace(opts, **{k: meta.get(k) for k in RESUME_KEYS})
