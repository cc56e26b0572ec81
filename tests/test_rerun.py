"""Reproducible trials: ``deterministic: true`` trains bit for bit the same under another
``torch.set_num_threads`` and a loaded machine; ``hpsearch rerun`` retrains a tracked trial
from its ``config.json`` (no Ray, nothing logged) and finds the same metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpsearch import api, cli
from hpsearch.tasks import DirectoryReporter, TrialConfig, resolved_params, run_trial
from hpsearch.tasks.base import trial_numerics, trial_threads
from hpsearch.tasks.checkpoint import BEST_FILE, CHECKPOINT_FILE
from hpsearch.tracking import CONFIG_ARTIFACT, Tracker, default_tracking_uri

from .conftest import TINY_DATA

ROOT = Path(__file__).resolve().parents[1]
CFG = {"data.params": TINY_DATA, "model.width": 8, "optim.epochs": 3, "optim.lr": 0.05,
       "optim.batch_size": 32, "deterministic": True}
TIMING = ("train_epoch_time_s", "train_images_per_s")


def _tensors(state, prefix=""):
    """Every tensor of a (nested) checkpoint state as {path: tensor}."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        return {k: v for key, sub in state.items() for k, v in _tensors(sub, f"{prefix}/{key}")
                .items()}
    if isinstance(state, list | tuple):
        return {k: v for i, sub in enumerate(state) for k, v in _tensors(sub, f"{prefix}/{i}")
                .items()}
    return {}


def _weights(ck: Path) -> dict[str, torch.Tensor]:
    out = {}
    for name in (CHECKPOINT_FILE, BEST_FILE):  # latest state (optimizer too) and best weights
        state = torch.load(ck / name, map_location="cpu", weights_only=True)
        out.update({f"{name}{k}": v for k, v in _tensors(state).items()})
    return out


def _strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _hog() -> list[subprocess.Popen]:
    """Busy loops on every core while the second run trains."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(os.cpu_count() or 2)]


def test_deterministic_trials_are_bit_identical_under_other_threads_and_load(
        tmp_path, restore_threads):
    cfg = TrialConfig.from_flat(CFG)
    # the config's CPUs (cpus_per_trial 1), not the process's nor torch's setting
    assert trial_threads(cfg) == trial_threads(cfg, cpus=8) == 1
    assert trial_threads(cfg.replace(resources__cpus_per_trial=2), cpus=8) == 2
    assert trial_threads(cfg.replace(torch_threads=3), cpus=8) == 3
    assert trial_threads(cfg.replace(deterministic=False), cpus=4) == 4  # a search trial's
    assert trial_threads(cfg.replace(deterministic=False)) is None  # torch's, untouched
    runs = []
    for threads, load in ((1, False), (3, True)):
        torch.set_num_threads(threads)
        hogs = _hog() if load else []
        try:
            rep = DirectoryReporter(tmp_path / f"t{threads}")
            with trial_numerics(cfg) as used:
                assert used == 1 and torch.are_deterministic_algorithms_enabled()
                run_trial(cfg, rep)
        finally:
            for h in hogs:
                h.kill()
                h.wait()
        # the process's settings are back as the caller had them
        assert torch.get_num_threads() == threads
        assert not torch.are_deterministic_algorithms_enabled()
        runs.append((rep.history, _weights(tmp_path / f"t{threads}")))
    (h1, w1), (h2, w2) = runs
    assert len(h1) == 3 and _strip(h1) == _strip(h2)  # every metric, bit for bit
    assert w1.keys() == w2.keys() and len(w1) > 10
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k


# ------------------------------------------------------------------ hpsearch rerun
class _Stopped(Exception):
    pass


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store written the way MLflowTrialCallback writes one: a search's parent run and a
    trial run with params, ``config.json`` and per-epoch metrics, stopped at epoch 2 of 3 (as
    ASHA stops one), in a process given 2 CPUs and 2 torch threads (deterministic mode
    trains with the config's 1 whatever the process has)."""
    d = tmp_path_factory.mktemp("store")
    cfg = TrialConfig.from_flat(CFG)
    t = Tracker(default_tracking_uri(d), "rerun-test", artifact_root=d / "mlruns")
    parent = t.search_run("s-1", "s-1", {}, {})
    rid, _ = t.trial_run(parent, "s-1", "t-1", "t-1", {"family": "per_level"})
    t.log_params(rid, resolved_params(cfg))
    t.log_dict(rid, cfg.model_dump(mode="json"), CONFIG_ARTIFACT)

    def report(metrics, ckpt):
        t.log_metrics(rid, {k: v for k, v in metrics.items()
                            if k.startswith(("train_", "val_", "test_", "best_", "epoch"))},
                      step=int(metrics["epoch"]))
        if metrics["epoch"] == 2:
            raise _Stopped  # what ASHA does at a rung

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with trial_numerics(cfg, cpus=2), pytest.raises(_Stopped):
            run_trial(cfg, report)
    finally:
        torch.set_num_threads(before)
    t.set_tags(rid, {"epochs_run": 2, "stopped_early": "true"})
    t.end_run(rid, "FINISHED")
    return d, t, rid, parent


def test_rerun_reproduces_a_tracked_trial_bit_for_bit_without_ray(store, tmp_path):
    d, t, rid, _ = store
    before = {r.info.run_id: (len(t.client.get_metric_history(r.info.run_id, "val_micro_f1")),
                              dict(r.data.tags)) for r in t.client.search_runs(
        [t.existing_experiment_id()])}
    code = ("import sys; from hpsearch import cli; rc = cli.main(sys.argv[1:]); "
            "assert 'ray' not in sys.modules, 'rerun imported Ray'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, "rerun", rid, "--results-dir", str(d),
                        "--out", str(tmp_path / "re")], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert f"rerun of run {rid}: 2 epochs (as the original), 1 torch thread, deterministic" \
        in r.stdout, r.stdout
    assert "metrics at the best epoch are identical, bit for bit" in r.stdout, r.stdout
    assert (tmp_path / "re" / CHECKPOINT_FILE).exists()
    # read-only: no new run, the original's history and tags unchanged
    after = {r.info.run_id: (len(t.client.get_metric_history(r.info.run_id, "val_micro_f1")),
                             dict(r.data.tags)) for r in t.client.search_runs(
        [t.existing_experiment_id()])}
    assert after == before
    # the API gives the same comparison: the headline metrics and every other one
    res = api.rerun(t, rid, tmp_path / "re2")
    rows = dict((k, (a, b)) for k, a, b in res.compared())
    assert res.identical and res.epochs == 2 and res.threads == 1
    assert {"epoch", "val_micro_f1", "test_micro_f1", "train_loss"} <= rows.keys()
    assert len(rows) > 20 and not any(k in rows for k in TIMING)


def test_rerun_of_a_run_without_config_is_one_line(store, capsys):
    d, _, _, parent = store
    for run_id, expect in ((parent, f"run {parent} has no config.json artifact"),
                           ("0123abcd", "no MLflow run '0123abcd'")):
        rc = cli.main(["rerun", run_id, "--results-dir", str(d)])
        err = capsys.readouterr().err
        assert rc == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hpsearch: error: ") and \
            expect in lines[0], err
