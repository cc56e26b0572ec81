"""The Python API a notebook (and the CLI) uses: train one config, rerun a tracked trial,
open a tracking store, restore a run's experiment, export it, draw its hedging curve.

Searches themselves are :func:`hpsearch.search.tuner.run_search` (imported where used: it
brings Ray); everything here runs with torch and the MLflow client.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpsearch.bundle import CUMULATIVE_FAMILIES, load_bundle, write_bundle
from hpsearch.data import load_dataset
from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.models import FAMILIES
from hpsearch.models.hedging import accuracy_specificity_curve
from hpsearch.provenance import code_version
from hpsearch.report import hedge_curve_csv, plot_hedge_curve, search_objectives
from hpsearch.search.objectives import pareto_front
from hpsearch.tasks import (
    TASKS,
    DirectoryReporter,
    Experiment,
    RunContext,
    TrialConfig,
    experiment_from_checkpoint,
    run_trial,
)
from hpsearch.tasks.base import config_cpus, trial_numerics
from hpsearch.tasks.checkpoint import BestSoFar
from hpsearch.tasks.classifier import ClassifierExperiment
from hpsearch.tasks.config import validate_trial
from hpsearch.tracking import CONFIG_ARTIFACT, TAG, Tracker, default_tracking_uri


def open_tracker(tracking_uri: str | None, results_dir: str | Path,
                 experiment: str | None) -> Tracker:
    """The tracker of an existing store (the SQLite store under ``results_dir`` by default),
    checked to answer; an :class:`HpsearchError` naming the URI when there is none."""
    uri = tracking_uri or default_tracking_uri(results_dir, create=False)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise HpsearchError(f"no tracking store at {uri}; run 'hpsearch search' first or pass "
                            "--tracking-uri")
    t = Tracker(uri, experiment or "default")
    t.check()
    return t


def default_metric(t: Tracker) -> str:
    """The selection metric of the experiment's task (``TaskSpec.default_metric``), read from
    the family of one of its trial runs; ``val_micro_f1`` for an experiment without any."""
    runs = t.runs(role="trial", max_results=1)
    family = runs[0].data.tags.get("hpsearch.family") if runs else None
    if family not in FAMILIES:
        return TASKS.get("classifier").default_metric
    return TASKS.get(FAMILIES.get(family).task).default_metric


def train(cfg: TrialConfig, out: str | Path, *, resume: bool = False,
          echo: Any = None, cpus: float | None = None) -> BestSoFar:
    """One trial in this process, no Ray, no MLflow; the checkpoint directory is ``out``.

    Torch's threads follow ``cfg.torch_threads``, else ``cpus``, else (``cfg.deterministic``)
    the config's CPUs; otherwise they are left as they are. ``cfg.deterministic`` also turns
    on deterministic kernels and seeds every generator
    (:func:`hpsearch.tasks.base.trial_numerics`); all of it is undone on return.
    """
    rep = DirectoryReporter(Path(out), echo=echo)
    with trial_numerics(cfg, cpus):
        return run_trial(cfg, rep, resume_from=Path(out) if resume else None)


# metrics that measure the machine, not the model: never compared between runs
TIMING_SUFFIXES = ("_time_s", "_per_s")


class _EnoughEpochs(Exception):
    """Raised by the rerun's reporter once it has as many epochs as the original run."""


@dataclass(frozen=True)
class Rerun:
    """A tracked trial retrained from its ``config.json``, beside the original.

    ``original`` and ``rerun`` are the metrics at each one's best epoch (what the original's
    checkpoint, export and ``test_*`` values are from, :meth:`Tracker.best_epoch_metrics`).
    """

    run_id: str
    cfg: TrialConfig
    epochs: int  # epochs retrained: as many as the original ran (an ASHA-stopped run's fewer)
    threads: int  # torch intra-op threads the rerun trained with
    out: Path  # the rerun's checkpoint directory
    original: dict[str, float]
    rerun: dict[str, float]
    code_then: str | None  # the original's hpsearch.code_version tag, when it has one
    code_now: str

    def compared(self) -> list[tuple[str, float, float]]:
        """(metric, original, rerun) for every finite metric both have, timings left out."""
        keys = sorted(k for k in set(self.original) & set(self.rerun)
                      if not k.endswith(TIMING_SUFFIXES)
                      and math.isfinite(self.original[k]) and math.isfinite(self.rerun[k]))
        return [(k, self.original[k], self.rerun[k]) for k in keys]

    @property
    def identical(self) -> bool:
        """Every compared metric equal, bit for bit (and at least one compared)."""
        rows = self.compared()
        return bool(rows) and all(a == b for _, a, b in rows)


def rerun(t: Tracker, run_id: str, out: str | Path, *,
          echo: Callable[[str], None] | None = None) -> Rerun:
    """Retrain run ``run_id``'s exact config (its ``config.json`` artifact) in this process,
    without Ray, for as many epochs as the original ran; checkpoints go to ``out``.

    Read-only on the tracking store: nothing is logged to the original run nor to a new
    one (export the rerun from ``out`` with the Python API if it is wanted). Torch's threads
    are pinned to the ones the trial had in its search (``torch_threads``, else the config's
    CPUs), so a CPU trial is reproduced bit for bit on the same hardware and software;
    with ``deterministic: true`` also on another machine load and thread setting.
    """
    run = t.get_run(run_id)
    raw = t.load_dict(run_id, CONFIG_ARTIFACT)
    if raw is None:
        raise HpsearchError(
            f"run {run_id} has no {CONFIG_ARTIFACT} artifact, so its exact config is unknown; "
            "only the trial runs of an hpsearch search log one ('hpsearch best' lists them)")
    try:
        cfg = validate_trial(raw)
    except ConfigError as e:
        raise ConfigError(f"run {run_id}: its {CONFIG_ARTIFACT} no longer validates with "
                          f"{code_version()}: {e}") from None
    if cfg.resources.num_workers > 1:
        raise HpsearchError(
            f"run {run_id} trained with {cfg.resources.num_workers} DDP workers "
            "(resources.num_workers); a rerun trains in one process and would not reproduce "
            "it")
    logged = run.data.metrics.get("epoch")
    epochs = min(int(logged), cfg.optim.epochs) if logged else cfg.optim.epochs
    use_gpu = cfg.resources.use_gpu and torch.cuda.is_available()
    ctx = RunContext(device=torch.device("cuda", 0) if use_gpu else torch.device("cpu"))
    rep = DirectoryReporter(Path(out), echo=echo)

    def report(metrics: dict[str, float], ckpt: Path | None) -> None:
        rep(metrics, ckpt)
        if metrics["epoch"] >= epochs:
            raise _EnoughEpochs

    with trial_numerics(cfg, config_cpus(cfg)) as threads:
        try:
            run_trial(cfg, report, ctx=ctx)
        except _EnoughEpochs:
            pass
    return Rerun(run_id=run_id, cfg=cfg, epochs=epochs, threads=threads, out=Path(out),
                 original=t.best_epoch_metrics(run), rerun=_best_epoch(rep.history),
                 code_then=run.data.tags.get(f"{TAG}code_version"), code_now=code_version())


def _best_epoch(history: list[dict[str, float]]) -> dict[str, float]:
    """A trial's metrics at its best epoch from its reports, as
    :meth:`Tracker.best_epoch_metrics` reads them from MLflow: the last report (``test_*``
    and ``best_*`` are the best epoch's already), ``val_*``/``train_*`` of the best epoch."""
    if not history:
        return {}
    m = dict(history[-1])
    step = m.get("best_epoch")
    at = next((h for h in history if h.get("epoch") == step), None)
    if at is not None:
        m.update({k: v for k, v in at.items() if k.startswith(("val_", "train_"))})
        m["epoch"] = float(step)  # type: ignore[arg-type]
    return m


def run_experiment(t: Tracker, run_id: str, tmp: str | Path) -> tuple[Any, Experiment]:
    """(run, experiment restored at the run's best epoch): from the checkpoint directory Ray
    left on disk, else from the ``checkpoint/best.pt`` artifact uploaded at the trial's end."""
    run = t.get_run(run_id)
    if run.data.tags.get("hpsearch.role") != "trial":
        raise HpsearchError(f"run {run_id} is not a trial run of an hpsearch search")
    return run, experiment_from_checkpoint(t.checkpoint_dir(run_id, tmp))


def export_run(t: Tracker, run_id: str, out: Path) -> Path:
    """Export an MLflow trial run's best checkpoint as a bundle."""
    with tempfile.TemporaryDirectory() as tmp:
        run, exp = run_experiment(t, run_id, tmp)
        m = t.best_epoch_metrics(run)  # the exported weights' epoch, not the last one
        return write_bundle(exp, out, extra={"run_id": run_id, "metrics": {
            k: v for k, v in m.items() if k.startswith(("val_", "test_", "best_"))}})


def export_best(t: Tracker, search_id: str, metric: str, mode: str, dest: str | Path, *,
                tie_break: str | None = None, tie_break_mode: str = "max") -> tuple[str, Path]:
    """Export the best trial run of search ``search_id``; returns (run id, bundle)."""
    runs = t.best_runs(metric, mode, 1, search_id=search_id, tie_break=tie_break,
                       tie_break_mode=tie_break_mode)
    if not runs:
        raise HpsearchError("no finished trial to export")
    rid = runs[0].info.run_id
    return rid, export_run(t, rid, Path(dest))


def hedge_curve(t: Tracker, run_id: str, split: str, points: int) -> list[dict[str, float]]:
    """Accuracy vs. specificity of hedged predictions over τ on ``split`` of a classifier run,
    logged as the run's ``hedging/curve_<split>.{json,csv,png}`` artifacts."""
    with tempfile.TemporaryDirectory() as tmp:
        _, exp = run_experiment(t, run_id, tmp)
        if not isinstance(exp, ClassifierExperiment):
            raise HpsearchError(f"run {run_id} is not an image classifier")
        out, lab = exp.outputs(split)
        exp.evaluate("val")  # calibrate decision thresholds as during training
        dev = next(exp.model.parameters()).device
        probs = [p.cpu() for p in exp.head.level_probs(out.to(dev))]
        taus = np.round(np.linspace(0.0, 1.0, points), 4).tolist()
        curve = accuracy_specificity_curve(
            probs, lab, taus, hierarchy=exp.hierarchy,
            cumulative=exp.cfg.model.family in CUMULATIVE_FAMILIES)
        d = Path(tmp) / "hedging"
        d.mkdir()
        (d / f"curve_{split}.json").write_text(json.dumps(curve, indent=1))
        (d / f"curve_{split}.csv").write_text(hedge_curve_csv(curve))
        plot_hedge_curve(curve, d / f"curve_{split}.png", f"{exp.cfg.model.family}, {split} split")
        t.log_artifacts(run_id, d, "hedging")
    return curve


def demo_images(bundle: Path, n: int = 4) -> tuple[list[str], list[list[str]]]:
    """``n`` held-out test images of the bundle's dataset written as PNG files beside it, and
    their true label paths (what ``hpsearch demo`` predicts)."""
    from torchvision.io import write_png  # torchvision's image codecs: only the demo writes

    cfg = load_bundle(bundle).config
    data = load_dataset(cfg.data)
    h, test = data.hierarchy, data.test
    out = bundle.parent / f"{bundle.name}-demo-images"
    out.mkdir(exist_ok=True)
    paths, truth = [], []
    for i in np.random.default_rng(0).choice(len(test), size=n, replace=False):
        p = out / f"test_{i}.png"
        write_png(torch.from_numpy(test.images[i].copy()).permute(2, 0, 1), str(p))
        paths.append(str(p))
        truth.append([h.names[h.global_index(lvl, int(x))]
                      for lvl, x in enumerate(test.level_labels[i])])
    return paths, truth


# ---------------------------------------------------------------------- notebook API
@dataclass(frozen=True)
class Ranked:
    """One trial run of :func:`best`: its id and name, its objectives' values at its best
    epoch (``best_<metric>``), whether it is on the search's Pareto front, its searched
    params."""

    run_id: str
    name: str
    values: dict[str, float]
    pareto: bool
    status: str
    params: dict[str, str]


def search(space: str | Path | Any, **options: Any) -> Any:
    """Run (or ``resume=True``: continue) a search from a YAML file or a loaded space;
    keyword options are :class:`hpsearch.search.tuner.SearchOptions`' fields
    (``num_samples``, ``max_epochs``, ``results_dir``, ``tracking_uri``, ``address``,
    ``storage``, ``optuna_storage``, ``seed``, ``verbose``, ...). Returns its
    ``SearchOutcome`` (``search_id``, ``experiment``, ``tracking_uri``, ``best``, ...).

    Example::

        import hpsearch.api as hp
        out = hp.search("search_spaces/demo.yaml", num_samples=4, max_epochs=2)
        for r in hp.best(out.experiment, tracking_uri=out.tracking_uri):
            print(r.name, r.values)
    """
    from hpsearch.search.space import load_space  # Ray only when searching
    from hpsearch.search.tuner import SearchOptions, run_search

    space_file = None
    if isinstance(space, str | Path):
        space_file, space = str(space), load_space(space)
    fields = {f.name for f in dataclasses.fields(SearchOptions)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ConfigError(f"search(): unknown option(s) {', '.join(unknown)}; allowed: "
                          f"{', '.join(sorted(fields))}")
    options.setdefault("space_file", space_file)
    return run_search(space, SearchOptions(**options))


def latest_search(tracking_uri: str | None = None, results_dir: str | Path = "results",
                  experiment: str | None = None) -> tuple[Tracker, Any]:
    """(tracker of its experiment, parent run) of the newest search in the store (in
    ``experiment`` when given): what ``best`` and ``report`` use without ``--experiment``."""
    t = open_tracker(tracking_uri, results_dir, experiment)
    flt = f"tags.`{TAG}role` = 'search'"
    if experiment is not None:
        ids = [t.existing_experiment_id()]
    else:
        ids = [e.experiment_id for e in t.client.search_experiments()]
    runs = t.client.search_runs(ids, filter_string=flt, order_by=["attributes.start_time DESC"],
                                max_results=1) if ids else []
    if not runs:
        where = f"experiment {experiment!r}" if experiment else t.uri
        raise HpsearchError(f"no hpsearch search in {where}; run 'hpsearch search' first")
    parent = runs[0]
    name = t.client.get_experiment(parent.info.experiment_id).name
    return Tracker(t.uri, name), parent


def objectives_of(parent: Any, metric: str | None = None, mode: str = "max"
                  ) -> list[tuple[str, str]]:
    """The search's objectives (:func:`hpsearch.report.search_objectives` of its parent run);
    ``metric`` overrides them with one."""
    if metric:
        return [(metric, mode)]
    return search_objectives(parent, [])


def best(experiment: str | None = None, *, tracking_uri: str | None = None,
         results_dir: str | Path = "results", search_id: str | None = None,
         metric: str | None = None, mode: str = "max", top: int = 5) -> list[Ranked]:
    """The best trial runs of a search (default: the newest search of ``experiment``, or of
    the store). Single objective: the ``top`` runs by it. Multi-objective: the whole Pareto
    front first (every run not dominated at its best epoch), then the next runs by the
    primary objective up to ``top``."""
    t, parent = search_of(tracking_uri, results_dir, experiment, search_id)
    sid = parent.data.tags.get(f"{TAG}search_id")
    pairs = objectives_of(parent, metric, mode)
    runs = t.best_runs(pairs[0][0], pairs[0][1], top=10_000 if len(pairs) > 1 else top,
                       search_id=sid)
    values = [{m: run.data.metrics.get(f"best_{m}", run.data.metrics.get(m, math.nan))
               for m, _ in pairs} for run in runs]
    front = set(pareto_front([[v[m] for m, _ in pairs] for v in values],
                             [md for _, md in pairs])) if len(pairs) > 1 else set()
    order = sorted(range(len(runs)), key=lambda i: (i not in front, i))
    n = max(top, len(front))
    return [Ranked(run_id=runs[i].info.run_id, name=runs[i].info.run_name or "",
                   values=values[i], pareto=i in front, status=runs[i].info.status,
                   params=dict(runs[i].data.params)) for i in order[:n]]


def search_of(tracking_uri: str | None, results_dir: str | Path, experiment: str | None,
               search_id: str | None) -> tuple[Tracker, Any]:
    if search_id is None:
        return latest_search(tracking_uri, results_dir, experiment)
    t = open_tracker(tracking_uri, results_dir, experiment)
    ids = ([t.existing_experiment_id()] if experiment else
           [e.experiment_id for e in t.client.search_experiments()])
    runs = t.client.search_runs(ids, filter_string=(
        f"tags.`{TAG}role` = 'search' and tags.`{TAG}search_id` = '{search_id}'"),
        max_results=1)
    if not runs:
        raise HpsearchError(f"no search {search_id!r} at {t.uri}; 'hpsearch best' without "
                            "--search-id takes the newest")
    name = t.client.get_experiment(runs[0].info.experiment_id).name
    return Tracker(t.uri, name), runs[0]


def export(run_id: str, out: str | Path, *, tracking_uri: str | None = None,
           results_dir: str | Path = "results", register: str | None = None
           ) -> tuple[Path, str | None]:
    """Export trial run ``run_id`` as a bundle in ``out``; with ``register``, also log it as
    an MLflow model and register it under that name. Returns (bundle, version or None)."""
    t = open_tracker(tracking_uri, results_dir, None)
    bundle = export_run(t, run_id, Path(out))
    version = t.register_bundle(run_id, bundle, register) if register else None
    return bundle, version
