"""Where a search runs and writes: the Ray cluster it joins, and the storage its trials share.

Everything here that can refuse a search does so before anything is written:

* :func:`parse_address` - the ``--address`` forms (``HOST:PORT`` of a cluster's GCS,
  ``ray://HOST:PORT`` for Ray Client, ``auto``; none: a private local cluster, whatever
  ``RAY_ADDRESS`` says).
* :func:`probe` - the address answers (TCP, a few seconds), as a Ray GCS or Ray Client server,
  and accepts this process: token authentication (Ray's default) is detected by asking the
  cluster, and switched on here when it asks for a token and one is at hand
  (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``), the way ``ray start``
  does for a head; a refused or missing token is one line.
* :func:`check_fits` - right after ``ray.init``: a trial (or a TorchTrainer trial's driver and
  each of its workers) fits on a node that exists, unless an autoscaler may add one.
* :class:`Storage` - Tune's storage: a local (shared) path or a pyarrow filesystem URI
  (``file://``, ``s3://``, ``gs://``...), where experiment state and checkpoints live and where
  ``--resume`` looks.
* :func:`runtime_env` - the trials import the driver's hpsearch, shipped as a Ray
  ``py_modules`` package, never whatever the driver's working directory holds.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from hpsearch.config import ResourceConfig
from hpsearch.errors import ClusterError, ConfigError
from hpsearch.provenance import PACKAGE_DIR

PROBE_TIMEOUT_S = 5.0
# Tune keeps every trial (its config, which carries the space's fixed values, and its last
# result) in the driver's memory and writes all of them into the experiment state at each
# checkpoint; Optuna's TPE reads the whole history for every suggestion. Past this many trials
# a search is a mistake (1e12 reads as "until stopped"), not a plan.
MAX_NUM_SAMPLES = 100_000
AUTH_VARS = "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
GET_TOKEN = "`ray get-auth-token` on a node of the cluster prints it"
# what never travels to the workers with the package
PY_MODULE_EXCLUDES = ["__pycache__/", "*.pyc", ".mypy_cache/", ".ruff_cache/",
                      ".pytest_cache/", ".ipynb_checkpoints/"]


# ---------------------------------------------------------------------- the address
@dataclass(frozen=True)
class Target:
    """Where ``ray.init`` goes: ``kind`` ``local`` (a private cluster), ``gcs`` (a running
    cluster's GCS) or ``client`` (Ray Client). ``given`` is what the user wrote."""

    kind: str
    given: str | None = None
    host: str = ""
    port: int = 0
    ignored_env: str | None = None  # RAY_ADDRESS, when it was set and not used

    @property
    def hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def init_address(self) -> str:
        return {"local": "local", "gcs": self.hostport,
                "client": f"ray://{self.hostport}"}[self.kind]

    def describe(self) -> str:
        if self.kind == "local":
            return "the private local cluster"
        return f"the cluster at {self.given or self.init_address}"


_HOSTPORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.\-]+))"
                       r":(?P<port>\d+)$")
ADDRESS_FORMS = ("HOST:PORT (a running cluster's GCS port, the one `ray start --head --port` "
                 "took, 6379 by default), ray://HOST:PORT (Ray Client, port 10001 by default) "
                 "or auto (RAY_ADDRESS, else the newest `ray start` cluster of this machine)")


def parse_address(address: str | None, environ: dict[str, str] | None = None) -> Target:
    """``--address`` -> :class:`Target`, or a one-line :class:`ClusterError` naming the forms.

    Without an address the search starts a private local cluster: ``RAY_ADDRESS`` (often left
    set in a shell, or pointing at another user's cluster on a shared host) is reported as
    ignored; ``--address auto`` uses it. ``local`` says the default explicitly."""
    env = os.environ if environ is None else environ
    ray_address = (env.get("RAY_ADDRESS") or "").strip() or None
    if address is None or address.strip() in ("", "local"):
        return Target("local", address, ignored_env=ray_address)
    given = address.strip()
    spec = given
    if spec == "auto":
        spec = ray_address or _newest_local_cluster() or ""
        if not spec:
            raise ClusterError("--address auto: RAY_ADDRESS is not set and no `ray start` "
                               "cluster was started on this machine; pass the head's "
                               "HOST:PORT, or omit --address for a private local cluster")
        if spec == "auto" or spec == "local":
            raise ClusterError(f"--address auto: RAY_ADDRESS={spec} names no cluster; set it "
                               "to the head's HOST:PORT")
    kind = "gcs"
    rest = spec
    if "://" in spec:
        scheme, _, rest = spec.partition("://")
        if scheme != "ray":
            hint = (" (that is the dashboard / Jobs API address: join with the GCS port or "
                    "ray://HOST:10001)") if scheme in ("http", "https") else ""
            raise ClusterError(f"--address {given}: unknown scheme {scheme}://{hint}; "
                               f"expected {ADDRESS_FORMS}")
        kind = "client"
        rest = rest.rstrip("/")
    m = _HOSTPORT.match(rest)
    if not m:
        src = f" (from RAY_ADDRESS={spec})" if given == "auto" and spec == ray_address else ""
        raise ClusterError(f"--address {given}{src}: not an address; expected {ADDRESS_FORMS}")
    port = int(m["port"])
    if not 0 < port < 65536:
        raise ClusterError(f"--address {given}: port {port} is out of range 1-65535")
    return Target(kind, given if given != "auto" else f"auto ({spec})", m["v6"] or m["host"],
                  port)


def _newest_local_cluster() -> str | None:
    """The GCS address the last ``ray start --head`` of this machine recorded, if any."""
    with contextlib.suppress(Exception):  # Ray's private helper; absent file -> None
        from ray._private.utils import read_ray_address

        return read_ray_address()
    return None


def ignored_env_line(target: Target) -> str | None:
    """The one line a search prints when ``RAY_ADDRESS`` is set but not used."""
    if target.kind != "local" or not target.ignored_env:
        return None
    return (f"hpsearch: RAY_ADDRESS={target.ignored_env} ignored: without --address a search "
            "starts a private local cluster; pass --address auto to join RAY_ADDRESS")


# ---------------------------------------------------------------------- reachability, auth
def _token() -> tuple[tuple[tuple[str, str], ...], str]:
    """The token this process would present (whatever ``RAY_AUTH_MODE`` says) as gRPC
    metadata, and where it comes from; ``()`` when there is none. Ray's own order."""
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()
    header = loader.get_token_for_http_header(ignore_auth_mode=True)
    if os.environ.get("RAY_AUTH_TOKEN"):
        source = "RAY_AUTH_TOKEN"
    elif os.environ.get("RAY_AUTH_TOKEN_PATH"):
        source = f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}"
    else:
        source = "~/.ray/auth_token"
    return tuple(header.items()), source


def _channel(hostport: str) -> Any:
    import grpc

    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        from ray._private.grpc_utils import load_certs_from_env  # Ray's TLS settings

        chain, key, ca = load_certs_from_env()
        creds = grpc.ssl_channel_credentials(certificate_chain=chain, private_key=key,
                                             root_certificates=ca)
        return grpc.secure_channel(hostport, creds)
    return grpc.insecure_channel(hostport)


def _rpc(target: Target, metadata: tuple[tuple[str, str], ...], timeout: float) -> Any:
    """One cheap authenticated call: the GCS's cluster id, or a Ray Client ping. Returns
    None when it answered, else the gRPC status code."""
    import grpc

    with _channel(target.hostport) as ch:
        try:
            if target.kind == "client":
                from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc

                req = ray_client_pb2.ClusterInfoRequest(
                    type=ray_client_pb2.ClusterInfoType.PING)
                ray_client_pb2_grpc.RayletDriverStub(ch).ClusterInfo(
                    req, timeout=timeout, metadata=metadata)
            else:
                from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

                gcs_service_pb2_grpc.NodeInfoGcsServiceStub(ch).GetClusterId(
                    gcs_service_pb2.GetClusterIdRequest(), timeout=timeout, metadata=metadata)
        except grpc.RpcError as e:
            return e.code()
    return None


def probe(target: Target, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail in one line, within ``timeout`` seconds or so, unless ``target`` answers as a
    Ray cluster that accepts this process. Switches token authentication on for this process
    (``RAY_AUTH_MODE=token``) when the cluster asks for a token and one is at hand."""
    if target.kind == "local":
        return
    where = target.given or target.hostport
    port_kind = ("its Ray Client port (`ray start --ray-client-server-port`, 10001 by default)"
                 if target.kind == "client" else
                 "its GCS port (`ray start --head --port`, 6379 by default), not the "
                 "dashboard's")
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout):
            pass
    except OSError as e:
        why = ("connection refused" if isinstance(e, ConnectionRefusedError) else
               f"no answer in {timeout:.0f} s" if isinstance(e, TimeoutError) else
               (e.strerror or type(e).__name__))
        raise ClusterError(f"--address {where}: nothing answers at {target.hostport} ({why}); "
                           f"check that the cluster's head is up and that {target.port} is "
                           f"{port_kind}") from None
    import grpc

    mode = (os.environ.get("RAY_AUTH_MODE") or "").strip().lower()
    token, source = _token()
    first = token if mode == "token" else ()
    if mode == "token" and not token:
        raise ClusterError(f"--address {where}: RAY_AUTH_MODE=token but no token was found; "
                           f"set {AUTH_VARS} to the cluster's token ({GET_TOKEN})")
    code = _rpc(target, first, timeout)
    if code == grpc.StatusCode.UNAUTHENTICATED and not first:
        if mode and mode != "token":
            raise ClusterError(f"--address {where}: the cluster requires token authentication "
                               f"but RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']}; unset it and "
                               f"set {AUTH_VARS} to the cluster's token ({GET_TOKEN})")
        if not token:
            raise ClusterError(f"--address {where}: the cluster requires token authentication "
                               f"and no token was found; set {AUTH_VARS} to the cluster's "
                               f"token ({GET_TOKEN})")
        code = _rpc(target, token, timeout)
        if code is None:
            _enable_token_auth()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        raise ClusterError(f"--address {where}: the cluster refused the token from {source}; "
                           f"set {AUTH_VARS} to the cluster's token ({GET_TOKEN})")
    if code is not None:
        what = "Ray Client server" if target.kind == "client" else "Ray cluster (GCS)"
        raise ClusterError(f"--address {where}: {target.hostport} answers, but not as a {what} "
                           f"(gRPC {code.name}); check that {target.port} is {port_kind}")


def _enable_token_auth() -> None:
    """Token authentication for this process and what it starts, as ``ray start`` enables it
    for a head when a token exists (Ray's helper; the same two steps if it moved)."""
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()
    except ImportError:
        from ray._raylet import Config

        os.environ["RAY_AUTH_MODE"] = "token"
        Config.initialize("")


def init_error(target: Target, e: BaseException) -> ClusterError:
    """``ray.init`` failed after the probe passed (a version mismatch, a head that went
    away): its first line, with the address."""
    msg = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    return ClusterError(f"--address {target.given or target.hostport}: could not join: "
                        f"{msg[:300]}")


# ---------------------------------------------------------------------- what a trial needs
def _fits(node: dict[str, float], need: dict[str, float]) -> bool:
    return all(node.get(k, 0.0) + 1e-9 >= v for k, v in need.items() if v > 0)


def _count(node: dict[str, float], need: dict[str, float]) -> int:
    """How many bundles ``need`` fit on ``node`` at once."""
    counts = [math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
    return min(counts) if counts else 10**9


def _minus(node: dict[str, float], used: dict[str, float]) -> dict[str, float]:
    return {k: v - used.get(k, 0.0) for k, v in node.items()}


def _fmt(x: float) -> str:
    return f"{x:g}"


def _shape(node: dict[str, float]) -> str:
    keys = ["CPU", "GPU"] + sorted(k for k in node if k not in ("CPU", "GPU") and
                                   not k.startswith(("node:", "accelerator_type:")) and
                                   k not in ("memory", "object_store_memory"))
    return "{" + ", ".join(f"{k}: {_fmt(node.get(k, 0.0))}" for k in keys) + "}"


def describe_nodes(nodes: list[dict[str, float]]) -> str:
    """``2 x {CPU: 2, GPU: 0}, 1 x {CPU: 8, GPU: 1}``: node shapes, smallest first."""
    order = sorted(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0), _shape(n)))
    counts = Counter(_shape(n) for n in order)
    return ", ".join(f"{c} x {s}" for s, c in counts.items()) or "none alive"


def _need_str(need: dict[str, float]) -> str:
    return " and ".join(f"{_fmt(v)} {k}" for k, v in need.items() if v > 0)


def trial_bundles(r: ResourceConfig) -> tuple[dict[str, float], dict[str, float] | None]:
    """What one trial holds on one node (the Tune trial: the whole in-process trial, or a
    TorchTrainer's driver) and, on the TorchTrainer path, what each of its workers holds."""
    if not r.trainer_path:
        return {"CPU": r.cpus_per_trial, "GPU": r.gpus_per_trial}, None
    gpu = (r.gpus_per_worker or 1.0) if r.use_gpu else 0.0  # as trainable._run_torch_trainer
    return {"CPU": r.driver_cpus}, {"CPU": r.cpus_per_worker, "GPU": gpu}


def _missing(nodes: list[dict[str, float]], need: dict[str, float]) -> tuple[list[str], bool]:
    """The resource names to blame when no node holds ``need``: those no node has enough of
    alone, else all of them (each fits somewhere, never together); and whether it is the
    latter."""
    keys = [k for k, v in need.items() if v > 0]
    alone = [k for k in keys if not any(_fits(n, {k: need[k]}) for n in nodes)]
    return (alone, False) if alone else (keys, len(keys) > 1)


def check_fits(r: ResourceConfig, nodes: list[dict[str, float]], where: str,
               autoscaler: str | None = None) -> str | None:
    """Refuse (one-line :class:`ClusterError`) a trial no node of ``nodes`` (alive nodes'
    total resources) can ever hold. With ``autoscaler`` (a description of a configured
    autoscaler, whose node types Ray does not show a driver) a request that fits no node now
    is accepted: the line to print is returned instead."""
    trial, worker = trial_bundles(r)
    have = f"nodes: {describe_nodes(nodes)}"
    problem = None
    if not any(_fits(n, trial) for n in nodes):
        keys, together = _missing(nodes, trial)
        field = {"CPU": "driver_cpus" if worker else "cpus_per_trial", "GPU": "gpus_per_trial"}
        names = ", ".join(f"resources.{field[k]} {_fmt(trial[k])}" for k in keys)
        fix = ("lower it or join a GPU cluster" if keys == ["GPU"] else
               "lower it (a trial runs on one node) or add a node that large")
        problem = (f"{names}: no node of {where} has {_need_str({k: trial[k] for k in keys})}"
                   f"{' together' if together else ''} ({have}); {fix}")
    elif worker is not None:
        if not any(_fits(n, worker) for n in nodes):
            keys, together = _missing(nodes, worker)
            field = {"CPU": "cpus_per_worker",
                     "GPU": "gpus_per_worker" if r.gpus_per_worker else "gpus_per_trial"}
            names = ", ".join(f"resources.{field[k]} {_fmt(worker[k])}" for k in keys)
            fix = "lower it or join a GPU cluster" if keys == ["GPU"] else "lower it"
            problem = (f"{names}: no node of {where} has "
                       f"{_need_str({k: worker[k] for k in keys})}"
                       f"{' together' if together else ''} for one TorchTrainer worker "
                       f"({have}); {fix}")
        else:
            # the trial's driver on one node, its workers wherever they fit (PACK is soft)
            best = max(sum(_count(m if j != i else _minus(m, trial), worker)
                           for j, m in enumerate(nodes))
                       for i, n in enumerate(nodes) if _fits(n, trial))
            if best < r.num_workers:
                problem = (f"resources.num_workers {r.num_workers}: {where} holds at most "
                           f"{best} workers of {_need_str(worker)} beside the trial's driver "
                           f"({_need_str(trial) or 'nothing'}) ({have}); lower num_workers "
                           "or cpus_per_worker")
    if problem is None:
        return None
    if autoscaler:
        return (f"hpsearch: {problem.split(';')[0]}; accepted because {autoscaler} may add "
                "such a node (Ray does not show a driver its node types): trials wait until "
                "it does")
    raise ClusterError(problem)


def alive_nodes() -> list[dict[str, float]] | None:
    """Total resources of the connected cluster's alive nodes (None when this process is not
    connected to one, e.g. Ray was initialized by a test double)."""
    import ray
    from ray.util.client import ray as client_ray

    if not (ray._private.worker.global_worker.connected or client_ray.is_connected()):
        return None
    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def configured_autoscaler() -> str | None:
    """A description of the connected cluster's autoscaler when one is configured (it can
    add nodes), else None. A cluster started by hand (``ray start``) runs a read-only
    autoscaler whose node types are the nodes themselves (``node_<id>``): that one adds
    nothing."""
    import ray
    from ray.experimental.internal_kv import _internal_kv_get

    types: set[str] = set()
    pending = False
    with contextlib.suppress(Exception):  # v1 autoscaler status, published by the monitor
        raw = _internal_kv_get("__autoscaling_status")
        report = (json.loads(raw) if raw else {}).get("autoscaler_report") or {}
        types |= set((report.get("node_type_mapping") or {}).values())
        pending = bool(report.get("pending_nodes") or report.get("pending_launches"))
    with contextlib.suppress(Exception):  # v2 autoscaler: its cluster status
        from ray.autoscaler.v2.sdk import get_cluster_status

        st = get_cluster_status(ray.get_runtime_context().gcs_address, timeout=5)
        if (st.stats.autoscaler_version or "0") not in ("0", ""):
            types |= {n.ray_node_type_name for n in st.active_nodes + st.idle_nodes}
            pending = pending or bool(st.pending_launches or st.pending_nodes)
    managed = sorted(t for t in types if t and not re.fullmatch(r"node_[0-9a-f]+", t))
    if managed or pending:
        return "its autoscaler (node types seen: " + (", ".join(managed) or "pending") + ")"
    return None


def check_num_samples(n: int) -> None:
    if n > MAX_NUM_SAMPLES:
        raise ConfigError(f"num_samples {n}: more than {MAX_NUM_SAMPLES} trials (Tune keeps "
                          "every trial in the driver's memory and rewrites all of them at each "
                          "experiment checkpoint); run a smaller search, or several, or bound "
                          "it by budget.time_budget_s")


@contextlib.contextmanager
def init_environ(target: Target) -> Iterator[dict[str, str]]:
    """This process's environment around ``ray.init``, and the variables the job's workers
    get. Ray finds "the" cluster by ``RAY_ADDRESS``, else by the GCS processes of this host;
    with several clusters on one host that guess fails inside Ray itself (Ray Train v2's
    controller asks the state API: "Found multiple active Ray instances", and a TorchTrainer
    trial then waits for workers forever). So the workers get ``RAY_ADDRESS`` of the cluster
    they run on; a private cluster's GCS port is chosen here (``RAY_GCS_SERVER_PORT``) to know
    it in advance; an ignored ``RAY_ADDRESS`` reaches none of its processes."""
    keys = ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")
    saved = {k: os.environ.get(k) for k in keys}
    workers: dict[str, str] = {}
    try:
        if target.ignored_env:
            os.environ.pop("RAY_ADDRESS", None)
        if target.kind == "local":
            port = os.environ.get("RAY_GCS_SERVER_PORT") or str(_free_port())
            os.environ["RAY_GCS_SERVER_PORT"] = port
            workers["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        elif target.kind == "gcs":
            workers["RAY_ADDRESS"] = target.hostport
        yield workers
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- code on the workers
@contextlib.contextmanager
def runtime_env(env_vars: dict[str, str]) -> Iterator[dict[str, Any]]:
    """The job's runtime env for ``ray.init``: the driver's hpsearch package shipped as a
    ``py_modules`` package (content-hashed, cached per node, caches excluded), and an empty
    ``working_dir`` so that Ray does not put the driver's working directory (and script
    directory) first on every worker's ``sys.path``: otherwise an ``hpsearch/`` folder there
    (another checkout) is what trials import. The empty folder only needs to exist until
    ``ray.init`` has uploaded it."""
    empty = tempfile.mkdtemp(prefix="hpsearch-wd-")
    try:
        env: dict[str, Any] = {"py_modules": [str(PACKAGE_DIR)], "working_dir": empty,
                               "excludes": list(PY_MODULE_EXCLUDES)}
        if env_vars:
            env["env_vars"] = dict(env_vars)
        yield env
    finally:
        shutil.rmtree(empty, ignore_errors=True)


# ---------------------------------------------------------------------- storage
REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az")


class Storage:
    """Tune's storage for a search: a local directory (which every node must see at the same
    path: a shared filesystem) or a directory of a pyarrow filesystem given by URI.

    ``root`` is the filesystem path (no scheme); search directories are ``root/<search_id>``,
    returned as :class:`~pathlib.Path` for a local storage, else
    :class:`~pathlib.PurePosixPath`."""

    def __init__(self, spec: str, fs: Any | None, root: str, uri: str | None = None):
        self.spec, self.fs, self.root, self._uri = spec, fs, root, uri

    # construction
    @classmethod
    def local(cls, path: str | Path) -> Storage:
        p = Path(path).expanduser().resolve()
        return cls(str(p), None, str(p))

    @classmethod
    def coerce(cls, s: Storage | str | Path) -> Storage:
        return s if isinstance(s, Storage) else cls.local(s)

    @classmethod
    def parse(cls, spec: str | None, results_dir: str | Path) -> Storage:
        """``--storage`` (None: ``results_dir/ray``) -> Storage; refuses unknown schemes."""
        if spec is None or not str(spec).strip():
            return cls.local(Path(results_dir) / "ray")
        spec = str(spec).strip()
        parts = urlsplit(spec)
        if not parts.scheme or len(parts.scheme) == 1:  # a path (or a Windows drive letter)
            return cls.local(spec)
        if parts.scheme == "file":  # through pyarrow, like any URI (a shared mount)
            if parts.netloc not in ("", "localhost") or parts.query or not parts.path:
                raise ConfigError(f"--storage {spec}: a file:// URI is file:///ABSOLUTE/PATH")
            return cls(spec, None, "", uri=spec)
        if parts.scheme not in REMOTE_SCHEMES:
            raise ConfigError(f"--storage {spec}: unknown scheme {parts.scheme}://; give a "
                              "path on a filesystem every node mounts, or a URI with one of "
                              + ", ".join(f"{s}://" for s in ("file",) + REMOTE_SCHEMES))
        if not parts.netloc:
            raise ConfigError(f"--storage {spec}: no bucket/host in the URI")
        return cls(spec, None, "", uri=spec)

    @property
    def is_local(self) -> bool:
        return self._uri is None

    def _open(self) -> None:
        """The pyarrow filesystem of a URI (this may ask the object store for its region)."""
        if self.fs is not None or self.is_local:
            return
        import pyarrow.fs

        try:
            self.fs, root = pyarrow.fs.FileSystem.from_uri(self.spec)
        except Exception as e:  # noqa: BLE001 - pyarrow raises OSError / ArrowInvalid / ...
            raise ConfigError(f"--storage {self.spec}: cannot open it: "
                              f"{' '.join(str(e).split())[:300]}") from None
        self.root = root.rstrip("/")

    def check(self) -> None:
        """Fail now (one line, nothing written) unless the storage can be written."""
        if self.is_local:
            check_writable_dir(Path(self.root), "--storage")
            return
        self._open()
        import pyarrow.fs

        if isinstance(self.fs, pyarrow.fs.LocalFileSystem):
            check_writable_dir(Path(self.root), "--storage")
            return

        try:
            info = self.fs.get_file_info(self.root)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"--storage {self.spec}: cannot read it: "
                              f"{' '.join(str(e).split())[:300]}") from None
        if info.type == pyarrow.fs.FileType.File:
            raise ConfigError(f"--storage {self.spec} is a file; give a directory")

    # where Tune writes
    def tune_kwargs(self) -> dict[str, Any]:
        """``storage_path`` / ``storage_filesystem`` for ``tune.RunConfig``."""
        if self.is_local:
            return {"storage_path": self.root}
        self._open()
        return {"storage_path": self.root, "storage_filesystem": self.fs}

    def filesystem(self) -> Any | None:
        """For ``Tuner.restore`` / ``can_restore`` (None: a local path)."""
        self._open()
        return self.fs

    def uri(self, *parts: str) -> str:
        """A location under the storage as a string any node's Ray accepts (TorchTrainer's
        ``storage_path``): the path, or the URI with ``parts`` joined before its query."""
        if self.is_local:
            return str(Path(self.root, *parts))
        u = urlsplit(self.spec)
        path = "/".join([u.path.rstrip("/"), *parts]) if parts else u.path
        return f"{u.scheme}://{u.netloc}{path}" + (f"?{u.query}" if u.query else "")

    def path(self, name: str) -> PurePath:
        self._open()
        return Path(self.root, name) if self.is_local else PurePosixPath(self.root, name)

    @property
    def display(self) -> str:
        """The path, or the URI without its query (which may hold credentials)."""
        if self.is_local:
            return self.root
        u = urlsplit(self.spec)
        return f"{u.scheme}://{u.netloc}{u.path}"

    def __str__(self) -> str:
        return self.display

    # files
    def mkdir(self) -> None:
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        else:
            self._open()
            self.fs.create_dir(self.root, recursive=True)

    def new_dir(self, name: str) -> PurePath | None:
        """Create ``root/name``; None when it exists (atomic on a local filesystem)."""
        d = self.path(name)
        if self.is_local:
            try:
                Path(d).mkdir(parents=True)
            except FileExistsError:
                return None
            return d
        import pyarrow.fs

        self._open()
        if self.fs.get_file_info(str(d)).type != pyarrow.fs.FileType.NotFound:
            return None
        self.fs.create_dir(str(d), recursive=True)
        return d

    def write_text(self, f: PurePath, text: str) -> None:
        if self.is_local:
            tmp = Path(str(f) + ".tmp")
            tmp.write_text(text)
            tmp.replace(f)
            return
        self._open()
        with self.fs.open_output_stream(str(f)) as out:
            out.write(text.encode())

    def read_text(self, f: PurePath) -> str | None:
        if self.is_local:
            return Path(f).read_text() if Path(f).exists() else None
        import pyarrow.fs

        self._open()
        if self.fs.get_file_info(str(f)).type != pyarrow.fs.FileType.File:
            return None
        with self.fs.open_input_stream(str(f)) as inp:
            return inp.read().decode()

    def dirs(self) -> list[tuple[PurePath, float]]:
        """The directories directly under the storage, with their modification times."""
        if self.is_local:
            root = Path(self.root)
            if not root.is_dir():
                return []
            return [(p, p.stat().st_mtime) for p in root.iterdir() if p.is_dir()]
        import pyarrow.fs

        self._open()
        try:
            infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.root, allow_not_found=True))
        except FileNotFoundError:
            return []
        out = []
        for i in infos:
            if i.type == pyarrow.fs.FileType.Directory:
                mtime = i.mtime.timestamp() if i.mtime is not None else 0.0
                # object stores have no directory mtimes: the search's own file tells
                meta = self.fs.get_file_info(f"{i.path}/hpsearch-search.json")
                if meta.mtime is not None:
                    mtime = max(mtime, meta.mtime.timestamp())
                out.append((PurePosixPath(i.path), mtime))
        return out


def check_writable_dir(path: Path, flag: str) -> None:
    """``path`` is, or can be made, a directory this process writes: its deepest existing
    ancestor is a directory that takes a new entry (tried, and removed at once). One line
    otherwise (under a file, on /proc, read-only, no permission)."""
    path = Path(path).expanduser().absolute()
    anc = path
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"{flag} {path}: {anc} is a file, not a directory; give a directory "
                          "path")
    if anc == path and path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: no permission to write in it")
    try:
        probe_dir = tempfile.mkdtemp(prefix=".hpsearch-probe-", dir=anc)
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot create anything in {anc} "
                          f"({e.strerror or type(e).__name__}); give a writable directory"
                          ) from None
    os.rmdir(probe_dir)


def say(line: str | None) -> None:
    """One line for the user on stderr (the CLI's own lines go there too)."""
    if line:
        print(line, file=sys.stderr, flush=True)
