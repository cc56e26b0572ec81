"""The task contract (optuna/timm style): every registered task, through the same API.

Parametrized over ``TASKS.names()``, so a new task is tested by adding one tiny config to
:data:`CONTRACT` (and fails :func:`test_every_registered_task_has_a_contract_config` until it
does). For each task: the experiment builds, trains and evaluates to finite floats that its
spec announces; an interrupted run resumes bit for bit; a bundle exports and loads (and serves
predictions only where the task exports a predictor); ``resolved_params`` drops the keys the
task ignores; another task's family handed to its experiment is a ``ConfigError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hpsearch.bundle import Predictor, load_bundle, write_bundle
from hpsearch.errors import ConfigError, ExportError
from hpsearch.models import FAMILIES
from hpsearch.tasks import (
    TASKS,
    DirectoryReporter,
    Experiment,
    RunContext,
    TrialConfig,
    build_experiment,
    experiment_from_checkpoint,
    resolved_params,
    run_trial,
    task_of,
)
from hpsearch.tasks.checkpoint import CHECKPOINT_FILE
from tests.conftest import label_tree_file

from .conftest import TINY_DATA

EPOCHS = 3  # the uninterrupted run; the interrupted one stops after EPOCHS - 1




def classifier_config(tmp: Path) -> dict[str, Any]:
    return {"model.family": "per_level", "model.width": 8, "data.params": TINY_DATA,
            "data.image_size": 16, "optim.batch_size": 32, "optim.lr": 0.05}


def label_embedding_config(tmp: Path) -> dict[str, Any]:
    return {"model.family": "hyperbolic_cone",
            "data.params": {"label_source": "parent_child", "path": str(label_tree_file(tmp))},
            "optim.batch_size": 32, "optim.lr": 0.05,
            "model.params": {"dim": 5, "optimizer": "riemannian_adam"}}


def joint_embedding_config(tmp: Path) -> dict[str, Any]:
    return {"model.family": "joint_euclidean_cone", "model.backbone": "small_cnn",
            "model.width": 8, "data.params": TINY_DATA, "data.image_size": 16,
            "optim.batch_size": 64, "model.params": {"dim": 4}}


# task name -> its tiny config (dotted keys; files it needs are written under the given dir).
# Every config runs a cosine schedule, so resuming also restores scheduler state.
CONTRACT: dict[str, Callable[[Path], dict[str, Any]]] = {
    "classifier": classifier_config,
    "label_embedding": label_embedding_config,
    "joint_embedding": joint_embedding_config,
}
TASK_NAMES = TASKS.names()
TIMING_SUFFIXES = ("_time_s", "_per_s")  # wall-clock metrics (epoch_time_s, images_per_s)


def contract_config(name: str, tmp: Path, **flat: Any) -> TrialConfig:
    """The task's tiny config, selecting on its default metric, ``EPOCHS`` epochs."""
    base = {"optim.epochs": EPOCHS, "optim.schedule": "cosine",
            "metric": TASKS.get(name).default_metric, **CONTRACT[name](tmp)}
    return TrialConfig.from_flat({**base, **flat})


class Interrupted(Exception):
    """Raised by :class:`InterruptingReporter`, as a killed or stopped trial would stop."""


class InterruptingReporter(DirectoryReporter):
    """A :class:`DirectoryReporter` whose trial dies right after its ``after``-th report."""

    def __init__(self, out_dir: Path, after: int) -> None:
        super().__init__(out_dir)
        self.after = after

    def __call__(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        super().__call__(metrics, checkpoint_dir)
        if len(self.history) == self.after:
            raise Interrupted(f"stopped after {self.after} reports")


class FullRuns:
    """One uninterrupted ``run_trial`` per task, shared by the tests of this module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._runs: dict[str, tuple[TrialConfig, Path, list[dict[str, float]]]] = {}

    def __call__(self, name: str) -> tuple[TrialConfig, Path, list[dict[str, float]]]:
        if name not in self._runs:
            d = self.root / name
            d.mkdir()
            cfg = contract_config(name, d)
            rep = DirectoryReporter(d / "full")
            run_trial(cfg, rep)
            self._runs[name] = (cfg, d / "full", rep.history)
        return self._runs[name]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> FullRuns:
    return FullRuns(tmp_path_factory.mktemp("contract"))


def _assert_same_metrics(got: dict[str, float], want: dict[str, float]) -> None:
    """Equal reports, exactly (NaN equals NaN), wall-clock metrics left out."""
    got, want = ({k: v for k, v in m.items() if not k.endswith(TIMING_SUFFIXES)}
                 for m in (got, want))
    assert set(got) == set(want), f"metric names differ: {sorted(set(got) ^ set(want))}"
    diff = {k: (got[k], want[k]) for k in want
            if got[k] != want[k] and not (math.isnan(got[k]) and math.isnan(want[k]))}
    assert not diff, f"metrics differ (resumed, uninterrupted): {diff}"


def _assert_same_state(a: Any, b: Any, where: str = "state") -> None:
    """Equal nested checkpoint contents; tensors bit for bit (``torch.equal``, same dtype)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), f"{where}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def _assert_finite_floats(metrics: dict[str, float], what: str) -> None:
    assert isinstance(metrics, dict) and metrics, what
    for k, v in metrics.items():
        assert isinstance(k, str) and isinstance(v, float), f"{what}: {k}={v!r}"
        assert math.isfinite(v), f"{what}: {k}={v!r}"


def _write_pngs(tmp: Path, n: int = 2) -> list[Path]:
    from torchvision.io import write_png

    paths = []
    for i in range(n):
        f = tmp / f"img{i}.png"
        img = np.random.default_rng(i).integers(0, 255, (3, 20 + 3 * i, 18), dtype=np.uint8)
        write_png(torch.from_numpy(img), str(f))
        paths.append(f)
    return paths


# ---------------------------------------------------------------------------- the registry
def test_every_registered_task_has_a_contract_config():
    assert TASK_NAMES, "no task registered"
    missing = sorted(set(TASK_NAMES) - set(CONTRACT))
    assert not missing, f"tasks without a CONTRACT entry in {__name__}: {missing}"
    assert not set(CONTRACT) - set(TASK_NAMES), "CONTRACT names a task that is not registered"


@pytest.mark.parametrize("name", TASK_NAMES)
def test_spec_is_consistent_and_the_config_trains_the_task(name, tmp_path):
    spec = TASKS.get(name)
    assert spec.name == name
    assert spec.exports in ("predictor", "embeddings")
    assert spec.report in ("levels", "edges")
    assert spec.default_metric.startswith("val_")
    assert spec.families(), f"task {name!r} has no model family"
    assert all(FAMILIES.get(f).task == name for f in spec.families())
    # every family's params extend the task's schema (what its experiment reads)
    assert all(issubclass(FAMILIES.get(f).params, spec.params) for f in spec.families())
    cfg = contract_config(name, tmp_path)
    assert cfg.model.family in spec.families()
    assert task_of(cfg) is spec
    assert isinstance(cfg.model.params, spec.params)


# ---------------------------------------------------------------------------- (a) experiment
@pytest.mark.parametrize("name", TASK_NAMES)
def test_experiment_builds_trains_and_evaluates_announced_finite_metrics(name, tmp_path):
    spec = TASKS.get(name)
    cfg = contract_config(name, tmp_path)
    exp = build_experiment(cfg, RunContext())
    assert isinstance(exp, Experiment)
    assert exp.cfg == cfg
    train = exp.train_one_epoch(0)
    _assert_finite_floats(train, "train_one_epoch")
    assert "loss" in train
    val, test = exp.evaluate("val"), exp.evaluate("test")
    _assert_finite_floats(val, "evaluate('val')")
    _assert_finite_floats(test, "evaluate('test')")
    assert set(test) == set(val)
    # what the search's pre-flight, ``best`` and ``report`` are told the task logs
    names = spec.metric_names(cfg)
    assert set(val) <= names, f"evaluated but not announced: {sorted(set(val) - names)}"
    metric = spec.default_metric.removeprefix("val_")
    assert metric in val and metric in names
    reports = exp.reports("test")
    assert isinstance(reports, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in reports.items())
    if exp.hierarchy is not None:
        assert exp.hierarchy.num_nodes > 0


# ---------------------------------------------------------------------------- (b) resume
@pytest.mark.parametrize("name", TASK_NAMES)
def test_an_interrupted_trial_resumes_bit_for_bit(name, full_run, tmp_path):
    """EPOCHS epochs in one go, versus the same trial killed after EPOCHS - 1 reports and
    started again from its last checkpoint: the same final report (timing aside) and the same
    checkpoint, every tensor (weights, optimizer, scheduler, RNG state) bit for bit."""
    cfg, full_dir, full_history = full_run(name)
    assert [m["epoch"] for m in full_history] == [float(e + 1) for e in range(EPOCHS)]
    part = InterruptingReporter(tmp_path / "ck", after=EPOCHS - 1)
    with pytest.raises(Interrupted):
        run_trial(cfg, part)
    assert torch.load(tmp_path / "ck" / CHECKPOINT_FILE, map_location="cpu",
                      weights_only=True)["epoch"] == EPOCHS - 2
    resumed = DirectoryReporter(tmp_path / "ck")
    run_trial(cfg, resumed, resume_from=tmp_path / "ck")
    assert [m["epoch"] for m in resumed.history] == [float(EPOCHS)]  # only the last epoch ran
    # the epochs both runs reported before the interruption agree too
    for a, b in zip(full_history[:EPOCHS - 1], part.history, strict=True):
        _assert_same_metrics(b, a)
    _assert_same_metrics(resumed.history[-1], full_history[-1])
    a = torch.load(full_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "ck" / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == EPOCHS - 1
    assert a["experiment"]["model"]  # a non-empty model state
    for k, v in a["experiment"]["model"].items():
        assert torch.equal(v, b["experiment"]["model"][k]), f"model tensor {k} differs"
    _assert_same_state(a["experiment"], b["experiment"], "experiment")
    _assert_same_state(a["best"], b["best"], "best")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_a_shorter_run_continued_to_more_epochs_matches_under_a_flat_schedule(name, tmp_path):
    """A finished run of EPOCHS - 1 epochs continued to EPOCHS equals EPOCHS in one go when the
    schedule does not depend on the epoch count (a cosine schedule is laid out over the
    configured epochs, so there the shorter run is another trial by design)."""
    cfg = contract_config(name, tmp_path, **{"optim.schedule": "none"})
    full = DirectoryReporter(tmp_path / "full")
    run_trial(cfg, full)
    run_trial(cfg.replace(optim__epochs=EPOCHS - 1), DirectoryReporter(tmp_path / "ck"))
    more = DirectoryReporter(tmp_path / "ck")
    run_trial(cfg, more, resume_from=tmp_path / "ck")
    assert [m["epoch"] for m in more.history] == [float(EPOCHS)]
    _assert_same_metrics(more.history[-1], full.history[-1])
    a, b = (torch.load(d / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
            for d in (tmp_path / "full", tmp_path / "ck"))
    for k, v in a["experiment"]["model"].items():
        assert torch.equal(v, b["experiment"]["model"][k]), f"model tensor {k} differs"


# ---------------------------------------------------------------------------- (c) exports
@pytest.mark.parametrize("name", TASK_NAMES)
def test_bundle_exports_loads_and_predicts_only_for_predictor_tasks(name, full_run, tmp_path):
    spec = TASKS.get(name)
    cfg, ck, _ = full_run(name)
    exp = experiment_from_checkpoint(ck)
    out = write_bundle(exp, tmp_path / "bundle", {"run_id": "contract"})
    b = load_bundle(out)  # verifies every checksum
    assert b.manifest["task"] == name
    assert b.manifest["family"] == cfg.model.family and b.manifest["run_id"] == "contract"
    assert b.config == cfg
    if exp.hierarchy is not None:
        assert b.hierarchy is not None and b.hierarchy.names == exp.hierarchy.names
    if spec.exports == "predictor":
        h = b.hierarchy
        images = _write_pngs(tmp_path)
        preds = Predictor(b).predict_files(images)
        assert [p["image"] for p in preds] == [str(f) for f in images]
        for p in preds:
            assert len(p["path"]) == h.num_levels
            labels = [h.index[step["label"]] for step in p["path"]]
            for parent, child in zip(labels, labels[1:], strict=False):
                assert parent in h.parents[child]  # a consistent root-to-leaf path
            assert all(0.0 <= step["prob"] <= 1.0 for step in p["path"])
    else:
        with pytest.raises(ExportError, match="needs an image classifier"):
            Predictor(b)


# ---------------------------------------------------------------------------- (d) params
@pytest.mark.parametrize("name", TASK_NAMES)
def test_resolved_params_omit_the_keys_the_task_ignores(name, tmp_path):
    spec = TASKS.get(name)
    cfg = contract_config(name, tmp_path)
    flat = cfg.flatten()
    unused = set(spec.unused_keys(cfg))
    assert unused <= set(flat), f"unused_keys names no config key: {sorted(unused - set(flat))}"
    params = resolved_params(cfg)
    assert not unused & set(params), sorted(unused & set(params))
    assert set(params) <= set(flat)
    assert params["model.family"] == cfg.model.family and params["seed"] == cfg.seed
    assert params["metric"] == spec.default_metric


# ---------------------------------------------------------------------------- (e) families
@pytest.mark.parametrize("name", TASK_NAMES)
def test_another_tasks_family_is_refused_by_the_experiment(name):
    spec = TASKS.get(name)
    foreign = [f for f in FAMILIES.names() if FAMILIES.get(f).task != name]
    if len(TASK_NAMES) > 1:
        assert foreign
    for family in foreign:
        cfg = TrialConfig.from_flat({"model.family": family})
        with pytest.raises(ConfigError, match=f"is a {FAMILIES.get(family).task!r} family"):
            spec.experiment(cfg, RunContext())
