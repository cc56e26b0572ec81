"""The tracking layer on a real tracking stack: ``mlflow server`` with its basic-auth app on a
PostgreSQL backend store (tests/servers.py), searches through the CLI on a 2-node Ray cluster.
Outages are real: the server process killed and started again on the same port and store, or
the network to it cut (a TCP proxy in front of it). Counts are read from PostgreSQL itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpsearch.errors import TrackingError
from hpsearch.tasks import resolved_params, validate_trial
from hpsearch.tracking import CONFIG_ARTIFACT, Tracker, replay_spool
from tests.servers import TcpProxy, running_ray_nodes, running_tracking_stack

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# demo.yaml's shape (per-level classifier, conditional momentum, ASHA), on tiny data; the
# grace period is the whole budget, so no trial is stopped early and every trial runs `epochs`
SPACE = """name: {name}
family: per_level
dataset: synthetic
fixed:
  data.params: {{level_sizes: [2, 4, 8], max_per_leaf: {per_leaf}, min_per_leaf: 8,
                 amplitudes: [0.6, 0.4, 0.3], grids: [2, 4, 8]}}
  model.width: 8
  optim.batch_size: 32
search:
  optim.lr: {{type: loguniform, low: 0.01, high: 0.2}}
  optim.optimizer: {{type: categorical, choices: [sgd, adamw]}}
  optim.momentum: {{type: uniform, low: 0.5, high: 0.95, when: {{optim.optimizer: sgd}}}}
budget: {{num_samples: {samples}, max_epochs: {epochs}, grace_period: {epochs}}}
resources: {{cpus_per_trial: 1}}
"""


@pytest.fixture(scope="module")
def stack():
    """One PostgreSQL + MLflow server for the module (the outage test restarts the server)."""
    with running_tracking_stack() as s:
        yield s


@pytest.fixture(scope="module")
def nodes():
    """2 Ray nodes of 1 CPU: 2 trials at a time, on two nodes."""
    with running_ray_nodes(2, 1) as cluster:
        yield cluster


def start_search(tmp: Path, name: str, stack, nodes, *, samples: int, epochs: int,
                 per_leaf: int = 24, env: dict[str, str] | None = None) -> subprocess.Popen:
    f = tmp / f"{name}.yaml"
    f.write_text(SPACE.format(name=name, samples=samples, epochs=epochs, per_leaf=per_leaf))
    return subprocess.Popen(
        [sys.executable, "-m", "hpsearch.cli", "search", str(f), "--tracking-uri", stack.uri,
         "--address", nodes.address, "--results-dir", str(tmp / "results"), "-v", "0"],
        cwd=tmp, env={**os.environ, "PYTHONPATH": str(ROOT), **nodes.env, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def runs_of(stack, experiment: str) -> dict[str, tuple[str, str]]:
    """{run id: (hpsearch.role, MLflow status)} of the experiment, from PostgreSQL."""
    rows = stack.sql(
        "select r.run_uuid, t.value, r.status from runs r join experiments e on "
        "e.experiment_id = r.experiment_id left join tags t on t.run_uuid = r.run_uuid and "
        "t.key = 'hpsearch.role' where e.name = %s", (experiment,))
    return {rid: (role, status) for rid, role, status in rows}


def history(stack, run_id: str) -> dict[str, list[int]]:
    """{metric key: its steps, one entry per stored point, in order}."""
    out: dict[str, list[int]] = {}
    for key, step in stack.sql("select key, step from metrics where run_uuid = %s order by "
                               "key, step", (run_id,)):
        out.setdefault(key, []).append(step)
    return out


def check_search(stack, experiment: str, trials: int, epochs: int) -> list[str]:
    """Exact counts of one finished search; returns the trial run ids."""
    runs = runs_of(stack, experiment)
    roles = sorted(role for role, _ in runs.values())
    assert roles == ["search"] + ["trial"] * trials, runs  # one parent, one run per trial
    assert all(status == "FINISHED" for _, status in runs.values()), runs  # none RUNNING
    t = Tracker(stack.uri, experiment)
    trial_ids = [rid for rid, (role, _) in runs.items() if role == "trial"]
    for rid in trial_ids:
        # the params are exactly what the trial's config resolves to
        cfg = validate_trial(t.load_dict(rid, CONFIG_ARTIFACT))
        want = {k: str(v) for k, v in resolved_params(cfg).items()}
        got = dict(stack.sql("select key, value from params where run_uuid = %s", (rid,)))
        assert got == want, set(got.items()) ^ set(want.items())
        # every metric: exactly one point per epoch run, none doubled, none lost
        hist = history(stack, rid)
        assert {"epoch", "train_loss", "val_micro_f1", "best_val_micro_f1"} <= set(hist)
        bad = {k: s for k, s in hist.items() if s != list(range(1, epochs + 1))}
        assert not bad, f"run {rid}: {bad}"
        tags = dict(stack.sql("select key, value from tags where run_uuid = %s", (rid,)))
        assert tags["hpsearch.epochs_run"] == str(epochs)
    return trial_ids


def test_search_on_an_authenticated_server_exact_counts(stack, nodes,
                                                        tmp_path, monkeypatch):
    """4 trials on 2 Ray nodes (2 at a time) against mlflow server + PostgreSQL with basic
    auth: 1 parent + 4 trial runs, params = the resolved config, one point per epoch."""
    proc = start_search(tmp_path, "srv", stack, nodes, samples=4, epochs=2)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert "unreachable" not in err
    check_search(stack, "srv", trials=4, epochs=2)
    # the wrong password: one line, before Ray starts or any run is written
    from hpsearch.search.space import load_space
    from hpsearch.search.tuner import SearchOptions, run_search

    before = stack.sql("select count(*) from runs")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    f = tmp_path / "badpw.yaml"
    f.write_text(SPACE.format(name="srv-badpw", samples=1, epochs=1, per_leaf=12))
    space = load_space(f)
    with pytest.raises(TrackingError) as e:
        run_search(space, SearchOptions(tracking_uri=stack.uri, verbose=0,
                                        results_dir=str(tmp_path / "res2")))
    msg = str(e.value)
    assert "\n" not in msg and "refused the credentials (HTTP 401)" in msg, msg
    assert "MLFLOW_TRACKING_PASSWORD" in msg
    assert stack.sql("select count(*) from runs") == before
    assert not (tmp_path / "res2" / "ray").exists()


def test_server_killed_mid_search_nothing_lost_or_doubled(stack, nodes,
                                                         tmp_path):
    """The MLflow server process dies after the first trial reported and comes back ~30 s
    later on the same port and store: the search finishes, trials kept training meanwhile,
    every metric has exactly one point per epoch, no run is left RUNNING, and the driver said
    so on one line each way."""
    epochs = 2
    proc = start_search(tmp_path, "outage", stack, nodes, samples=4, epochs=epochs,
                        env={"HPSEARCH_MLFLOW_BACKOFF_MAX_S": "4"})
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        n = stack.sql("select count(*) from metrics m join runs r on r.run_uuid = "
                               "m.run_uuid join experiments e on e.experiment_id = "
                               "r.experiment_id where e.name = 'outage'")[0][0]
        if n:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    killed = time.time()
    stack.server.kill()
    # down 20 s, then the restart's own 10-15 s: the second pair of trials starts and trains
    # while there is no server
    time.sleep(max(0.0, killed + 20 - time.time()))
    stack.server.start()
    back = time.time()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    lines = err.splitlines()
    down = [x for x in lines if x.startswith("hpsearch: MLflow at") and "unreachable" in x]
    up = [x for x in lines if x.startswith("hpsearch: MLflow at") and " back after " in x]
    assert len(down) == 1 and "buffering" in down[0] and stack.uri in down[0], err
    assert len(up) == 1 and "flushed" in up[0], err
    trial_ids = check_search(stack, "outage", trials=4, epochs=epochs)
    # the trials went on while the server was down: points were logged (and kept their own
    # timestamps) during the outage
    during = stack.sql(
        "select count(*) from metrics where run_uuid = any(%s) and timestamp > %s and "
        "timestamp < %s", (trial_ids, int(killed * 1000) + 500, int(back * 1000) - 500))
    assert during[0][0] > 0


def test_buffer_replays_in_order_and_spools_what_an_outage_keeps(stack, tmp_path,
                                                                 monkeypatch, capfd):
    """The Tracker's write-ahead buffer on its own, through a proxy whose network can be cut:
    a write that landed but whose answer was lost is not doubled on replay; a 4xx still
    raises; writes during an outage (a new trial run included) are flushed on the next
    contact; at the end of a search with the server still unreachable they go to a spool file
    whose replay (twice) gives the same exact counts."""
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("HPSEARCH_MLFLOW_RETRY_S", "3")
    monkeypatch.setenv("HPSEARCH_MLFLOW_BACKOFF_S", "0.2")
    monkeypatch.setenv("HPSEARCH_MLFLOW_BACKOFF_MAX_S", "0.5")
    proxy = TcpProxy(stack.server.port)
    try:
        t = Tracker(proxy.uri, "unit")
        t.check()
        parent = t.search_run("s-u", "s-u", tags={}, params={"space": "x"})
        r1, created = t.trial_run(parent, "s-u", "t1", name="t1", tags={})
        assert created and not r1.startswith("pending-")
        t.log_params(r1, {"lr": 0.1})
        with pytest.raises(MlflowException, match="Changing param values is not allowed"):
            t.log_params(r1, {"lr": 0.2})  # a refused write is no outage: it raises
        t.log_metrics(r1, {"val": 0.1, "loss": 1.0}, step=1)
        proxy.drop_responses = True  # step 2 reaches the server, its answer does not
        t.log_metrics(r1, {"val": 0.2, "loss": 0.9}, step=2)
        assert t.buffered() == {"writes": 1, "metric_points": 2}
        proxy.drop_responses = False
        time.sleep(0.6)
        t.log_metrics(r1, {"val": 0.3, "loss": 0.8}, step=3)  # replays step 2, then sends 3
        assert t.buffered()["writes"] == 0
        assert history(stack, r1) == {"loss": [1, 2, 3], "val": [1, 2, 3]}
        err = capfd.readouterr().err
        assert err.count("unreachable since") == 1 and err.count(" back after ") == 1, err

        # the end of a search while the network is down: all of it goes to the spool file
        proxy.down()
        t.log_metrics(r1, {"val": 0.4, "loss": 0.7}, step=4)
        r2, created = t.trial_run(parent, "s-u", "t2", name="t2", tags={"family": "f"})
        assert created and r2.startswith("pending-")  # its creation waits in the buffer
        t.log_params(r2, {"lr": 0.05})
        for step in (1, 2, 3):
            t.log_metrics(r2, {"val": step / 10, "loss": 1 / step}, step=step)
        t.log_dict(r2, {"model": {"family": "f"}}, CONFIG_ARTIFACT)
        art = tmp_path / "ckpt"
        art.mkdir()
        (art / "best.pt").write_bytes(b"weights")
        t.log_artifacts(r2, art, "checkpoint")
        (art / "best.pt").unlink()  # the caller's directory may be gone before the replay
        for rid in (r1, r2, parent):
            t.end_run(rid, "FINISHED")
        assert t.buffered()["metric_points"] == 2 + 6
        spool = t.close(tmp_path / "results")
        assert spool is not None and spool.parent == tmp_path / "results"
        assert t.buffered()["writes"] == 0
        err = capfd.readouterr().err.splitlines()
        saved = [x for x in err if "saved to" in x]
        assert len(saved) == 1 and f"hpsearch replay-spool {spool}" in saved[0], err
        assert "8 metric points" in saved[0]
        assert runs_of(stack, "unit")[r1] == ("trial", "RUNNING")  # not sent yet
    finally:
        proxy.down()
    # the server answers again (the replay goes straight to it, not through the proxy)
    first = replay_spool(spool, uri=stack.uri)
    assert first == {"writes": 14, "metric_points": 8, "skipped_points": 0, "runs_created": 1,
                     "refused": 0}
    again = replay_spool(spool, uri=stack.uri)  # idempotent
    assert again["metric_points"] == 0 and again["skipped_points"] == 8
    assert again["runs_created"] == 0
    runs = runs_of(stack, "unit")
    assert sorted(runs.values()) == [("search", "FINISHED"), ("trial", "FINISHED"),
                                     ("trial", "FINISHED")]
    (r2_real,) = [rid for rid, (role, _) in runs.items() if role == "trial" and rid != r1]
    assert history(stack, r1) == {"loss": [1, 2, 3, 4], "val": [1, 2, 3, 4]}
    assert history(stack, r2_real) == {"loss": [1, 2, 3], "val": [1, 2, 3]}
    t2 = Tracker(stack.uri, "unit")
    assert t2.load_dict(r2_real, CONFIG_ARTIFACT) == {"model": {"family": "f"}}
    got = t2.download(r2_real, "checkpoint/best.pt", tmp_path / "dl")
    assert got.read_bytes() == b"weights"
    tags = dict(stack.sql("select key, value from tags where run_uuid = %s",
                                   (r2_real,)))
    assert tags["mlflow.parentRunId"] == parent and tags["hpsearch.family"] == "f"
    assert dict(stack.sql("select key, value from params where run_uuid = %s",
                                   (r2_real,))) == {"lr": "0.05"}
