"""Search-space YAML -> validated :class:`SearchSpace` (no Ray here).

A space names the family and dataset, fixes values with dotted keys, and declares searched
dimensions (log-uniform, uniform, int, categorical), optionally conditional on other
dimensions (``when``). Everything is checked when loaded: unknown keys, empty ranges, unknown
families/datasets/metrics, non-positive budgets -> :class:`ConfigError` naming the key.

Example::

    name: per_level_demo
    family: per_level
    dataset: synthetic
    fixed: {optim.epochs: 6, model.backbone: small_cnn}
    search:
      optim.lr: {type: loguniform, low: 1.0e-3, high: 0.3}
      optim.optimizer: {type: categorical, choices: [sgd, adam]}
      optim.momentum: {type: uniform, low: 0.5, high: 0.99, when: {optim.optimizer: sgd}}
    metric: val_micro_f1
    mode: max
    tie_break: val_macro_f1     # optional: decides between epochs/runs with an equal metric
    budget: {num_samples: 8, max_epochs: 6, grace_period: 1}
    resources: {cpus_per_trial: 1}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hpsearch.config import ResourceConfig, one_line
from hpsearch.data import DATASETS
from hpsearch.errors import ConfigError
from hpsearch.models import FAMILIES
from hpsearch.search.codec import decode_choice, encode_choice, resolve
from hpsearch.tasks import TASKS, TrialConfig


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Dimension(_Strict):
    type: Literal["loguniform", "uniform", "int", "logint", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: list[Any] | None = None
    when: dict[str, Any] | None = None  # {other.key: value | [values]}: searched only then

    @model_validator(mode="after")
    def _check(self) -> Dimension:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None:
                raise ValueError("categorical takes 'choices', not low/high")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type} takes 'low' and 'high', not 'choices' (use type: "
                             "categorical to pick from a list)")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs 'low' and 'high'")
        if not self.low < self.high:
            raise ValueError(f"empty range: `low < high` must hold, but got (low={self.low}, "
                             f"high={self.high})")
        if self.type in ("loguniform", "logint") and self.low <= 0:
            raise ValueError(f"{self.type} needs low > 0, got {self.low}")
        if self.type in ("int", "logint"):
            for name, v in (("low", self.low), ("high", self.high), ("step", self.step)):
                if v is not None and not float(v).is_integer():
                    raise ValueError(f"{self.type} needs whole numbers, got {name}={v}")
        if self.step is not None:
            if self.step <= 0:
                raise ValueError(f"step must be > 0, got {self.step}")
            if self.type in ("loguniform", "logint") and self.step != 1:
                raise ValueError(f"{self.type} samples on a log scale and takes no step (got "
                                 f"step={self.step}); use {self.type.removeprefix('log')} "
                                 "for a stepped range")
            n = (self.high - self.low) / self.step
            if self.type != "logint" and abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
                raise ValueError(f"step={self.step} does not divide high - low = "
                                 f"{self.high - self.low}; make high = low + k * step")
        return self

    def ends(self) -> list[Any]:
        """Values to validate the key against TrialConfig: every choice, or both range ends."""
        if self.type == "categorical":
            return list(self.choices or [])
        if self.type in ("int", "logint"):
            return [int(self.low), int(self.high)]  # type: ignore[arg-type]
        return [self.low, self.high]

    def admits(self, value: Any) -> bool:
        """Whether sampling this dimension can give ``value`` (for ``when`` clauses)."""
        if self.type == "categorical":
            return any(value == c for c in self.choices or [])
        return (isinstance(value, int | float) and not isinstance(value, bool)
                and self.low <= value <= self.high)  # type: ignore[operator]


class Budget(_Strict):
    num_samples: int = Field(8, gt=0)  # trials
    max_epochs: int = Field(6, gt=0)  # epochs of a trial that is never stopped early
    grace_period: int = Field(1, gt=0)  # ASHA: epochs before a trial may be stopped
    reduction_factor: float = Field(2.0, gt=1)  # ASHA: keep the top 1/eta at each rung
    max_concurrent: int | None = Field(None, gt=0)  # default: what the cluster fits
    time_budget_s: float | None = Field(None, gt=0)


# Optuna's samplers a space can name (hpsearch.search.samplers builds them); which of them
# handle several objectives at once
SAMPLERS = ("tpe", "random", "cmaes", "gp", "grid", "nsga2", "qmc")
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "random", "gp", "grid", "nsga2", "qmc")
SCHEDULERS = ("asha", "hyperband", "median", "fifo")
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql")


class Sampler(_Strict):
    type: Literal["tpe", "random", "cmaes", "gp", "grid", "nsga2", "qmc"] = "tpe"
    seed: int = 0
    n_startup_trials: int = Field(4, ge=0)  # tpe, gp, cmaes: random trials before modelling
    multivariate: bool = True  # tpe: one joint density over the dimensions
    # tpe: trials running in parallel count as bad guesses while they run, so concurrent
    # trials are not all sent to the same spot (None: on when more than one runs at once)
    constant_liar: bool | None = None
    population_size: int = Field(8, ge=2)  # nsga2: individuals per generation
    # where the Optuna study lives (None: sqlite beside MLflow's store in --results-dir);
    # optuna-dashboard, optuna.visualization and 'hpsearch report' read it from there
    storage: str | None = None

    @model_validator(mode="after")
    def _check_storage(self) -> Sampler:
        if self.storage is not None:
            scheme = self.storage.split(":", 1)[0].split("+", 1)[0]
            if scheme not in STORAGE_SCHEMES or "://" not in self.storage:
                raise ValueError(f"storage {self.storage!r}: an Optuna RDB storage URL is "
                                 f"needed ({', '.join(s + '://...' for s in STORAGE_SCHEMES)})")
        return self


class Objective(_Strict):
    metric: str
    mode: Literal["max", "min"] = "max"


class SearchSpace(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    family: str
    # the image dataset; label-only families read data.params.label_source instead (omit it)
    dataset: str | None = None
    fixed: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Dimension] = Field(default_factory=dict)
    metric: str | None = None  # default: the family's task's (TaskSpec.default_metric)
    mode: Literal["max", "min"] = "max"
    tie_break: str | None = None  # second criterion when `metric` ties (best epoch and best run)
    tie_break_mode: Literal["max", "min"] = "max"
    # several objectives at once (e.g. micro vs macro F1): Optuna gets every one's value at
    # the best epoch of the first, the search's result is their Pareto front; the first is
    # `metric` (it picks each trial's best epoch and drives early stopping)
    objectives: list[Objective] | None = None
    # asha (async successive halving), hyperband (synchronous; with TPE, BOHB-style), median
    # (median stopping rule), fifo (no early stopping)
    scheduler: Literal["asha", "hyperband", "median", "fifo"] = "asha"
    sampler: Sampler = Field(default_factory=Sampler)
    # warm start: configurations the search tries first ({searched.key: value}; a key left
    # out is sampled), e.g. the defaults of a paper
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)
    budget: Budget = Field(default_factory=Budget)
    resources: ResourceConfig = Field(default_factory=ResourceConfig)
    description: str = ""

    # ------------------------------------------------------------------ resolution
    def base_tree(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Fixed values + family/dataset/metric/resources as a flat dotted dict."""
        flat: dict[str, Any] = {
            "model.family": self.family,
            "metric": self.metric, "mode": self.mode,
            "tie_break": self.tie_break, "tie_break_mode": self.tie_break_mode,
            "secondary_metrics": [o.metric for o in (self.objectives or [])[1:]],
            "optim.epochs": self.budget.max_epochs,
            **{f"resources.{k}": v for k, v in self.resources.model_dump().items()},
        }
        if self.dataset is not None:
            flat["data.name"] = self.dataset
        flat.update(self.fixed)
        flat.update(overrides or {})
        return flat

    def resolve(self, sampled: dict[str, Any], overrides: dict[str, Any] | None = None
                ) -> TrialConfig:
        """The trial config of ``sampled`` values (as Optuna stores them) in this space."""
        return resolve(self.base_tree(overrides), sampled)

    @property
    def objective_pairs(self) -> list[tuple[str, str]]:
        """``[(metric, mode), ...]``: every objective, the primary first (one when single)."""
        if self.objectives:
            return [(o.metric, o.mode) for o in self.objectives]
        return [(str(self.metric), self.mode)]

    @property
    def multi_objective(self) -> bool:
        return len(self.objective_pairs) > 1

    @property
    def data_label(self) -> str:
        """What the space trains on, for tags and tables: the dataset, or the label source."""
        if self.dataset:
            return self.dataset
        params = self.fixed.get("data.params")
        src = (params.get("label_source") if isinstance(params, dict) else
               self.fixed.get("data.params.label_source"))
        return f"labels:{src}" if src else "synthetic"


def load_space(path: str | Path, *, check_registries: bool = True) -> SearchSpace:
    """Read and validate a search-space YAML file (one-line :class:`ConfigError` on failure)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} malformed YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    return validate_space(raw, where=str(path), check_registries=check_registries)


def validate_space(raw: dict[str, Any], *, where: str = "search space",
                   check_registries: bool = True) -> SearchSpace:
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{where}: {one_line(e, SearchSpace)}") from None
    space = _check_objectives(space, where)
    if space.metric is None and space.family in FAMILIES:
        task = TASKS.get(FAMILIES.get(space.family).task)
        space = space.model_copy(update={"metric": task.default_metric})
    if check_registries:
        if space.family not in FAMILIES:
            raise ConfigError(f"{where}: family: unknown model family {space.family!r}; "
                              f"allowed: {', '.join(FAMILIES.names())}")
        if space.dataset is not None and space.dataset not in DATASETS:
            raise ConfigError(f"{where}: dataset: unknown dataset {space.dataset!r}; "
                              f"allowed: {', '.join(DATASETS.names())}")
    for key, dim in space.search.items():
        if key in space.fixed:
            raise ConfigError(f"{where}: search.{key}: also given in 'fixed'; keep one")
        for cond, want in (dim.when or {}).items():
            if cond not in space.search:
                raise ConfigError(f"{where}: search.{key}.when: {cond!r} is not a searched "
                                  f"dimension; allowed: {', '.join(space.search)}")
            other = space.search[cond]
            for w in (want if isinstance(want, list) else [want]):
                if not other.admits(w):
                    can = (f"one of {other.choices}" if other.type == "categorical" else
                           f"in [{other.low}, {other.high}]")
                    raise ConfigError(f"{where}: search.{key}.when: {cond} = {w!r} can never "
                                      f"be sampled ({cond} is {can}), so {key} would never "
                                      "be searched")
    _check_sampler(space, where)
    _check_points(space, where)
    # the fixed values alone (every searched key at its default): an error naming a fixed key
    # is that key's, not the searched value's that happens to be resolved with it
    fixed_error = _fixed_error(space)
    # every key must resolve into a valid TrialConfig (and valid family params): each choice
    # or both ends of a range, tried together with the values its 'when' clause needs
    for key, dim in space.search.items():
        for i, v in enumerate(dim.ends()):
            what = (f"search.{key}.choices[{i}]={v!r}" if dim.type == "categorical" else
                    f"search.{key}.{('low', 'high')[i]}={v!r}")
            sample = {c: (w[0] if isinstance(w, list) else w)
                      for c, w in (dim.when or {}).items()}
            sample[key] = v
            try:
                space.resolve({k: encode_choice(x) for k, x in sample.items()})
            except ConfigError as e:
                if fixed_error is not None and str(e) == fixed_error:
                    raise ConfigError(f"{where}: fixed.{e}") from None
                raise ConfigError(f"{where}: {what} is not a valid value: {e}") from None
    if not space.search:
        try:
            space.resolve({})
        except ConfigError as e:
            raise ConfigError(f"{where}: {'fixed.' if fixed_error else ''}{e}") from None
    return space


def _check_objectives(space: SearchSpace, where: str) -> SearchSpace:
    """``objectives`` sets ``metric``/``mode`` to its first entry (a ``metric`` given beside it
    must be that one); at least two, all different."""
    if space.objectives is None:
        return space
    names = [o.metric for o in space.objectives]
    if len(names) < 2:
        raise ConfigError(f"{where}: objectives: a multi-objective search needs at least two; "
                          "for one, give 'metric' and 'mode' instead")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: objectives: {names} names a metric twice")
    first = space.objectives[0]
    if space.metric is not None and space.metric != first.metric:
        raise ConfigError(f"{where}: metric: {space.metric!r} differs from the first objective "
                          f"{first.metric!r}; drop 'metric' (the first objective is the primary "
                          "one) or list it first")
    for o in space.objectives:
        if not o.metric.startswith("val_"):
            raise ConfigError(f"{where}: objectives: {o.metric!r} must be a validation metric "
                              "such as 'val_macro_f1'")
    return space.model_copy(update={"metric": first.metric, "mode": first.mode})


def _check_sampler(space: SearchSpace, where: str) -> None:
    kind = space.sampler.type
    if space.multi_objective and kind not in MULTI_OBJECTIVE_SAMPLERS:
        allowed = ", ".join(MULTI_OBJECTIVE_SAMPLERS)
        raise ConfigError(f"{where}: sampler.type: {kind!r} optimises one objective; a "
                          f"multi-objective search takes one of {allowed} (nsga2 or tpe are "
                          "the usual ones)")
    if kind == "grid":
        if not space.search:
            raise ConfigError(f"{where}: sampler.type: grid needs searched dimensions")
        for key, dim in space.search.items():
            if dim.type not in ("categorical", "int") or (
                    dim.type == "int" and (dim.high - dim.low) / (dim.step or 1) > 1000):
                raise ConfigError(f"{where}: search.{key}: a grid search enumerates values; "
                                  f"give {key} as 'type: categorical' with its grid points "
                                  "(or a small int range)")
        if space.points_to_evaluate:
            raise ConfigError(f"{where}: points_to_evaluate: a grid search visits every point "
                              "of its grid already; drop points_to_evaluate")


def grid_values(space: SearchSpace) -> dict[str, list[Any]]:
    """Optuna's ``GridSampler`` search space: every value of every searched dimension, as the
    define-by-run suggests them (categorical choices encoded)."""
    out: dict[str, list[Any]] = {}
    for key, dim in space.search.items():
        if dim.type == "categorical":
            out[key] = [encode_choice(c) for c in dim.choices or []]
        else:
            out[key] = list(range(int(dim.low), int(dim.high) + 1, int(dim.step or 1)))
    return out


def _check_points(space: SearchSpace, where: str) -> None:
    """Every warm-start point names searched keys with values their dimension can take."""
    for i, point in enumerate(space.points_to_evaluate):
        for key, value in point.items():
            if key not in space.search:
                raise ConfigError(f"{where}: points_to_evaluate[{i}]: {key!r} is not a searched "
                                  f"dimension; allowed: {', '.join(space.search)}")
            if not space.search[key].admits(value):
                dim = space.search[key]
                can = (f"one of {dim.choices}" if dim.type == "categorical" else
                       f"in [{dim.low}, {dim.high}]")
                raise ConfigError(f"{where}: points_to_evaluate[{i}]: {key}={value!r} is not "
                                  f"in the space ({key} is {can})")
        try:
            space.resolve(encoded_point(point))
        except ConfigError as e:
            raise ConfigError(f"{where}: points_to_evaluate[{i}] is not a valid config: "
                              f"{e}") from None


def encoded_point(point: dict[str, Any]) -> dict[str, Any]:
    """A warm-start point as Optuna stores its values (categorical choices encoded)."""
    return {k: encode_choice(v) for k, v in point.items()}


def _fixed_error(space: SearchSpace) -> str | None:
    """The error of resolving ``space`` with nothing sampled, when it names a ``fixed`` key
    (``optim.bogus: unknown key``) or a key below one (``model.params.bogus`` under a fixed
    ``model.params``); None when the fixed values resolve or the error is another key's."""
    try:
        space.resolve({})
    except ConfigError as e:
        key = str(e).split(":", 1)[0]
        if any(key == k or key.startswith(f"{k}.") for k in space.fixed):
            return str(e)
    return None



def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """Define-by-run for Optuna: sample every active dimension into ``trial``.

    Conditional dimensions are sampled only when their ``when`` clause holds, so Optuna's TPE
    models them in their own sub-space. Returns nothing (Ray reads ``trial.params``).
    """
    values: dict[str, Any] = {}
    pending = dict(space.search)
    while pending:
        progressed = False
        for key, dim in list(pending.items()):
            conds = dim.when or {}
            if any(c in pending for c in conds):
                continue  # decide after its conditions
            del pending[key]
            progressed = True
            if not all(_matches(values.get(c, _MISSING), v) for c, v in conds.items()):
                continue
            values[key] = _suggest_one(trial, key, dim)
        if not progressed:
            raise ConfigError(f"search: circular 'when' conditions among {sorted(pending)}")
    return values


class DefineByRun:
    """Picklable define-by-run callable for ``OptunaSearch(space=...)``: samples the space and
    returns the constants every trial carries (Tune pickles the searcher to resume it)."""

    def __init__(self, space: SearchSpace, constants: dict[str, Any]) -> None:
        self.space, self.constants = space, constants

    def __call__(self, trial: Any) -> dict[str, Any]:
        suggest(trial, self.space)
        return self.constants


_MISSING = object()


def _matches(actual: Any, expected: Any) -> bool:
    if actual is _MISSING:
        return False
    actual = decode_choice(actual)
    options = expected if isinstance(expected, list) else [expected]
    return any(actual == o for o in options)


def _suggest_one(trial: Any, key: str, dim: Dimension) -> Any:
    if dim.type == "categorical":
        return trial.suggest_categorical(key, [encode_choice(c) for c in dim.choices])
    if dim.type in ("int", "logint"):
        return trial.suggest_int(key, int(dim.low), int(dim.high),  # type: ignore[arg-type]
                                 step=int(dim.step or 1), log=dim.type == "logint")
    if dim.type == "loguniform":
        return trial.suggest_float(key, dim.low, dim.high, log=True)
    return trial.suggest_float(key, dim.low, dim.high, step=dim.step)  # step divides (validated)

