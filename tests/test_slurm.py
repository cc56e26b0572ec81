"""cluster/slurm/hpsearch.sbatch on a real Slurm cluster started here: munged, slurmctld and two
slurmd (two Slurm nodes, n1 and n2, on this host), a two-node job whose script starts the Ray
head on n1 and a Ray worker on n2 (srun), runs a 2-trial search through ``--address`` and
stops Ray at the end. Checked: the job's exit code, the trial runs in MLflow, token auth and
the loopback-only dashboard while the job runs, and that nothing of Ray is left behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "cluster" / "slurm" / "hpsearch.sbatch"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "scancel", "srun", "sinfo")

pytestmark = pytest.mark.slow

SPACE = """name: slurm_smoke
family: per_level
dataset: synthetic
fixed:
  model.backbone: small_cnn
  model.width: 8
  data.params: {level_sizes: [2, 4], max_per_leaf: 12, min_per_leaf: 6,
                amplitudes: [0.5, 0.3], grids: [2, 4]}
search: {optim.lr: {type: loguniform, low: 0.001, high: 0.1}}
scheduler: fifo
budget: {num_samples: 4, max_epochs: 5}
resources: {cpus_per_trial: 1}
"""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _real_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def _logs(d: Path) -> str:
    return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}"
                     for f in sorted(d.glob("*.log")))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A Slurm cluster of two nodes on this host; yields the environment its clients need."""
    missing = [n for n in DAEMONS + CLIENTS if _which(n) is None]
    if missing:
        pytest.skip(f"Slurm/munge not installed (missing {', '.join(missing)}; Debian: "
                    "apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("slurmd has to run as root to launch job steps (this test runs as uid "
                    f"{os.geteuid()})")
    d = tmp_path_factory.mktemp("slurm")
    (d / "munge").mkdir(mode=0o700)
    key = d / "munge" / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    sock = d / "munge" / "munge.socket"
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        log = open(d / f"{name}.log", "w")
        procs.append(subprocess.Popen([_which(name.split("-")[0]), *args], stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))

    try:
        start("munged", "-F", "-f", f"--key-file={key}", f"--socket={sock}",
              f"--pid-file={d / 'munge' / 'munged.pid'}", f"--seed-file={d / 'munge' / 'seed'}",
              f"--log-file={d / 'munge' / 'munged.file.log'}")
        deadline = time.time() + 10
        while not sock.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert sock.exists(), "munged did not create its socket\n" + _logs(d)

        host = socket.gethostname()
        ctld, p1, p2 = _free_ports(3)
        mem = max(_real_memory_mb() // 2 - 256, 512)
        conf = d / "slurm.conf"
        conf.write_text(f"""ClusterName=hpstest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
StateSaveLocation={d / 'state'}
SlurmdSpoolDir={d / 'spool'}/%n
SlurmctldPidFile={d / 'slurmctld.pid'}
SlurmdPidFile={d / 'slurmd-%n.pid'}
SlurmctldLogFile={d / 'slurmctld.file.log'}
SlurmdLogFile={d / 'slurmd-%n.file.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=10
NodeName=n1 NodeHostname={host} NodeAddr=127.0.0.1 Port={p1} CPUs=1 RealMemory={mem} State=UNKNOWN
NodeName=n2 NodeHostname={host} NodeAddr=127.0.0.1 Port={p2} CPUs=1 RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
""")
        env = {**os.environ, "SLURM_CONF": str(conf)}
        start("slurmctld", "-D", "-f", str(conf))
        time.sleep(1)
        start("slurmd-n1", "-D", "-N", "n1", "-f", str(conf))
        start("slurmd-n2", "-D", "-N", "n2", "-f", str(conf))
        deadline, states = time.time() + 40, ""
        while time.time() < deadline:
            r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=env,
                               capture_output=True, text=True)
            states = r.stdout
            if r.returncode == 0 and states.count("idle") == 2:
                break
            assert all(p.poll() is None for p in procs), "a Slurm daemon exited\n" + _logs(d)
            time.sleep(0.5)
        else:
            raise AssertionError(f"Slurm nodes not idle after 40 s: {states!r}\n" + _logs(d))
        yield env
    finally:
        if procs:
            subprocess.run(["scancel", "--full", "--user=root"], capture_output=True,
                           env={**os.environ, "SLURM_CONF": str(d / "slurm.conf")})
        _stop(procs[::-1])


def _job(env: dict, job_id: str) -> dict[str, str]:
    r = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True,
                       text=True)
    return dict(re.findall(r"(\w+)=(\S*)", r.stdout))


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _non_loopback_ip() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this picks the outgoing interface
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def _our_processes(marker: str) -> list[str]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd:
                found.append(f"{p.name}: {cmd[:160]}")
    return found


def test_sbatch_runs_a_search_on_a_two_node_ray_cluster(slurm, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    results = tmp_path / "results"
    uri = f"sqlite:///{results / 'tracking.db'}"  # not the default name: the URI travels
    ray_tmp = Path(tempfile.mkdtemp(prefix="hps-", dir="/tmp"))  # short: Ray's socket paths
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in slurm.items()
           if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "MLFLOW_", "SLURM_JOB"))}
    env.update(PATH=f"{venv_bin}:{env.get('PATH', '/usr/bin:/bin')}", PYTHONUNBUFFERED="1",
               HPSEARCH_RESULTS_DIR=str(results), HPSEARCH_RAY_TMPDIR=str(ray_tmp),
               HPSEARCH_HEAD_IP="127.0.0.1", MLFLOW_TRACKING_URI=uri)
    out = tmp_path / "job.out"
    try:
        sub = subprocess.run(
            ["sbatch", "--parsable", "--nodes=2", "--cpus-per-task=1", "--gpus-per-task=0",
             "--time=10", f"--output={out}", str(SBATCH), str(space),
             "--num-samples", "2", "--max-epochs", "2"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert sub.returncode == 0, sub.stderr
        job_id = sub.stdout.strip().split(";")[0]
        jobdir = results / f"slurm-{job_id}"

        # while it runs: Ray token auth on, the dashboard on 127.0.0.1 only
        checked, deadline, state = False, time.time() + 240, {}
        while time.time() < deadline:
            state = _job(slurm, job_id)
            text = out.read_text(errors="replace") if out.exists() else ""
            if not checked and "Ray nodes up" in text:
                port = int(re.search(r"dashboard http://127\.0\.0\.1:(\d+)", text).group(1))
                token = (jobdir / "ray_auth_token").read_text()
                assert len(token) == 64 and (jobdir / "ray_auth_token").stat().st_mode & 0o77 == 0
                assert jobdir.stat().st_mode & 0o77 == 0
                base = f"http://127.0.0.1:{port}"
                status, body = _get(f"{base}/api/authentication_mode")
                assert status == 200 and json.loads(body)["authentication_mode"] == "token"
                assert _get(f"{base}/api/version")[0] == 401
                assert _get(f"{base}/api/version", "0" * 64)[0] == 403
                assert _get(f"{base}/api/version", token)[0] == 200
                ip = _non_loopback_ip()
                if ip:
                    with pytest.raises(OSError):
                        socket.create_connection((ip, port), timeout=3).close()
                checked = True
            if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                         "NODE_FAIL", "OUT_OF_MEMORY"):
                break
            time.sleep(1)
        text = out.read_text(errors="replace") if out.exists() else "(no job output)"
        assert state.get("JobState") == "COMPLETED" and state.get("ExitCode") == "0:0", \
            f"{state.get('JobState')} {state.get('ExitCode')}\n{text[-6000:]}"
        assert checked, "the job ended before its Ray cluster could be probed\n" + text[-3000:]
        assert "2 of 2 Ray nodes up" in text
        assert "2.0/2 CPUs" in text  # both trials at once: one on the worker node's CPU
        assert "hpsearch search exited 0" in text and "stopping Ray on 2 node(s)" in text
        assert "InvalidAuthToken" not in text and "Traceback" not in text, text[-6000:]

        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("slurm_smoke")
        assert exp is not None, f"no experiment in {uri}\n{text[-3000:]}"
        trials = client.search_runs([exp.experiment_id], "tags.`hpsearch.role` = 'trial'")
        assert sorted(r.info.status for r in trials) == ["FINISHED", "FINISHED"]
        assert all("val_micro_f1" in r.data.metrics for r in trials)
        parents = client.search_runs([exp.experiment_id], "tags.`hpsearch.role` = 'search'")
        assert [r.info.status for r in parents] == ["FINISHED"]

        # torn down: token gone, every Ray process and temp dir of the job gone
        assert not (jobdir / "ray_auth_token").exists()
        assert _our_processes(str(ray_tmp)) == []
        assert list(ray_tmp.iterdir()) == []
    finally:
        for line in _our_processes(str(ray_tmp)):  # a failed run: leave nothing of ours behind
            with contextlib.suppress(OSError):
                os.kill(int(line.split(":")[0]), signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
