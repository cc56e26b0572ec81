"""A space's sampler, scheduler and Optuna study, built from Optuna and Ray (none written here).

* samplers (``sampler.type``): Optuna's TPE (multivariate, constant liar), random, CMA-ES, GP
  (Optuna's own Gaussian-process sampler, torch + scipy), grid, NSGA-II, quasi-Monte Carlo;
* schedulers (``scheduler``): Ray Tune's ASHA, HyperBand (with TPE: BOHB-style, model-based
  sampling inside successive halving), the median stopping rule, FIFO;
* the study lives in an Optuna RDB storage (``sampler.storage``, default SQLite
  ``optuna.db`` beside MLflow's store), named after the search, so optuna-dashboard,
  ``optuna.visualization``, ``optuna.importance`` and ``hpsearch report`` read it while the
  search runs and after, without Ray's pickled searcher; a resumed search continues it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hpsearch.errors import ConfigError
from hpsearch.search.space import SearchSpace, grid_values

OPTUNA_DB = "optuna.db"


def storage_url(space: SearchSpace, results_dir: str | Path, override: str | None = None
                ) -> str:
    """The Optuna storage of a search: ``override`` (``--optuna-storage``), the space's
    ``sampler.storage``, else ``sqlite:///<results_dir>/optuna.db`` (absolute). Not MLflow's
    own database: both keep an ``alembic_version`` table, so they cannot share a schema."""
    url = override or space.sampler.storage
    if url:
        return url
    return f"sqlite:///{(Path(results_dir).resolve() / OPTUNA_DB)}"


def redact(url: str) -> str:
    """A storage URL without its password (for tags and logs)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_storage(url: str) -> Any:
    """Optuna's RDB storage at ``url`` (tables created on first use); a one-line
    :class:`ConfigError` when it cannot be opened."""
    import optuna

    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's many errors: one line for all
        raise ConfigError(f"Optuna storage {redact(url)}: cannot open it ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}); give a writable "
                          "sqlite:///PATH or a reachable postgresql:// URL") from None


def _engine_kwargs(url: str) -> dict[str, Any]:
    # SQLite: the driver writes alone, but dashboards read while it does; wait on locks
    return {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}


def make_sampler(space: SearchSpace, seed: int, concurrency: int) -> Any:
    """The Optuna sampler ``space.sampler`` names, seeded with ``seed``; ``concurrency`` (trials
    at once) turns TPE's constant liar on unless the space says otherwise."""
    import optuna

    s = space.sampler
    kind = s.type
    if kind == "tpe":
        liar = s.constant_liar if s.constant_liar is not None else concurrency > 1
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=s.n_startup_trials, multivariate=s.multivariate,
            group=s.multivariate and any(d.when for d in space.search.values()),
            constant_liar=liar)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "cmaes":
        try:
            import cmaes  # noqa: F401 - Optuna's CMA-ES sampler needs it
        except ImportError:
            raise ConfigError("sampler.type: cmaes needs the 'cmaes' package; pip install "
                              "cmaes") from None
        # categorical and conditional dimensions: sampled independently (random), as Optuna
        # documents; CMA-ES models the continuous ones jointly
        return optuna.samplers.CmaEsSampler(
            seed=seed, n_startup_trials=s.n_startup_trials, warn_independent_sampling=False,
            independent_sampler=optuna.samplers.RandomSampler(seed=seed))
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.n_startup_trials)
    if kind == "grid":
        return optuna.samplers.GridSampler(grid_values(space), seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=s.population_size)
    if kind == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    raise ConfigError(f"sampler.type: unknown sampler {kind!r}")  # validated before


def grid_size(space: SearchSpace) -> int:
    """How many points a grid search has (the product of every dimension's values)."""
    n = 1
    for values in grid_values(space).values():
        n *= len(values)
    return n


def make_scheduler(space: SearchSpace, max_epochs: int) -> Any:
    """Ray Tune's trial scheduler for ``space.scheduler``, in epochs (``time_attr="epoch"``,
    so rungs stay in epochs with ``optim.eval_every`` > 1). The metric and mode come from the
    ``TuneConfig`` (the primary objective)."""
    from ray.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        HyperBandScheduler,
        MedianStoppingRule,
    )

    b = space.budget
    grace = min(b.grace_period, max_epochs)
    if space.scheduler == "asha":
        return ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=grace,
                             reduction_factor=b.reduction_factor)
    if space.scheduler == "hyperband":
        # synchronous brackets: trials pause at a rung and resume from their checkpoint
        return HyperBandScheduler(time_attr="epoch", max_t=max_epochs,
                                  reduction_factor=b.reduction_factor)
    if space.scheduler == "median":
        return MedianStoppingRule(time_attr="epoch", grace_period=grace,
                                  min_samples_required=3)
    return FIFOScheduler()


def make_searcher(space: SearchSpace, define_by_run: Any, seed: int, concurrency: int,
                  study_name: str, storage_url: str) -> Any:
    """Ray Tune's ``OptunaSearch`` over ``define_by_run`` with the space's sampler, its study
    ``study_name`` in the storage at ``storage_url``, the warm-start points, told
    :func:`searcher_metrics`."""
    from hpsearch.search.space import encoded_point

    metric, mode = searcher_metrics(space)
    return _searcher_class()(
        space=define_by_run, metric=metric, mode=mode,
        sampler=make_sampler(space, seed, concurrency), study_name=study_name,
        storage=open_storage(storage_url),
        points_to_evaluate=[encoded_point(p) for p in space.points_to_evaluate] or None)


_SEARCHER: Any = None


def _searcher_class() -> Any:
    """``OptunaSearch`` that tells Optuna a trial's last result when Tune ends it without one.

    Tune's ``stop_trial`` completes a PAUSED trial (HyperBand pauses trials at each rung,
    then stops those that lost their bracket, or that reached the last rung, while paused)
    with ``result=None``, which ``OptunaSearch`` records as PRUNED without a value: a search
    under HyperBand had its best trials missing from the study's completed ones (seen here:
    2 of 4 trials, both better than the 2 COMPLETE ones). The last result a trial reported
    carries its ``best_<metric>`` values, what a trial ASHA stops while running is told."""
    global _SEARCHER
    if _SEARCHER is None:
        from ray.tune.search.optuna import OptunaSearch

        class TrialBestOptunaSearch(OptunaSearch):
            def on_trial_result(self, trial_id: str, result: dict) -> None:
                keys = self.metric if isinstance(self.metric, list) else [self.metric]
                last = getattr(self, "_hpsearch_last", None)
                if last is None:
                    last = self._hpsearch_last = {}
                last[trial_id] = {k: result[k] for k in keys if k in result}
                super().on_trial_result(trial_id, result)

            def on_trial_complete(self, trial_id: str, result: dict | None = None,
                                  error: bool = False) -> None:
                last = (getattr(self, "_hpsearch_last", None) or {}).pop(trial_id, None)
                if not result and not error and last:
                    result = last
                super().on_trial_complete(trial_id, result=result, error=error)

        # pickled by reference (Tune's tuner.pkl): found again through __getattr__ below
        TrialBestOptunaSearch.__module__ = __name__
        TrialBestOptunaSearch.__qualname__ = "TrialBestOptunaSearch"
        _SEARCHER = TrialBestOptunaSearch
    return _SEARCHER


def __getattr__(name: str) -> Any:
    if name == "TrialBestOptunaSearch":  # Ray is imported only when it is asked for
        return _searcher_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def searcher_metrics(space: SearchSpace) -> tuple[str | list[str], str | list[str]]:
    """What Optuna is told per trial: every objective's value at the trial's best epoch
    (``best_<metric>``), not the last epoch's, so a trial that peaked and then degraded (or was
    stopped after its peak) counts with what its checkpoint holds."""
    pairs = space.objective_pairs
    if len(pairs) == 1:
        return f"best_{pairs[0][0]}", pairs[0][1]
    return [f"best_{m}" for m, _ in pairs], [mode for _, mode in pairs]
