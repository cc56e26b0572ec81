"""Real searches through Ray Tune + Optuna + ASHA + MLflow (SQLite in a temp dir)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SPACE = """name: {name}
family: per_level
dataset: synthetic
fixed:
  data.params: {{level_sizes: [2, 4, 8], max_per_leaf: 24, min_per_leaf: 8,
                 amplitudes: [0.6, 0.4, 0.3], grids: [2, 4, 8]}}
  model.width: 8
  optim.batch_size: 32
search:
  optim.lr: {{type: loguniform, low: 0.01, high: 0.2}}
  optim.optimizer: {{type: categorical, choices: [sgd, adamw]}}
budget: {{num_samples: 2, max_epochs: {epochs}, grace_period: 1}}
resources: {resources}
"""


def cli(*args: str, cwd: Path, timeout: int = 1500) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
           "RAY_DEDUP_LOGS": "0"}
    return subprocess.run([sys.executable, "-m", "hpsearch.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def mlflow_rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute(sql).fetchall()


def trial_runs(db: Path) -> list[tuple]:
    return mlflow_rows(db, "select r.run_uuid, r.status from runs r join tags t on "
                           "t.run_uuid = r.run_uuid where t.key = 'hpsearch.role' and "
                           "t.value = 'trial'")


def test_torchtrainer_search_best_export_predict(tmp_path):
    """2 trials, each a TorchTrainer with 2 gloo DDP workers on CPU."""
    f = tmp_path / "space.yaml"
    f.write_text(SPACE.format(name="ddp", epochs=2, resources="{num_workers: 2, "
                              "cpus_per_worker: 0.5, driver_cpus: 0.5}"))
    res = tmp_path / "results"
    r = cli("search", str(f), "--results-dir", str(res), "--export-best", str(tmp_path / "b"),
            cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    db = res / "mlflow.db"
    runs = trial_runs(db)
    assert len(runs) == 2 and all(s == "FINISHED" for _, s in runs)
    # metrics were logged per epoch, nested under one parent
    for run_id, _ in runs:
        steps = mlflow_rows(db, f"select step from metrics where run_uuid = '{run_id}' and "
                                "key = 'val_micro_f1' order by step")
        assert [s for (s,) in steps][:1] == [1]
        parent = mlflow_rows(db, f"select value from tags where run_uuid = '{run_id}' and "
                                 "key = 'mlflow.parentRunId'")
        assert len(parent) == 1
        assert mlflow_rows(db, f"select count(*) from params where run_uuid = '{run_id}' "
                               "and key = 'resources.num_workers'")[0][0] == 1
    # the workers really ran as a DDP group of 2 (rank-0 report counts both shards)
    from hpsearch.data import load_dataset
    from hpsearch.tasks.config import TrialConfig

    n_train = len(load_dataset(TrialConfig.from_flat({"data.params": {
        "level_sizes": [2, 4, 8], "max_per_leaf": 24, "min_per_leaf": 8,
        "amplitudes": [0.6, 0.4, 0.3], "grids": [2, 4, 8]}}).data).train)
    imgs = mlflow_rows(db, "select max(value) from metrics where key = 'train_images'")[0][0]
    # each rank trains on its half of the (padded) sampler; rank 0 reports the sum
    assert n_train / 2 < imgs <= n_train + 1
    best = cli("best", "--experiment", "ddp", "--results-dir", str(res), cwd=tmp_path)
    assert best.returncode == 0 and "val_micro_f1" in best.stdout
    best_id = best.stdout.splitlines()[1].split()[3]
    assert best_id in {rid for rid, _ in runs}
    rep = cli("report", "--experiment", "ddp", "--results-dir", str(res), cwd=tmp_path)
    assert rep.returncode == 0 and "| overall | 14 |" in rep.stdout, rep.stdout + rep.stderr
    hc = cli("hedge-curve", best_id, "--points", "3", "--results-dir", str(res), cwd=tmp_path)
    assert hc.returncode == 0, hc.stderr
    curve = hc.stdout.splitlines()[1:4]
    assert [float(line.split(",")[0]) for line in curve] == [0.0, 0.5, 1.0]
    # tau = 0 predicts every level, tau = 1 almost nothing: specificity falls
    assert float(curve[0].split(",")[3]) == 1.0 >= float(curve[2].split(",")[3])
    arts = mlflow_rows(db, "select count(*) from runs where run_uuid = '%s'" % best_id)
    assert arts[0][0] == 1
    art_root = Path(mlflow_rows(db, f"select artifact_uri from runs where run_uuid = "
                                    f"'{best_id}'")[0][0].removeprefix("file://"))
    assert (art_root / "hedging" / "curve_test.csv").exists()
    assert (art_root / "checkpoint" / "best.pt").exists()
    assert (art_root / "reports" / "per_label_f1_test.csv").exists()
    ex = cli("export", best_id, "--out", str(tmp_path / "b2"), "--register", "ddp-model",
             "--results-dir", str(res), cwd=tmp_path)
    assert ex.returncode == 0, ex.stderr
    assert mlflow_rows(db, "select name, version, run_id from model_versions") == [
        ("ddp-model", 1, best_id)]
    assert (art_root / "bundle" / "SHA256SUMS").exists()
    bundle = tmp_path / "b"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["family"] == "per_level" and "program" in manifest
    # predict on two generated PNGs, without Ray or MLflow
    import numpy as np
    import torch
    from torchvision.io import write_png

    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        write_png(torch.from_numpy(np.random.default_rng(i).integers(
            0, 255, (3, 32, 32), dtype=np.uint8)), str(p))
        paths.append(str(p))
    pr = cli("predict", str(bundle), *paths, "--json", cwd=tmp_path)
    assert pr.returncode == 0, pr.stderr
    out = [json.loads(line) for line in pr.stdout.strip().splitlines()]
    assert len(out) == 2 and all(len(o["path"]) == 3 for o in out)
    assert all(0 <= s["prob"] <= 1 for o in out for s in o["path"])


def test_inprocess_search_resume_keeps_one_run_per_trial(tmp_path):
    """Interrupt a search mid-trial (SIGTERM, as a cluster scheduler sends it), resume it: the
    interrupted runs are closed as KILLED, and after --resume every trial has one run."""
    f = tmp_path / "space.yaml"
    # 40 short epochs: the signal lands inside the first trial, not between trials
    f.write_text(SPACE.format(name="res", epochs=40, resources="{cpus_per_trial: 1}")
                 .replace("num_samples: 2", "num_samples: 3, max_concurrent: 1"))
    res = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "hpsearch.cli", "search", str(f),
                             "--results-dir", str(res)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = res / "mlflow.db"
    deadline = time.time() + 900
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            n = mlflow_rows(db, "select count(*) from metrics where key = 'val_micro_f1'")
        except sqlite3.Error:
            continue
        if n and n[0][0] >= 2:
            break
    proc.send_signal(15)  # SIGTERM -> Tune's SIGINT path: it saves its state and stops
    assert proc.wait(timeout=600) == 130
    before = trial_runs(db)
    assert 1 <= len(before) <= 3
    statuses = [s for _, s in before]
    assert "KILLED" in statuses and "RUNNING" not in statuses, statuses
    # a resumed search keeps the options it started with: a conflicting flag is refused
    bad = cli("search", str(f), "--results-dir", str(res), "--resume", "--experiment", "other",
              cwd=tmp_path)
    assert bad.returncode == 2 and "cannot continue with --experiment other" in bad.stderr
    r = cli("search", str(f), "--results-dir", str(res), "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    after = trial_runs(db)
    assert len(after) == 3, after  # one run per trial, none duplicated by the restore
    assert {rid for rid, _ in before} <= {rid for rid, _ in after}
    assert all(s == "FINISHED" for _, s in after)
    parents = mlflow_rows(db, "select count(*) from tags where key = 'hpsearch.role' and "
                              "value = 'search'")
    assert parents[0][0] == 1
    # the Optuna study (its own storage, read without Ray) continued: one trial per Tune
    # trial, each told its value; the interrupted one was asked for again, not twice told
    import optuna

    (sid,) = [v for (v,) in mlflow_rows(db, "select value from tags where key = "
                                            "'hpsearch.optuna_study'")]
    study = optuna.load_study(study_name=sid, storage=f"sqlite:///{res / 'optuna.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3, [(t.number, t.state) for t in study.trials]
    # trial dirs are named by trial id, not by the constants every trial shares
    (sdir,) = (res / "ray").glob("res-*")
    trial_dirs = [p.name for p in sdir.iterdir() if p.is_dir()]
    assert len(trial_dirs) == 3 and all(n.startswith("tune_trainable_") and "=" not in n
                                        for n in trial_dirs), trial_dirs
    # the search has finished: nothing left to resume
    again = cli("search", str(f), "--results-dir", str(res), "--resume", cwd=tmp_path)
    assert again.returncode == 2 and "has finished" in again.stderr, again.stderr


def test_time_budget_ends_trials_finished_with_exportable_checkpoints(tmp_path):
    """When ``time_budget_s`` runs out, Tune ends the running trials without completing
    them: their runs must still end FINISHED (not ASHA-stopped), carry their checkpoint,
    and the best one must export."""
    f = tmp_path / "space.yaml"
    f.write_text(SPACE.format(name="tb", epochs=400, resources="{cpus_per_trial: 1}")
                 .replace("grace_period: 1}", "grace_period: 400, time_budget_s: 30}"))
    res = tmp_path / "results"
    r = cli("search", str(f), "--results-dir", str(res), "--export-best", str(tmp_path / "b"),
            cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "0 stopped early by asha" in r.stdout
    db = res / "mlflow.db"
    runs = dict(trial_runs(db))
    assert runs and "RUNNING" not in runs.values(), runs
    by_budget = [rid for rid in runs if mlflow_rows(
        db, f"select value from tags where run_uuid = '{rid}' and key = 'hpsearch.stopped_by'")
        == [("time_budget",)]]
    assert by_budget and all(runs[rid] == "FINISHED" for rid in by_budget)
    for rid in by_budget:
        epochs = mlflow_rows(db, f"select value from tags where run_uuid = '{rid}' and "
                                 "key = 'hpsearch.epochs_run'")[0][0]
        assert 0 < int(epochs) < 400
        art = Path(mlflow_rows(db, f"select artifact_uri from runs where run_uuid = '{rid}'"
                                   )[0][0].removeprefix("file://"))
        assert (art / "checkpoint" / "best.pt").exists()
    assert (tmp_path / "b" / "manifest.json").exists()
    # Ray's directories gone (cleaned up, another machine): export reads the MLflow artifact
    (res / "ray").rename(tmp_path / "ray-moved")
    ex = cli("export", by_budget[0], "--out", str(tmp_path / "b2"), "--results-dir", str(res),
             cwd=tmp_path)
    assert ex.returncode == 0, ex.stderr
    assert json.loads((tmp_path / "b2" / "manifest.json").read_text())["run_id"] == by_budget[0]
    parent = mlflow_rows(db, "select r.status from runs r join tags t on t.run_uuid = "
                             "r.run_uuid where t.key = 'hpsearch.role' and t.value = 'search'")
    assert parent == [("FINISHED",)]


STAGE1 = """name: stage1
family: euclidean_cone
dataset: synthetic
fixed:
  data.params: {max_per_leaf: 20, min_per_leaf: 6}
  model.params.dim: 4
  model.params.non_basic_fraction: 0.0
  optim.batch_size: 8
search:
  optim.lr: {type: loguniform, low: 0.01, high: 0.1}
metric: val_edge_f1
tie_break: val_edge_gap
budget: {num_samples: 1, max_epochs: 2}
"""

STAGE2 = """name: stage2
family: joint_euclidean_cone
dataset: synthetic
fixed:
  data.params: {max_per_leaf: 20, min_per_leaf: 6}
  model.width: 8
  model.params.dim: 4
  model.params.init: from_run
  model.params.init_from: mlflow:stage1/val_edge_f1
  optim.batch_size: 32
search:
  model.params.image_lr: {type: loguniform, low: 1.0e-3, high: 1.0e-2}
metric: val_micro_f1
budget: {num_samples: 1, max_epochs: 1}
"""


def test_staged_search_label_only_then_joint(tmp_path):
    """A joint image+label search initialised from the best run of a label-only search."""
    res = tmp_path / "results"
    for name, text in (("stage1", STAGE1), ("stage2", STAGE2)):
        f = tmp_path / f"{name}.yaml"
        f.write_text(text)
        r = cli("search", str(f), "--results-dir", str(res), "-v", "0", cwd=tmp_path)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    db = res / "mlflow.db"
    runs = trial_runs(db)
    assert len(runs) == 2 and all(s == "FINISHED" for _, s in runs)
    init_from = mlflow_rows(db, "select value from params where key = "
                                "'model.params.init_from' and run_uuid in (select run_uuid "
                                "from tags where key = 'hpsearch.family' and value = "
                                "'joint_euclidean_cone')")
    stage1_ckpt = mlflow_rows(db, "select value from tags where key = 'hpsearch.checkpoint' "
                                  "and run_uuid in (select run_uuid from tags where key = "
                                  "'hpsearch.family' and value = 'euclidean_cone')")
    assert init_from == stage1_ckpt  # the reference resolved to stage 1's best checkpoint
    # the tie-break's value at the best epoch and the midpoint-threshold test F1 reach MLflow
    for key in ("best_val_edge_gap", "test_edge_f1_midpoint", "test_threshold_midpoint"):
        assert mlflow_rows(db, f"select count(*) from metrics where key = '{key}'")[0][0] > 0
    # report on a label-only run: the edge and reconstruction tables, not an empty level table
    rep = cli("report", "--experiment", "stage1", "--metric", "val_edge_f1", "--tie-break",
              "val_edge_gap", "--results-dir", str(res), cwd=tmp_path, timeout=300)
    assert rep.returncode == 0, rep.stderr[-2000:]
    f1 = mlflow_rows(db, "select value from metrics where key = 'test_edge_f1' and run_uuid in "
                         "(select run_uuid from tags where key = 'hpsearch.family' and value = "
                         "'euclidean_cone') order by step desc limit 1")[0][0]
    assert f"| held-out edges, thesis threshold (Table 6.1) | {f1:.4f} |" in rep.stdout
    assert "labels: dataset" not in rep.stdout and "| all ordered label pairs |" in rep.stdout
    assert mlflow_rows(db, "select count(*) from metrics where key = 'test_micro_f1'")[0][0] > 0
