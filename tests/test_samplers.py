"""Samplers, schedulers, warm starts and objectives of a space: Optuna's and Ray's own, built
from the YAML and driven here without Ray where the sampler alone is the question; one real
multi-objective search through Ray Tune + Optuna (NSGA-II, in an Optuna storage) + MLflow."""

from __future__ import annotations

import itertools
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from hpsearch.errors import ConfigError
from hpsearch.search import samplers
from hpsearch.search.objectives import dominates, pareto_front
from hpsearch.search.space import SAMPLERS, suggest, validate_space

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "search_spaces" / "demo.yaml"
optuna.logging.set_verbosity(optuna.logging.WARNING)


def space(**over):
    raw = {"name": "t", "family": "per_level", "dataset": "synthetic",
           "search": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 0.3},
                      "optim.optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
                      "optim.momentum": {"type": "uniform", "low": 0.5, "high": 0.95,
                                         "when": {"optim.optimizer": "sgd"}}}}
    raw.update(over)
    return validate_space(raw)


def drive(sp, n: int, seed: int = 0, directions=None) -> optuna.Study:
    """``n`` trials of the space's sampler on a made-up objective, in memory."""
    study = optuna.create_study(sampler=samplers.make_sampler(sp, seed, 1),
                                directions=directions or ["maximize"])

    def objective(trial):
        v = suggest(trial, sp)
        lr = trial.params["optim.lr"] if "optim.lr" in trial.params else 0.01
        score = -abs(math.log10(lr) + 1.5) + (0.1 if v.get("optim.optimizer") == "sgd" else 0)
        return (score, -score * 0.5 + lr) if directions and len(directions) > 1 else score

    study.optimize(objective, n_trials=n)
    return study


@pytest.mark.parametrize("kind", [k for k in SAMPLERS if k != "grid"])
def test_every_sampler_samples_the_space_with_its_conditions(kind):
    sp = space(sampler={"type": kind, "n_startup_trials": 2})
    study = drive(sp, 6)
    assert len(study.trials) == 6
    for t in study.trials:
        p = t.params
        assert 1e-3 <= p["optim.lr"] <= 0.3
        # momentum exactly when the optimizer is sgd: the conditional dimension holds
        assert ("optim.momentum" in p) == (p["optim.optimizer"] == "sgd"), p
        sp.resolve(p)  # every sample is a valid trial config
    again = drive(space(sampler={"type": kind, "n_startup_trials": 2}), 6)
    assert [t.params for t in again.trials] == [t.params for t in study.trials], "seeded"


def test_tpe_options_reach_optuna():
    s = samplers.make_sampler(space(sampler={"type": "tpe", "n_startup_trials": 3}), 0, 4)
    assert isinstance(s, optuna.samplers.TPESampler)
    assert s._constant_liar and s._multivariate and s._n_startup_trials == 3
    assert not samplers.make_sampler(space(), 0, 1)._constant_liar  # one at a time: no liar
    forced = space(sampler={"type": "tpe", "constant_liar": False})
    assert not samplers.make_sampler(forced, 0, 4)._constant_liar


def test_grid_visits_every_point_once():
    sp = space(search={"optim.lr": {"type": "categorical", "choices": [0.01, 0.1, 0.3]},
                       "optim.optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
                       "model.width": {"type": "int", "low": 8, "high": 16, "step": 8}},
               sampler={"type": "grid"})
    assert samplers.grid_size(sp) == 12
    study = drive(sp, 12)
    seen = {(t.params["optim.lr"], t.params["optim.optimizer"], t.params["model.width"])
            for t in study.trials}
    assert seen == set(itertools.product([0.01, 0.1, 0.3], ["sgd", "adamw"], [8, 16]))


def test_points_to_evaluate_are_tried_first():
    sp = space(points_to_evaluate=[{"optim.lr": 0.05, "optim.optimizer": "sgd",
                                    "optim.momentum": 0.9}])
    study = optuna.create_study(sampler=samplers.make_sampler(sp, 0, 1), direction="maximize")
    study.enqueue_trial(sp.points_to_evaluate[0])
    study.optimize(lambda t: (suggest(t, sp), 0.0)[1], n_trials=2)
    assert study.trials[0].params == {"optim.lr": 0.05, "optim.optimizer": "sgd",
                                      "optim.momentum": 0.9}


@pytest.mark.parametrize("over, message", [
    ({"objectives": [{"metric": "val_micro_f1"}]}, "at least two"),
    ({"objectives": [{"metric": "val_micro_f1"}, {"metric": "val_micro_f1"}]}, "twice"),
    ({"metric": "val_macro_f1", "objectives": [{"metric": "val_micro_f1"},
                                               {"metric": "val_macro_f1"}]}, "first objective"),
    ({"objectives": [{"metric": "val_micro_f1"}, {"metric": "test_macro_f1"}]},
     "validation metric"),
    ({"objectives": [{"metric": "val_micro_f1"}, {"metric": "val_macro_f1"}],
      "sampler": {"type": "cmaes"}}, "optimises one objective"),
    ({"sampler": {"type": "grid"}}, "give optim.lr as 'type: categorical'"),
    ({"points_to_evaluate": [{"optim.bogus": 1}]}, "'optim.bogus' is not a searched"),
    ({"points_to_evaluate": [{"optim.lr": 5.0}]}, "optim.lr=5.0 is not in the space"),
    ({"sampler": {"storage": "redis://x"}}, "Optuna RDB storage URL"),
    ({"scheduler": "pbt"}, "scheduler"),
])
def test_bad_settings_are_one_line_errors(over, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        space(**over)
    assert "\n" not in str(e.value)


def test_objectives_set_the_primary_metric_and_the_secondary_ones():
    sp = space(objectives=[{"metric": "val_micro_f1"}, {"metric": "val_macro_f1",
                                                        "mode": "max"}])
    assert sp.metric == "val_micro_f1" and sp.multi_objective
    assert sp.resolve({}).secondary_metrics == ["val_macro_f1"]
    assert samplers.searcher_metrics(sp) == (["best_val_micro_f1", "best_val_macro_f1"],
                                             ["max", "max"])
    assert samplers.searcher_metrics(space()) == ("best_val_micro_f1", "max")


def test_storage_url_default_and_redaction(tmp_path):
    assert samplers.storage_url(space(), tmp_path) == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert samplers.storage_url(space(), tmp_path, "postgresql://u:pw@h/db").startswith("post")
    assert samplers.redact("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    with pytest.raises(ConfigError, match="cannot open it"):
        samplers.open_storage(f"sqlite:///{tmp_path}/missing/dir/optuna.db")


@pytest.mark.parametrize("kind, cls", [("asha", "AsyncHyperBandScheduler"),
                                       ("hyperband", "HyperBandScheduler"),
                                       ("median", "MedianStoppingRule"),
                                       ("fifo", "FIFOScheduler")])
def test_schedulers_are_ray_tunes(kind, cls):
    s = samplers.make_scheduler(space(scheduler=kind), 6)
    assert type(s).__name__ == cls
    if kind != "fifo":
        assert s._time_attr == "epoch"


def test_pareto_front_matches_optunas():
    rng = random.Random(0)
    for _ in range(30):
        n, k = rng.randint(1, 25), rng.randint(2, 3)
        modes = [rng.choice(["max", "min"]) for _ in range(k)]
        pts = [[rng.choice([0.1, 0.2, 0.3, rng.random()]) for _ in range(k)] for _ in range(n)]
        study = optuna.create_study(directions=["maximize" if m == "max" else "minimize"
                                                for m in modes])
        for p in pts:
            study.add_trial(optuna.trial.create_trial(values=p, params={}, distributions={}))
        assert pareto_front(pts, modes) == sorted(t.number for t in study.best_trials)
    assert pareto_front([[1.0, math.nan], [0.5, 0.5]], ["max", "max"]) == [1]
    assert dominates([1, 1], [1, 0], ["max", "max"]) and not dominates([1, 1], [1, 1],
                                                                         ["max", "max"])


MO_SPACE = """name: mo
family: per_level
dataset: synthetic
fixed:
  data.params: {level_sizes: [2, 4, 8], max_per_leaf: 24, min_per_leaf: 8,
                 amplitudes: [0.6, 0.4, 0.3], grids: [2, 4, 8]}
  model.width: 8
  optim.batch_size: 32
search:
  optim.lr: {type: loguniform, low: 0.01, high: 0.2}
  optim.optimizer: {type: categorical, choices: [sgd, adamw]}
  optim.momentum: {type: uniform, low: 0.5, high: 0.95, when: {optim.optimizer: sgd}}
objectives:
  - {metric: val_micro_f1, mode: max}
  - {metric: val_macro_f1, mode: max}
scheduler: fifo
sampler: {type: nsga2, seed: 0, population_size: 2}
points_to_evaluate:
  - {optim.lr: 0.05, optim.optimizer: sgd, optim.momentum: 0.9}
budget: {num_samples: 3, max_epochs: 1}
resources: {cpus_per_trial: 1}
"""


@pytest.mark.slow
def test_multi_objective_search_keeps_its_study_in_optuna_storage(tmp_path):
    """NSGA-II over micro vs macro F1 with a warm start: the study lives in the SQLite
    storage beside MLflow's store (readable by Optuna alone), holds both objectives at each
    trial's best epoch, and 'best' lists the same Pareto front Optuna computes."""
    import json
    import os
    from types import SimpleNamespace

    from hpsearch import api

    f = tmp_path / "mo.yaml"
    f.write_text(MO_SPACE)
    res = tmp_path / "res"
    # the notebook API, in its own process (a clean Ray start, as a user's kernel has)
    code = ("import json, hpsearch.api as hp\n"
            f"o = hp.search({str(f)!r}, results_dir={str(res)!r}, verbose=0)\n"
            "print(json.dumps([o.search_id, o.tracking_uri, o.parent_run_id, o.num_trials, "
            "o.num_errors]))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=900, env=env, cwd=tmp_path)
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-3000:]
    sid, uri, parent_id, n, errors = json.loads(cp.stdout.strip().splitlines()[-1])
    out = SimpleNamespace(search_id=sid, tracking_uri=uri, parent_run_id=parent_id)
    assert n == 3 and errors == 0

    storage = f"sqlite:///{res / 'optuna.db'}"
    study = optuna.load_study(study_name=out.search_id, storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3 and all(len(t.values) == 2 for t in done)
    assert done[0].params == {"optim.lr": 0.05, "optim.optimizer": "sgd",
                              "optim.momentum": 0.9}  # the warm start came first

    ranked = api.best(tracking_uri=out.tracking_uri)  # newest search of the store
    def key(values):
        return tuple(round(v, 9) for v in values)

    # Optuna got each run's objectives at its best epoch
    assert sorted(key(t.values) for t in done) == sorted(key(r.values.values())
                                                          for r in ranked)
    front = sorted(key(t.values) for t in study.best_trials)
    assert sorted(key(r.values.values()) for r in ranked if r.pareto) == front

    # readable run names, numbered in creation order; provenance on the parent
    names = sorted(r.name for r in ranked)
    assert [n.split(" ")[0] for n in names] == [f"{out.search_id}/{i}" for i in (1, 2, 3)]
    assert all(re.match(r"\S+/\d per_level lr=", n) for n in names), names
    t = api.open_tracker(out.tracking_uri, res, "mo")
    parent = t.get_run(out.parent_run_id)
    assert parent.data.tags["hpsearch.optuna_study"] == out.search_id
    assert parent.data.tags["hpsearch.objectives"] == \
        '[["val_micro_f1", "max"], ["val_macro_f1", "max"]]'
    assert t.load_dict(out.parent_run_id, "space.json")["sampler"]["type"] == "nsga2"

    _dashboard_shows(storage, out.search_id, n_trials=3)

    cp = subprocess.run([sys.executable, "-m", "hpsearch.cli", "best", "--results-dir",
                         str(res)], capture_output=True, text=True, timeout=300, env=env)
    assert cp.returncode == 0, cp.stderr
    assert f"search {out.search_id}" in cp.stdout and "Pareto front" in cp.stdout
    assert cp.stdout.count("\n*") == len(front)


def test_a_trial_stopped_while_paused_is_told_its_last_result(tmp_path):
    """Tune completes a PAUSED trial (HyperBand's) without a result; Ray's OptunaSearch then
    records it PRUNED with no value. Ours tells Optuna the trial's last best_<metric>."""
    from ray.tune.search.optuna import OptunaSearch

    from hpsearch.search.space import DefineByRun

    sp = space()
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    states = {}
    for name, make in (("ours", lambda: samplers.make_searcher(
            sp, DefineByRun(sp, {}), 0, 1, "ours", url)),
                       ("ray", lambda: OptunaSearch(space=DefineByRun(sp, {}),
                                                    metric="best_val_micro_f1", mode="max",
                                                    study_name="ray",
                                                    storage=samplers.open_storage(url)))):
        s = make()
        s.suggest("t1")
        for step, v in ((1, 0.5), (2, 0.7)):
            s.on_trial_result("t1", {"best_val_micro_f1": v, "training_iteration": step})
        s.on_trial_complete("t1")  # Tune's stop_trial of a PAUSED trial
        (t,) = optuna.load_study(study_name=name, storage=url).trials
        states[name] = (t.state, t.value)
    assert states["ours"] == (optuna.trial.TrialState.COMPLETE, 0.7)
    assert states["ray"][0] == optuna.trial.TrialState.PRUNED  # the behaviour worked around


def test_a_grid_search_cannot_ask_for_more_trials_than_points(tmp_path):
    from hpsearch.search.tuner import SearchOptions, preflight

    sp = space(search={"optim.lr": {"type": "categorical", "choices": [0.01, 0.1]}},
               sampler={"type": "grid"}, budget={"num_samples": 3})
    with pytest.raises(ConfigError, match="the grid has 2 points but 3 trials"):
        preflight(sp, SearchOptions(results_dir=str(tmp_path)))
    assert not any(tmp_path.iterdir())  # refused before anything was written


def _dashboard_shows(storage: str, study: str, n_trials: int) -> None:
    """optuna-dashboard, started as a user starts it on the search's storage, serves the study
    with its trials (its JSON API, what its pages draw from)."""
    import json
    import os
    import shutil
    import signal
    import socket
    import time
    import urllib.request

    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).with_name(
        "optuna-dashboard"))
    if not Path(exe).exists():
        pytest.skip("optuna-dashboard is not installed (the test extra has it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, storage, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline, summaries = time.time() + 120, None
        while time.time() < deadline and summaries is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=5) as r:
                    summaries = json.load(r)["study_summaries"]
            except OSError:
                assert proc.poll() is None, "optuna-dashboard exited"
                time.sleep(0.5)
        assert summaries is not None, "optuna-dashboard did not answer in 120 s"
        (sid,) = [x["study_id"] for x in summaries if x["study_name"] == study]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{sid}?after=0",
                                    timeout=30) as r:
            detail = json.load(r)
        assert [t["state"] for t in detail["trials"]] == ["Complete"] * n_trials
        assert len(detail["directions"]) == 2 and detail["best_trials"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
