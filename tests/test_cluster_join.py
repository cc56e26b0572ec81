"""Searches on real Ray clusters started as a user starts them (``ray start``, token
authentication on, Ray 2.60's default), and what a search refuses before writing anything.

One cluster for the module: a head with no CPUs (trials must run on the workers) and two
worker nodes of one CPU each, every node with its own ``--temp-dir``; the first worker runs in
a private mount namespace where the driver's results dir is an empty tmpfs, so it cannot see
anything the driver writes there. One search on it covers: joining with the token found in
``RAY_AUTH_TOKEN_PATH``; trials importing the hpsearch the driver ships (the driver runs from a
directory whose ``hpsearch/`` would fail on import); checkpoints in a shared ``--storage``
(a ``file://`` URI); a worker node killed mid-trial, the trial resumed from its checkpoint on
the other node. The other tests check the one-line refusals (bad address, wrong token,
impossible resources, RAY_ADDRESS not joined, bad results dir) and the pure rules.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from hpsearch.config import ResourceConfig
from hpsearch.errors import ConfigError
from hpsearch.search import cluster
from hpsearch.search.cluster import ClusterError, Storage, Target

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")

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
scheduler: fifo
budget: {{num_samples: 2, max_epochs: {epochs}, max_concurrent: 1}}
resources: {resources}
"""


def space_file(d: Path, name: str, resources: str = "{cpus_per_trial: 1}", epochs: int = 2,
               per_leaf: int = 24) -> Path:
    f = d / f"{name}.yaml"
    f.write_text(SPACE.format(name=name, resources=resources, epochs=epochs, per_leaf=per_leaf))
    return f


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Ray's address / auth settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(PYTHONPATH=str(ROOT), RAY_DEDUP_LOGS="0", **extra)
    return env


def cli_cmd(*args: str) -> list[str]:
    # -P: the driver does not import from its working directory either (only Ray's workers
    # would, without the shipped package)
    return [sys.executable, "-P", "-m", "hpsearch.cli", *args]


def search_with_storage(space: Path, address: str, results: Path, storage: str) -> list[str]:
    return cli_cmd("search", str(space), "--address", address, "--results-dir", str(results),
                   "--storage", storage, "-v", "0")


def sessions_procs(sid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (p / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[3]) == sid:
                out.append(int(p.name))
    return out


def kill_session(sid: int, sig: int = signal.SIGKILL) -> None:
    """Every process of the session ``sid`` (one ``setsid``-started ``ray start`` and all it
    spawned: Ray's workers take process groups of their own, not sessions)."""
    for pid in sessions_procs(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


class Gcs:
    """Read-only questions to the cluster's GCS over gRPC, with the cluster's token."""

    def __init__(self, port: int, token: str):
        self.target = Target("gcs", f"127.0.0.1:{port}", "127.0.0.1", port)
        self.md = (("authorization", f"Bearer {token}"),)

    def nodes(self) -> list:
        import grpc
        from ray.core.generated import gcs_service_pb2 as pb
        from ray.core.generated import gcs_service_pb2_grpc as g

        with grpc.insecure_channel(self.target.hostport) as ch:
            return list(g.NodeInfoGcsServiceStub(ch).GetAllNodeInfo(
                pb.GetAllNodeInfoRequest(), timeout=5, metadata=self.md).node_info_list)

    def job_pids(self) -> set[int]:
        import grpc
        from ray.core.generated import gcs_service_pb2 as pb
        from ray.core.generated import gcs_service_pb2_grpc as g

        with grpc.insecure_channel(self.target.hostport) as ch:
            reply = g.JobInfoGcsServiceStub(ch).GetAllJobInfo(
                pb.GetAllJobInfoRequest(), timeout=5, metadata=self.md)
        return {j.driver_pid for j in reply.job_info_list}


def mount_namespace_works(d: Path) -> bool:
    d.mkdir(parents=True, exist_ok=True)
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        f"mount -t tmpfs tmpfs {d} && touch {d}/x"], capture_output=True)
    return r.returncode == 0 and not (d / "x").exists()


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """``ray start --head`` (0 CPUs) + two ``ray start --address`` worker nodes (1 CPU each,
    their own temp dirs); token authentication from a token file of the test's own."""
    if not RAY.exists():
        pytest.skip(f"no `ray` command beside {sys.executable}")
    base = tmp_path_factory.mktemp("cluster")
    # Ray's sockets live under --temp-dir: AF_UNIX paths are at most 107 bytes
    rt = Path(tempfile.mkdtemp(prefix="hpray-", dir="/tmp"))
    results, shared = base / "results", base / "shared"
    shared.mkdir()
    token_file = base / "token"
    token = secrets.token_hex(32)
    token_file.write_text(token)
    isolated = mount_namespace_works(results)
    env = clean_env(RAY_AUTH_TOKEN_PATH=str(token_file),
                    # a killed node is declared dead in seconds, not Ray's default ~30 s
                    RAY_health_check_period_ms="1000", RAY_health_check_timeout_ms="2000",
                    RAY_health_check_failure_threshold="4")
    (port, dash, nm, om, client, metrics, agent, agent_grpc, rt_agent) = free_ports(9)
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, argv: list[str], node_env: dict[str, str]) -> None:
        log = open(base / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        procs[name] = subprocess.Popen(argv, env=node_env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)

    start("head", [str(RAY), "start", "--head", "--port", str(port), "--dashboard-host",
                   "127.0.0.1", "--dashboard-port", str(dash), "--node-manager-port", str(nm),
                   "--object-manager-port", str(om), "--ray-client-server-port", str(client),
                   "--metrics-export-port", str(metrics), "--dashboard-agent-listen-port",
                   str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
                   "--runtime-env-agent-port", str(rt_agent), "--num-cpus", "0",
                   "--temp-dir", str(rt / "head"), "--disable-usage-stats", "--block"],
          env)
    gcs = Gcs(port, token)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            with contextlib.suppress(Exception):
                if gcs.nodes():
                    break
            if procs["head"].poll() is not None:
                pytest.fail("ray start --head exited: " + (base / "head.log").read_text()[-2000:])
            time.sleep(0.5)
        # Ray 2.60 turns token authentication on for `ray start --head` when a token exists
        import grpc

        assert cluster._rpc(gcs.target, (), 5) == grpc.StatusCode.UNAUTHENTICATED
        worker_env = {**env, "RAY_AUTH_MODE": "token"}  # `ray start --address` needs it said
        for i, name in enumerate(("w1", "w2")):
            nm_w, om_w, me_w, ag_w, agg_w, rt_w = free_ports(6)
            argv = [str(RAY), "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
                    "--node-manager-port", str(nm_w), "--object-manager-port", str(om_w),
                    "--metrics-export-port", str(me_w), "--dashboard-agent-listen-port",
                    str(ag_w), "--dashboard-agent-grpc-port", str(agg_w),
                    "--runtime-env-agent-port", str(rt_w), "--temp-dir",
                    str(rt / name), "--disable-usage-stats", "--block"]
            if i == 0 and isolated:  # this node sees an empty tmpfs at the results dir
                argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        f'mount -t tmpfs tmpfs {results} && exec "$@"', "sh", *argv]
            start(name, argv, worker_env)
        while time.time() < deadline:
            alive = [n for n in gcs.nodes() if n.state == 0]
            if len(alive) == 3:
                break
            for name in ("w1", "w2"):
                if procs[name].poll() is not None:
                    pytest.fail(f"worker {name} exited: "
                                + (base / f"{name}.log").read_text()[-2000:])
            time.sleep(0.5)
        else:
            pytest.fail("the worker nodes did not join within 120 s")
        yield {"base": base, "port": port, "results": results, "shared": shared,
               "token_file": token_file, "gcs": gcs, "procs": procs, "isolated": isolated,
               "env": clean_env(RAY_AUTH_TOKEN_PATH=str(token_file))}
    finally:
        for p in procs.values():
            kill_session(p.pid, signal.SIGTERM)
        time.sleep(2)
        for p in procs.values():
            kill_session(p.pid)
            with contextlib.suppress(Exception):
                p.wait(timeout=10)
        shutil.rmtree(rt, ignore_errors=True)


def trial_processes(sid: int) -> list[int]:
    return [pid for pid in sessions_procs(sid) if "ImplicitFunc" in cmdline(pid)]


def mlflow_rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute(sql).fetchall()


@pytest.mark.slow
def test_search_on_a_token_cluster_ships_its_code_and_resumes_after_a_node_dies(ray_cluster):
    c = ray_cluster
    base, results, shared = c["base"], c["results"], c["shared"]
    decoy = base / "decoy"  # the driver's working directory: its hpsearch/ must not be used
    (decoy / "hpsearch").mkdir(parents=True)
    (decoy / "hpsearch" / "__init__.py").write_text(
        'raise ImportError("a trial imported hpsearch from the driver\'s working directory")\n')
    space = space_file(base, "join", epochs=5, per_leaf=100)
    storage = f"file://{shared}"
    if c["isolated"]:  # the first worker node has its own, empty, results dir
        w1_mounts = Path(f"/proc/{c['procs']['w1'].pid}/mounts").read_text()
        assert f" {results} tmpfs " in w1_mounts
    proc = subprocess.Popen(search_with_storage(space, f"127.0.0.1:{c['port']}", results,
                                                storage),
                            cwd=decoy, env=c["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    # kill the worker node running the first trial once it has checkpointed its second epoch
    workers = {name: c["procs"][name].pid for name in ("w1", "w2")}
    killed = killed_pids = None
    deadline = time.time() + 400
    while proc.poll() is None and time.time() < deadline and killed is None:
        if any(shared.glob("join-*/tune_trainable_*/checkpoint_00000[1-9]")):
            for name, sid in workers.items():
                pids = trial_processes(sid)
                if pids:
                    killed, killed_pids = name, pids
                    kill_session(sid)
                    break
        time.sleep(0.1)
    out, _ = proc.communicate(timeout=max(10, deadline - time.time()))
    assert proc.returncode == 0, out[-4000:]
    assert killed is not None, "no worker node was running a trial with a checkpoint"
    assert "2 trials" in out and "0 failed" in out, out[-2000:]
    db = results / "mlflow.db"
    runs = dict(mlflow_rows(db, "select r.run_uuid, r.status from runs r join tags t on "
                                "t.run_uuid = r.run_uuid where t.key = 'hpsearch.role' and "
                                "t.value = 'trial'"))
    assert len(runs) == 2 and set(runs.values()) == {"FINISHED"}, runs
    tags = dict(mlflow_rows(db, "select t.key, t.value from tags t join tags r on "
                                "r.run_uuid = t.run_uuid where r.key = 'hpsearch.role' and "
                                "r.value = 'search'"))
    from hpsearch.provenance import code_version

    assert tags["hpsearch.code_version"] == code_version()
    assert tags["hpsearch.storage"] == storage
    # the search's state and checkpoints live in the shared storage, none under results/
    assert not (results / "ray").exists()
    (sdir,) = shared.glob("join-*")
    ckpts = {p.parent.name for p in sdir.glob("tune_trainable_*/checkpoint_*")}
    assert len(ckpts) == 2, ckpts
    ckpt_tags = [v for (v,) in mlflow_rows(db, "select value from tags where key = "
                                               "'hpsearch.checkpoint'")]
    assert len(ckpt_tags) == 2 and all(v.startswith(str(sdir)) for v in ckpt_tags), ckpt_tags
    # the killed node is dead; its trial went on from a checkpoint on the other node: the
    # second process never ran epoch 1 (as a restart from scratch would), every epoch was run
    for _ in range(60):  # GCS health checks: seconds after the kill
        dead = {n.temp_dir for n in c["gcs"].nodes() if n.state == 1}
        if any(d.rstrip("/").endswith(f"/{killed}") for d in dead):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"node {killed} was killed but the cluster still lists it alive")
    histories = []
    for f in sdir.glob("tune_trainable_*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        histories.append([(int(r["epoch"]), r["pid"]) for r in rows if "epoch" in r])
    resumed = [h for h in histories if set(killed_pids) & {pid for _, pid in h}]
    assert len(resumed) == 1, (killed_pids, histories)
    after = [e for e, pid in resumed[0] if pid not in killed_pids]
    assert after and min(after) >= 2 and after[-1] == 5, resumed
    assert sorted({e for e, _ in resumed[0]}) == list(range(1, 6)), resumed
    # both worker nodes ran trial code (the killed one, then the other), so the isolated
    # one did, without seeing the results dir
    if not c["isolated"]:
        pytest.skip("mount namespaces are not permitted here (unshare/mount as root): the "
                    "worker that cannot see the results dir was not tested")


@pytest.mark.slow
def test_refusals_name_the_problem_in_one_line_and_write_nothing(ray_cluster, tmp_path,
                                                                 monkeypatch, capsys):
    """Bad addresses, a wrong token, a results dir that cannot be: one line, exit 2, nothing
    written (in this process: nothing here reaches ``ray.init``). Impossible resources and an
    ignored RAY_ADDRESS: two CLI processes, at once."""
    from hpsearch.cli import main

    c = ray_cluster
    port = c["port"]
    space = space_file(tmp_path, "refuse")
    # (c)+(d) as processes: they start Ray (a private cluster / a driver on the cluster)
    gpu = space_file(tmp_path, "gpu", resources="{cpus_per_trial: 1, gpus_per_trial: 4}")
    cpu = space_file(tmp_path, "cpu", resources="{cpus_per_trial: 64}")
    res_c, res_d = tmp_path / "res-c", tmp_path / "res-d"
    jobs_before = c["gcs"].job_pids()
    p_c = subprocess.Popen(cli_cmd("search", str(gpu), "--results-dir", str(res_c), "-v", "0"),
                           cwd=tmp_path, env={**c["env"], "RAY_ADDRESS": f"127.0.0.1:{port}"},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p_d = subprocess.Popen(cli_cmd("search", str(cpu), "--results-dir", str(res_d), "-v", "0",
                                   "--address", f"127.0.0.1:{port}"),
                           cwd=tmp_path, env=c["env"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)

    def one_line(args: list[str], expect: str) -> None:
        res = tmp_path / "res"
        assert main(["search", str(space), "--results-dir", str(res), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("hpsearch: error: ") and "\n" not in err, err
        assert expect in err, err
        assert not res.exists(), list(res.iterdir())

    for var in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(c["token_file"]))
    (closed,) = free_ports(1)
    one_line(["--address", f"127.0.0.1:{closed}"], f"nothing answers at 127.0.0.1:{closed} "
             "(connection refused)")
    one_line(["--address", "not_an_address"], "--address not_an_address: not an address; "
             "expected HOST:PORT")
    one_line(["--address", f"http://127.0.0.1:{port}"], "unknown scheme http://")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "wrong")
    one_line(["--address", f"127.0.0.1:{port}"], "the cluster refused the token from "
             "RAY_AUTH_TOKEN; set RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    one_line(["--address", f"127.0.0.1:{port}"], "requires token authentication but "
             "RAY_AUTH_MODE=disabled")
    monkeypatch.delenv("RAY_AUTH_MODE")
    afile = tmp_path / "a-file"
    afile.write_text("")
    one_line(["--results-dir", str(afile / "sub")], f"{afile} is a file, not a directory")
    one_line(["--results-dir", "/proc/hpsearch-results"], "cannot create anything in /proc")
    one_line(["--storage", "ftp://host/x"], "--storage ftp://host/x: unknown scheme")
    one_line(["--num-samples", str(10**12)], f"num_samples {10**12}: more than")

    out_d, err_d = p_d.communicate(timeout=300)
    assert p_d.returncode == 2, out_d[-2000:] + err_d[-2000:]
    last = err_d.strip().splitlines()[-1]
    assert last.startswith(f"hpsearch: error: resources.cpus_per_trial 64: no node of the "
                           f"cluster at 127.0.0.1:{port} has 64 CPU (nodes: 1 x {{CPU: 0, GPU: "
                           "0}, "), err_d[-2000:]
    assert last.endswith(" x {CPU: 1, GPU: 0}); lower it (a trial runs on one node) or add a "
                         "node that large"), last
    assert not (res_d / "ray").exists()  # nor any MLflow run
    assert mlflow_rows(res_d / "mlflow.db", "select count(*) from runs") == [(0,)]

    out_c, err_c = p_c.communicate(timeout=300)
    assert p_c.returncode == 2, out_c[-2000:] + err_c[-2000:]
    lines = [ln for ln in err_c.splitlines() if ln.startswith("hpsearch: ")]
    assert lines[0] == (f"hpsearch: RAY_ADDRESS=127.0.0.1:{port} ignored: without --address a "
                        "search starts a private local cluster; pass --address auto to join "
                        "RAY_ADDRESS"), err_c[-2000:]
    assert lines[1].startswith("hpsearch: error: resources.gpus_per_trial 4: no node of the "
                               "private local cluster has 4 GPU (nodes: 1 x {CPU: "), lines
    assert lines[1].endswith("GPU: 0}); lower it or join a GPU cluster"), lines
    # the cluster RAY_ADDRESS names never saw that driver; the other one did join it
    jobs_after = c["gcs"].job_pids()
    assert p_c.pid not in jobs_after and p_d.pid in jobs_after - jobs_before
    assert mlflow_rows(res_c / "mlflow.db", "select count(*) from runs") == [(0,)]


# ---------------------------------------------------------------------- the rules, no cluster
def test_address_forms():
    env: dict[str, str] = {}
    assert cluster.parse_address(None, env).kind == "local"
    t = cluster.parse_address(None, {"RAY_ADDRESS": "10.0.0.5:6379"})
    assert t.kind == "local" and "RAY_ADDRESS=10.0.0.5:6379 ignored" in \
        cluster.ignored_env_line(t)
    t = cluster.parse_address("auto", {"RAY_ADDRESS": "10.0.0.5:6379"})
    assert (t.kind, t.hostport) == ("gcs", "10.0.0.5:6379")
    t = cluster.parse_address("ray://head.example:10001", env)
    assert (t.kind, t.init_address) == ("client", "ray://head.example:10001")
    assert cluster.parse_address("[::1]:6379", env).hostport == "[::1]:6379"
    for bad, msg in [("not_an_address", "not an address"), ("h:0", "out of range"),
                     ("h:70000", "out of range"), ("h:", "not an address"),
                     ("https://h:8265", "dashboard / Jobs API address")]:
        with pytest.raises(ClusterError, match=msg):
            cluster.parse_address(bad, env)
    with pytest.raises(ClusterError, match="RAY_ADDRESS=x:y"):
        cluster.parse_address("auto", {"RAY_ADDRESS": "x:y"})


NODES = [{"CPU": 0.0, "memory": 1e9, "node:10.0.0.1": 1.0},
         {"CPU": 2.0, "GPU": 0.0}, {"CPU": 2.0}]


@pytest.mark.parametrize("res, expect", [
    ({"cpus_per_trial": 2}, None),
    ({"cpus_per_trial": 3}, "resources.cpus_per_trial 3: no node of X has 3 CPU (nodes: 1 x "
                            "{CPU: 0, GPU: 0}, 2 x {CPU: 2, GPU: 0})"),
    ({"gpus_per_trial": 1}, "resources.gpus_per_trial 1: no node of X has 1 GPU"),
    # TorchTrainer: the driver on one node, each worker's bundle on some node
    ({"num_workers": 3, "cpus_per_worker": 1, "driver_cpus": 0.5}, None),
    ({"num_workers": 4, "cpus_per_worker": 1, "driver_cpus": 0.5},
     "resources.num_workers 4: X holds at most 3 workers of 1 CPU beside the trial's driver"),
    ({"num_workers": 2, "cpus_per_worker": 3}, "resources.cpus_per_worker 3: no node of X has "
                                               "3 CPU for one TorchTrainer worker"),
    ({"num_workers": 2, "cpus_per_worker": 1, "gpus_per_trial": 1},
     "resources.gpus_per_trial 1: no node of X has 1 GPU for one TorchTrainer worker"),
    ({"num_workers": 2, "driver_cpus": 4}, "resources.driver_cpus 4: no node of X has 4 CPU"),
])
def test_trials_must_fit_on_some_node(res, expect):
    r = ResourceConfig(**res)
    if expect is None:
        assert cluster.check_fits(r, NODES, "X") is None
        return
    with pytest.raises(ClusterError) as e:
        cluster.check_fits(r, NODES, "X")
    assert str(e.value).startswith(expect), str(e.value)
    # a configured autoscaler may add such a node: accepted, with a line saying so
    note = cluster.check_fits(r, NODES, "X", autoscaler="its autoscaler (node types seen: g)")
    assert note.startswith(f"hpsearch: {expect}") and "accepted because its autoscaler" in note


def test_num_samples_has_a_sane_bound():
    cluster.check_num_samples(cluster.MAX_NUM_SAMPLES)
    with pytest.raises(ConfigError, match="Tune keeps every trial in the driver's memory"):
        cluster.check_num_samples(cluster.MAX_NUM_SAMPLES + 1)


def test_storage_forms(tmp_path):
    assert Storage.parse(None, tmp_path).root == str((tmp_path / "ray").resolve())
    s = Storage.parse("s3://bucket/hp?region=eu-west-1&access_key=K", tmp_path)
    assert not s.is_local and s.display == "s3://bucket/hp"
    assert s.uri("train") == "s3://bucket/hp/train?region=eu-west-1&access_key=K"
    f = Storage.parse(f"file://{tmp_path}/st", tmp_path)
    assert f.tune_kwargs()["storage_path"] == f"{tmp_path}/st"
    for bad, msg in [("ftp://h/x", "unknown scheme"), ("s3:///x", "no bucket"),
                     ("file://host/x", "file:///ABSOLUTE/PATH")]:
        with pytest.raises(ConfigError, match=msg):
            Storage.parse(bad, tmp_path)


def test_resume_finds_searches_in_a_uri_storage():
    """``--resume`` lists a pyarrow filesystem (here pyarrow's in-memory one), reads the
    search's stored options there and asks Tune whether it can restore it from there."""
    from hpsearch.search.tuner import SEARCH_META, _new_search_dir, _resumable, _write_meta

    st = Storage("mock:///bucket/hp", None, "", uri="mock:///bucket/hp")
    old = _new_search_dir(st, "u")
    _write_meta(old, {"finished": False}, st)
    with st.fs.open_output_stream(f"{old}/tuner.pkl") as o:  # what can_restore looks for
        o.write(b"")
    with pytest.raises(ConfigError, match="no earlier search named 'v' under mock://"):
        _resumable(st, "v")
    path, meta = _resumable(st, "u")
    assert (path, meta) == (old, {"finished": False})
    assert st.read_text(old / SEARCH_META) is not None
    _write_meta(old, {"finished": True}, st)
    with pytest.raises(ConfigError, match="has finished"):
        _resumable(st, "u")
    assert _new_search_dir(st, "u") != old  # same second: a new id, not the same dir


def test_workers_are_told_their_cluster(monkeypatch):
    """Ray's own address guess fails on a host with several clusters (Ray Train v2's
    controller: "Found multiple active Ray instances"): the job's workers get RAY_ADDRESS of
    theirs; a private cluster's GCS port is fixed in advance; the environment comes back."""
    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:6379")
    monkeypatch.delenv("RAY_GCS_SERVER_PORT", raising=False)
    local = cluster.parse_address(None)
    with cluster.init_environ(local) as workers:
        port = os.environ["RAY_GCS_SERVER_PORT"]
        assert "RAY_ADDRESS" not in os.environ  # ignored: not for the private cluster
        assert workers == {"RAY_ADDRESS": f"127.0.0.1:{port}"}
    assert os.environ["RAY_ADDRESS"] == "10.9.9.9:6379"
    assert "RAY_GCS_SERVER_PORT" not in os.environ
    with cluster.init_environ(cluster.parse_address("head.example:6380")) as workers:
        assert workers == {"RAY_ADDRESS": "head.example:6380"}
