"""Real services for integration tests, on loopback, on free ports, in throwaway directories,
torn down by the process (group) ids this module started, never by name:

* :class:`Postgres`: a fresh PostgreSQL cluster (``initdb`` + ``pg_ctl``; as root the server
  runs as user ``postgres``, which refuses to run as root);
* :class:`MlflowServer`: ``mlflow server`` on a PostgreSQL backend store with proxied artifacts
  and MLflow's basic-auth app (admin user and password from a ``basic_auth.ini`` of its own);
  it can be killed and started again on the same port and store (outage tests);
* :class:`TcpProxy`: a loopback TCP forwarder in front of a server whose :meth:`~TcpProxy.down`
  is a network outage (listener closed, open connections cut: clients see "connection
  refused") and :meth:`~TcpProxy.up` its end, instantly, without restarting the server;
* :class:`RayNodes`: a Ray cluster of ``ray start --block`` nodes with their own temp dirs
  (``--temp-dir``: no ``/tmp/ray/ray_current_cluster`` another process could join by mistake).

Context managers :func:`running_tracking_stack` (PostgreSQL + authenticated MLflow server; the
client credentials are in the environment while it lives) and :func:`running_ray_nodes`, and
the module-scoped fixtures ``tracking_stack`` / ``ray_two_nodes`` built on them. Both skip,
with the reason, only when the binaries are missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
ADMIN_USER, ADMIN_PASSWORD = "hpsearch-admin", "hpsearch-test-pw-7Rk2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir() -> Path | None:
    """The newest PostgreSQL server binaries (Debian keeps them off PATH)."""
    cands = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if cands:
        return cands[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _throwaway_dir(prefix: str) -> Path:
    """Under /tmp, readable by the ``postgres`` user (pytest's tmp dirs are root-only)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o755)
    return d


def _wait(cond, timeout: float, what: str, log: Path | None = None, alive=None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if alive is not None and not alive():
            break
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not come up in {timeout:.0f} s\n{tail}")


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1:``port`` (trust auth, user ``postgres``)."""

    def __init__(self, root: Path | None = None):
        self.bindir = pg_bindir()
        if self.bindir is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl)")
        self.root = root or _throwaway_dir("hpsearch-pg-")
        self.data, self.sock = self.root / "data", self.root / "sock"
        self.log = self.root / "pg.log"
        self.port = free_port()
        self._as = []
        if os.geteuid() == 0:  # postgres will not run as root
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        r = subprocess.run([*self._as, *cmd], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr[-2000:]}")
        return r

    def start(self) -> Postgres:
        for d in (self.data, self.sock):
            d.mkdir(exist_ok=True)
        self.log.touch()
        if self._as:
            for p in (self.data, self.sock, self.log):
                shutil.chown(p, "postgres")
        if not (self.data / "PG_VERSION").exists():
            self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                      "--auth=trust", "-E", "UTF8", "--no-sync")
        # fsync off: a test cluster, thrown away; durability is not what is tested
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                  "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 "
                  "-c fsync=off -c synchronous_commit=off -c full_page_writes=off", "start")
        return self

    def createdb(self, name: str) -> str:
        self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                  "-U", "postgres", name)
        return self.url(name)

    def url(self, db: str) -> str:
        # SQLAlchemy's default PostgreSQL driver is psycopg 3 now; psycopg2 is what is installed
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{db}"

    def query(self, db: str, sql: str, args: tuple = ()) -> list[tuple]:
        import psycopg2

        with psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                              dbname=db) as c, c.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self._as, str(self.bindir / "pg_ctl"), "-D", str(self.data),
                            "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)


class MlflowServer:
    """``mlflow server`` (basic-auth app) on ``backend_uri``; artifacts proxied to a local dir.

    :meth:`kill` is a crash (SIGKILL to its process group); :meth:`start` again brings it back
    on the same port, store and users."""

    def __init__(self, root: Path, backend_uri: str, port: int | None = None):
        self.root, self.backend_uri = root, backend_uri
        self.port = port or free_port()
        self.artifacts = root / "artifacts"
        self.ini = root / "basic_auth.ini"
        self.ini.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{root / 'auth.db'}\n"
            f"admin_username = {ADMIN_USER}\nadmin_password = {ADMIN_PASSWORD}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # cache verified credentials: else every request pays a PBKDF2 hash (~0.5 s of CPU)
            "auth_cache_ttl_seconds = 600\n")
        self.log = root / "mlflow-server.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client_env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_USERNAME": ADMIN_USER, "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}

    def _healthy(self) -> bool:
        import requests

        try:
            return requests.get(self.uri + "/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def start(self, timeout: float = 240) -> MlflowServer:
        exe = VENV_BIN / "mlflow"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(self.ini),
                   MLFLOW_FLASK_SERVER_SECRET_KEY="hpsearch-test-csrf-key",
                   MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job runner processes
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [str(exe if exe.exists() else "mlflow"), "server", "--backend-store-uri",
                 self.backend_uri, "--artifacts-destination", self.artifacts.as_uri(),
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 "--app-name", "basic-auth"],
                cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.starts += 1
        _wait(self._healthy, timeout, f"mlflow server on {self.uri}", self.log,
              alive=lambda: self.proc.poll() is None)
        return self

    def _signal_group(self, sig: int) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """A crash: the server and its workers die at once (SIGKILL to its process group)."""
        self._signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)
        _wait(lambda: not self._healthy(), 30, f"{self.uri} going down")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self._signal_group(signal.SIGKILL)  # workers it may have left behind
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=3)  # a throwaway server: no need to wait for a clean exit
        except subprocess.TimeoutExpired:
            pass
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout=30)


@dataclass
class TrackingStack:
    postgres: Postgres
    server: MlflowServer
    db: str

    @property
    def uri(self) -> str:
        return self.server.uri

    def sql(self, query: str, args: tuple = ()) -> list[tuple]:
        """Read the MLflow backend store directly (what the server really holds)."""
        return self.postgres.query(self.db, query, args)


def start_tracking_stack() -> TrackingStack:
    pg = Postgres().start()
    try:
        url = pg.createdb("mlflow")
        server = MlflowServer(pg.root, url).start()
    except BaseException:
        pg.stop()
        raise
    return TrackingStack(pg, server, "mlflow")


def stop_tracking_stack(stack: TrackingStack) -> None:
    try:
        stack.server.stop()
    finally:
        stack.postgres.stop()
        shutil.rmtree(stack.postgres.root, ignore_errors=True)


@contextlib.contextmanager
def running_tracking_stack() -> Iterator[TrackingStack]:
    """PostgreSQL + ``mlflow server --app-name basic-auth``; while it lives the environment
    holds the client credentials (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD).
    Skips (pytest) only when the PostgreSQL binaries are missing."""
    if pg_bindir() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install the "
                    "postgresql package (see .ci/system-deps.sh)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as a non-root "
                    "user")
    stack = start_tracking_stack()
    saved = {k: os.environ.get(k) for k in stack.server.client_env}
    os.environ.update(stack.server.client_env)
    try:
        yield stack
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        stop_tracking_stack(stack)


@pytest.fixture(scope="module")
def tracking_stack():
    with running_tracking_stack() as stack:
        yield stack


class TcpProxy:
    """127.0.0.1:``port`` forwarded to 127.0.0.1:``target``; :meth:`down` / :meth:`up`."""

    def __init__(self, target: int):
        self.target, self.port = target, free_port()
        # True: requests still reach the server, its answers are cut off (the connection is
        # closed instead): a write that landed but whose client saw it fail
        self.drop_responses = False
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.up()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut the open ones (keep-alive pools die too)."""
        with self._lock:
            ls, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if ls is not None:
            ls.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:  # closed by down()
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                if self._listener is not ls:
                    client.close()
                    server.close()
                    return
                self._conns += [client, server]
            for a, b, answer in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pipe, args=(a, b, answer), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, answer: bool) -> None:
        try:
            while data := src.recv(65536):
                if answer and self.drop_responses:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class RayNodes:
    """``ray start --block`` nodes on explicit free ports, each in a temp dir of its own."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.procs: list[subprocess.Popen] = []
        # token auth (the token of ~/.ray/auth_token) on every node and driver: a node that
        # joins without it is refused by the head. Drivers run with ``env`` added.
        self.env = {"RAY_AUTH_MODE": "token"}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, head: bool, cpus: int) -> None:
        n = len(self.procs)
        tmp = self.root / f"n{n}"
        tmp.mkdir(parents=True, exist_ok=True)
        args = ["--head", f"--port={self.port}", "--include-dashboard=false",
                f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
                ] if head else \
            [f"--address={self.address}"]
        cmd = [str(VENV_BIN / "ray"), "start", "--block", *args, f"--num-cpus={cpus}",
               "--num-gpus=0", f"--temp-dir={tmp}", "--node-ip-address=127.0.0.1",
               f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
               "--object-store-memory=200000000", "--disable-usage-stats"]
        log = open(self.root / f"n{n}.log", "w")
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                           env={**os.environ, **self.env},
                                           start_new_session=True))

    def start(self, nodes: int = 2, cpus: int = 1, timeout: float = 180) -> RayNodes:
        self._start(True, cpus)
        for _ in range(nodes - 1):
            self._start(False, cpus)
        # one driver that waits until every node has joined (a driver per poll costs seconds)
        code = ("import sys, time, ray\n"
                f"ray.init(address={self.address!r}, log_to_driver=False)\n"
                f"deadline = time.time() + {timeout}\n"
                f"while ray.cluster_resources().get('CPU', 0) < {nodes * cpus}:\n"
                "    if time.time() > deadline: sys.exit(1)\n"
                "    time.sleep(0.5)\n")
        deadline = time.time() + timeout
        while True:
            dead = [i for i, p in enumerate(self.procs) if p.poll() is not None]
            if dead:
                self.stop()
                log = (self.root / f"n{dead[0]}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"ray node {dead[0]} exited:\n{log}")
            try:
                r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                   env={**os.environ, **self.env},
                                   timeout=max(10.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                r = None
            if r is not None and r.returncode == 0:
                break
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"ray cluster at {self.address} not up in {timeout:.0f} s: "
                                   f"{(r.stderr if r else '')[-2000:]}")
            time.sleep(1)
        return self

    def stop(self) -> None:
        """SIGTERM to each node's process group, workers first; what is left after a few
        seconds (a head node takes 30 s to obey) gets SIGKILL. Only the groups started here."""
        for p in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.time() + 5
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.time()))
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)


@contextlib.contextmanager
def running_ray_nodes(nodes: int = 2, cpus: int = 1) -> Iterator[RayNodes]:
    """A Ray cluster of ``nodes`` nodes of ``cpus`` CPUs, for drivers that join it with
    ``address``; its processes are ended by their process groups afterwards."""
    if not (VENV_BIN / "ray").exists():
        pytest.skip("the ray CLI is not installed in this environment")
    root = _throwaway_dir("hpsearch-ray-")
    cluster = RayNodes(root)
    try:
        yield cluster.start(nodes, cpus)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_two_nodes():
    with running_ray_nodes(2, 1) as cluster:
        yield cluster
