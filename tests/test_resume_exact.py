"""Exactly once after crashes, honest run statuses, bounded retries, a full disk.

Real Ray (the local cluster the driver starts, in a temp dir of this test), real MLflow (SQLite),
the driver a subprocess so that it can be SIGKILLed at a chosen moment. One search covers:

* a trial whose worker process is SIGKILLed mid-epoch (an infrastructure failure): Tune retries
  it and it resumes from its checkpoint (``hpsearch.retries`` 1);
* a trial whose sampled lr makes the loss NaN (deterministic): it runs once, its run FAILED with
  the error, the search goes on;
* the driver SIGKILLed while a trial has a checkpoint Tune's saved state may not know about:
  ``--resume`` finishes, no finished trial runs again, the interrupted one resumes from its
  newest checkpoint on disk, every trial has one run with one point per epoch, none RUNNING,
  no Ray process left;
* ASHA stopping a trial: ``hpsearch.status`` STOPPED, ``stopped_by`` asha, MLflow FINISHED,
  its checkpoint uploaded.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from hpsearch.errors import HpsearchError, TrackingError
from hpsearch.search.callbacks import MLflowTrialCallback, hpsearch_cause
from hpsearch.search.trainable import is_disk_full
from hpsearch.tasks.runner import checkpoint_report, newest_checkpoint, write_report
from hpsearch.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]

DATA = ("{level_sizes: [2, 4, 8], max_per_leaf: 24, min_per_leaf: 8, "
        "amplitudes: [0.6, 0.4, 0.3], grids: [2, 4, 8]}")
# random sampler, seed 92: the four trials sample lr 0.1, 1e-5, 1e6 (NaN loss), 0.1, in order
SPACE = f"""name: exact
family: per_level
dataset: synthetic
fixed:
  data.params: {DATA}
  model.width: 8
  optim.batch_size: 32
search:
  optim.lr: {{type: categorical, choices: [0.1, 1.0e6, 1.0e-5]}}
scheduler: asha
sampler: {{type: random, seed: 92}}
budget: {{num_samples: 4, max_epochs: 10, grace_period: 1, reduction_factor: 4,
          max_concurrent: 1}}
resources: {{cpus_per_trial: 1, max_failures: 2}}
"""
# ~0.1 s an epoch: 10 leave the kills below time to land mid-trial. ASHA's rungs are at epochs 1
# and 4, so the driver's victim (trial 4, the same lr as trial 1) meets a rung only at epoch 1
# before the kill (where it ties trial 1) and at epoch 4 after it
EPOCHS = 10


def _env(ray_tmp: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0",
           # the driver's Ray lives under this test's own temp dir (and never joins another
           # cluster found in the default one)
           # (TUNE_GLOBAL_CHECKPOINT_S comes from hpsearch's default, 1 s: a trial created
           # since Tune's last state save is unknown to --resume)
           "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    return env


def _driver(space: Path, res: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hpsearch.cli", "search", str(space), "--results-dir",
            str(res), *extra]


def _q(db: Path, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(db, timeout=30) as c:
        return c.execute(sql, args).fetchall()


def _procs() -> list[tuple[int, int, str]]:
    """(pid, ppid, cmdline) of every process."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out.append((int(d.name), ppid, cmd))
    return out


def _ray_daemons(ray_tmp: str) -> list[int]:
    """raylet and GCS processes whose session dir is under ``ray_tmp``."""
    return [p for p, _, c in _procs() if ray_tmp in c and ("raylet" in c or "gcs_server" in c)]


def _trial_workers(ray_tmp: str) -> list[int]:
    """Processes running a Tune trial of a raylet under ``ray_tmp``."""
    raylets = {p for p, _, c in _procs() if ray_tmp in c and "/raylet" in c}
    return [p for p, pp, c in _procs() if pp in raylets and c.startswith("ray::ImplicitFunc")]


def _trial_of_lr(db: Path, lr: str) -> list[str]:
    """Trial ids (oldest run first) of the runs with this sampled lr."""
    try:
        return [t for (t,) in _q(db, "select t.value from runs r join params p on "
                                     "p.run_uuid = r.run_uuid join tags t on t.run_uuid = "
                                     "r.run_uuid where p.key = 'optim.lr' and p.value = ? and "
                                     "t.key = 'hpsearch.trial_id' order by r.start_time", lr)]
    except sqlite3.Error:
        return []


def _newest_epoch(res: Path, trial_id: str) -> int:
    """The epoch of the trial's newest complete checkpoint on disk (0: none)."""
    reps = [checkpoint_report(Path(d)) for d in
            glob.glob(str(res / "ray" / "*" / f"*_{trial_id}" / "checkpoint_*"))]
    return max((r["epoch"] for r in reps if r), default=0)


def _wait(what: str, cond, proc: subprocess.Popen, timeout: float = 240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        assert proc.poll() is None, f"driver exited ({proc.returncode}) before {what}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _tags(db: Path, rid: str) -> dict[str, str]:
    return dict(_q(db, "select key, value from tags where run_uuid = ?", rid))


def _trial_runs(db: Path) -> dict[str, tuple[str, str, int | None, dict[str, str]]]:
    """{trial id: (run id, MLflow status, end time, tags)}."""
    out = {}
    for rid, status, end in _q(db, "select r.run_uuid, r.status, r.end_time from runs r join "
                                   "tags t on t.run_uuid = r.run_uuid where t.key = "
                                   "'hpsearch.role' and t.value = 'trial'"):
        tags = _tags(db, rid)
        out[tags["hpsearch.trial_id"]] = (rid, status, end, tags)
    return out


@pytest.mark.slow
def test_crash_resume_retry_nan_and_asha_statuses(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    res = tmp_path / "results"
    db = res / "mlflow.db"
    ray_tmp = tempfile.mkdtemp(prefix="rx", dir="/tmp")  # short: Ray's socket paths
    try:
        _crash_resume_retry_nan_and_asha(tmp_path, space, res, db, ray_tmp)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _crash_resume_retry_nan_and_asha(tmp_path: Path, space: Path, res: Path, db: Path,
                                     ray_tmp: str) -> None:
    env = _env(ray_tmp)
    assert not _ray_daemons(ray_tmp)
    log = (tmp_path / "driver1.log").open("w")
    proc = subprocess.Popen(_driver(space, res), cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        # 1. the first trial (lr 0.1) has a checkpoint: kill its worker mid-epoch
        (t1,) = _wait("trial 1", lambda: _trial_of_lr(db, "0.1")[:1], proc)
        _wait("trial 1's first checkpoint", lambda: _newest_epoch(res, t1) >= 1, proc)
        workers = _trial_workers(ray_tmp)
        assert len(workers) == 1, workers  # one trial at a time
        os.kill(workers[0], signal.SIGKILL)
        # 2. the fourth trial (lr 0.1 again; the second was stopped by ASHA, the third's NaN
        # ended it) has a checkpoint: kill the driver before its next experiment-state save
        t4 = _wait("trial 4", lambda: _trial_of_lr(db, "0.1")[1:2], proc)[0]
        _wait("trial 4's first checkpoint", lambda: _newest_epoch(res, t4) >= 1, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    deadline = time.time() + 60
    while _ray_daemons(ray_tmp) and time.time() < deadline:
        time.sleep(0.2)
    assert not _ray_daemons(ray_tmp), "the killed driver's Ray processes outlived it"
    t4_epoch = _newest_epoch(res, t4)  # nothing writes any more
    before = _trial_runs(db)
    assert before[t4][1] == "RUNNING"  # SIGKILL: nobody closed it
    (t2,) = _trial_of_lr(db, "1e-05")
    (t3,) = _trial_of_lr(db, "1000000.0")
    for t in (t1, t2, t3):
        assert before[t][1] != "RUNNING", before[t]
    r = subprocess.run(_driver(space, res, "--resume"), cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    out = r.stdout[-3000:] + r.stderr[-3000:]
    assert r.returncode == 0, out
    # the NaN trial counts as failed though Tune ended it normally (it was not retried)
    assert "4 trials, 1 stopped early by asha, 1 failed" in r.stdout, out
    assert not _ray_daemons(ray_tmp), "Ray processes left after the resumed search"

    runs = _trial_runs(db)
    assert len(runs) == 4, runs  # one run per trial: none duplicated, none orphaned
    assert all(status != "RUNNING" for _, status, _, _ in runs.values()), runs
    parents = _q(db, "select r.status, r.run_uuid from runs r join tags t on t.run_uuid = "
                     "r.run_uuid where t.key = 'hpsearch.role' and t.value = 'search'")
    assert [st for st, _ in parents] == ["FINISHED"]
    assert _tags(db, parents[0][1]).get("hpsearch.code_version", "").startswith("hpsearch ")
    for tid, (rid, status, _, tags) in runs.items():
        assert tags.get("hpsearch.code_version", "").startswith("hpsearch "), tags
        epochs = int(tags["hpsearch.epochs_run"])
        for key in ("val_micro_f1", "train_loss", "epoch"):  # exactly one point per epoch
            steps = [s for (s,) in _q(db, "select step from metrics where run_uuid = ? and "
                                          "key = ? order by step", rid, key)]
            assert steps == list(range(1, epochs + 1)), (tid, key, steps)

    # the worker killed mid-epoch: retried once, from its checkpoint, then finished
    rid1, status1, end1, tags1 = runs[t1]
    assert status1 == "FINISHED" and tags1["hpsearch.status"] == "FINISHED", tags1
    assert tags1["hpsearch.epochs_run"] == str(EPOCHS)
    assert tags1.get("hpsearch.retries") == "1", tags1
    assert int(tags1["hpsearch.resumed_from_epoch"]) >= 1, tags1
    # the bad lr: ASHA stopped it at its rung (epoch 1): STOPPED, FINISHED in MLflow, exportable
    rid2, status2, end2, tags2 = runs[t2]
    assert status2 == "FINISHED" and tags2["hpsearch.status"] == "STOPPED", tags2
    assert tags2["hpsearch.stopped_by"] == "asha" and tags2["hpsearch.stopped_early"] == "true"
    assert tags2["hpsearch.epochs_run"] == "1", tags2
    # MLflow has no "stopped" status: the run list says it in the run's name
    assert re.fullmatch(r"\S+/\d+ per_level .*\[stopped by asha at epoch 1/\d+\]",
                        tags2["mlflow.runName"]), tags2["mlflow.runName"]
    art = _q(db, "select artifact_uri from runs where run_uuid = ?", rid2)[0][0]
    assert (Path(art.removeprefix("file://")) / "checkpoint" / "best.pt").is_file()
    # the NaN trial: one attempt, FAILED with the error, not retried; the search went on
    rid3, status3, end3, tags3 = runs[t3]
    assert status3 == "FAILED" and tags3["hpsearch.status"] == "FAILED", tags3
    assert "NonFiniteLossError" in tags3["hpsearch.error"], tags3
    assert "hpsearch.retries" not in tags3 and tags3["hpsearch.epochs_run"] == "0", tags3
    # finished trials were not run again by --resume: their runs were never reopened
    assert [runs[t][2] for t in (t1, t2, t3)] == [before[t][2] for t in (t1, t2, t3)]
    assert tags1["hpsearch.resumed_from_epoch"] == before[t1][3]["hpsearch.resumed_from_epoch"]
    # the driver's victim resumed from its newest checkpoint on disk, not from scratch
    rid4, status4, _, tags4 = runs[t4]
    assert t4_epoch >= 1 and tags4["hpsearch.resumed_from_epoch"] == str(t4_epoch), (
        t4_epoch, tags4)
    assert status4 == "FINISHED" and "hpsearch.retries" not in tags4, tags4
    for rid, st, _, tags in runs.values():  # and only those
        assert (tags["hpsearch.status"] == "STOPPED") == (
            tags.get("hpsearch.stopped_early") == "true")


@pytest.mark.slow
def test_full_disk_under_the_results_dir_is_one_line_and_closes_the_runs(tmp_path):
    """A 3 MiB tmpfs as the results dir: the MLflow store fits, the first checkpoint (3.5 MB)
    does not."""
    mnt = tmp_path / "small"
    _tmpfs(mnt, "3m")
    try:
        space = tmp_path / "space.yaml"
        space.write_text(f"""name: full
family: per_level
dataset: synthetic
fixed:
  data.params: {DATA}
  model.width: 32
  optim.batch_size: 32
search:
  optim.lr: {{type: loguniform, low: 0.01, high: 0.1}}
budget: {{num_samples: 2, max_epochs: 2, max_concurrent: 1}}
resources: {{cpus_per_trial: 1, max_failures: 2}}
""")
        ray_tmp = tempfile.mkdtemp(prefix="rf", dir="/tmp")
        res = mnt / "results"
        try:
            r = subprocess.run(_driver(space, res), cwd=tmp_path, env=_env(ray_tmp),
                               capture_output=True, text=True, timeout=600)
            leaked = _ray_daemons(ray_tmp)
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)
        err = [ln for ln in r.stderr.splitlines() if ln.startswith("hpsearch: error:")]
        assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-4000:]
        assert "Traceback" not in r.stderr, r.stderr[-4000:]
        assert len(err) == 1 and str(res / "ray") in err[0] and "is full" in err[0], err
        db = res / "mlflow.db"
        statuses = _q(db, "select status from runs")
        assert statuses and ("RUNNING",) not in statuses, statuses
        failed = _q(db, "select t.value from tags t join runs r on r.run_uuid = t.run_uuid "
                        "where t.key = 'hpsearch.error' and r.status = 'FAILED'")
        assert any("is full" in v for (v,) in failed), failed
        assert not leaked, leaked
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if m.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {m.stderr.strip()[:200]}")


def test_a_full_tracking_store_is_one_line_naming_it(tmp_path):
    """The MLflow store (SQLite) on a disk that fills up while a trial logs: the callback's
    error is one line naming the store's path (what Tune then hands to the tuner)."""
    from ray.tune.experiment import Trial

    mnt = tmp_path / "small"
    _tmpfs(mnt, "2m")
    try:
        uri = f"sqlite:///{mnt}/mlflow.db"
        t = Tracker(uri, "full", artifact_root=mnt / "mlruns")
        parent = t.search_run("s1", "s1", tags={}, params={})
        cb = MLflowTrialCallback(uri, "full", "s1", parent, family="per_level",
                                 dataset="synthetic", max_epochs=10**6)
        trial = Trial("tune_trainable", config={}, trial_id="t1", stub=True)
        cb.on_trial_start(0, [trial], trial)
        with open(mnt / "filler", "wb") as f:  # someone else fills the disk
            with pytest.raises(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        result = {f"val_m{i}": 0.5 for i in range(200)}
        with pytest.raises(TrackingError) as e:
            for epoch in range(1, 100_000):
                cb.on_trial_result(0, [trial], trial, {**result, "epoch": epoch})
        msg = str(e.value)
        assert "\n" not in msg and f"{mnt}/mlflow.db is full" in msg, msg
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_checkpoint_reports_tell_complete_copies_from_cut_short_ones(tmp_path):
    dirs = []
    for i, epoch in enumerate((2, 3, 4)):
        d = tmp_path / f"checkpoint_{i:06d}"
        (d / "reports").mkdir(parents=True)
        (d / "checkpoint.pt").write_bytes(b"x" * 1000)
        (d / "reports" / "f1.csv").write_text("a,b\n")
        write_report(d, {"epoch": float(epoch), "val_micro_f1": 0.5})
        dirs.append(d)
    assert checkpoint_report(dirs[0])["epoch"] == 2
    assert newest_checkpoint(dirs)[0] == dirs[2]
    (dirs[2] / "checkpoint.pt").write_bytes(b"x" * 999)  # a copy cut short
    (dirs[1] / "reports" / "f1.csv").unlink()  # a file not copied yet
    assert checkpoint_report(dirs[2]) is None and checkpoint_report(dirs[1]) is None
    assert newest_checkpoint(dirs)[0] == dirs[0]
    (dirs[0] / "report.json").unlink()  # written before reports existed, or not copied yet
    assert newest_checkpoint(dirs) is None


def test_errors_behind_tunes_wrapping_and_full_disks_are_recognised():
    import errno
    import traceback

    from ray.tune.error import TuneError

    try:
        try:
            raise HpsearchError("the disk holding /x is full")
        except Exception:  # what TuneController._on_result does with a callback's error
            raise TuneError(traceback.format_exc()) from None
    except TuneError as wrapped:
        assert str(hpsearch_cause(wrapped)) == "the disk holding /x is full"
    assert hpsearch_cause(TuneError("worker died")) is None
    assert is_disk_full(OSError(errno.ENOSPC, "Error writing bytes to file"))
    try:
        try:
            raise RuntimeError("(sqlite3.OperationalError) database or disk is full")
        except RuntimeError as inner:
            raise ValueError("MlflowException") from inner
    except ValueError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
