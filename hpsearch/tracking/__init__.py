"""The one adapter over MLflow: experiments, parent/child runs, params, metrics, artifacts.

Runs are found by tags, never by remembered ids, so a restored search (``--resume``) reopens
the same parent run and the same child run per trial: exactly one MLflow run per trial.

Tags written: ``hpsearch.search_id``, ``hpsearch.trial_id``, ``hpsearch.family``,
``hpsearch.dataset``, ``hpsearch.status``, ``hpsearch.checkpoint`` (latest checkpoint dir),
``hpsearch.role`` (``search`` or ``trial``) and MLflow's own ``mlflow.parentRunId``.

Outages of a tracking server (``http(s)://`` URIs). A search must not die because its MLflow
server restarts. Every :class:`Tracker` of one URI in a process shares one channel to it
(:class:`_Channel`): the tuner's tracker and the Tune callback's write in one order.

* Writes (``log_metrics``, ``log_params``, ``set_tags``, ``log_dict``, ``log_artifacts``,
  ``log_artifact``, ``log_dataset``, ``end_run`` and the creation of a trial's run in
  ``trial_run``) go straight to the server while it answers. When one fails because the
  server is unreachable (connection refused or reset,
  timeout, HTTP 5xx or 429) it joins a write-ahead queue, the driver prints one line
  (``hpsearch: MLflow at URI unreachable since HH:MM:SS ...; buffering ...``) and returns at
  once, so Tune's loop and the trials go on. Every later write queues behind it (order is
  kept); on a write after the backoff (``HPSEARCH_MLFLOW_BACKOFF_S`` doubling up to
  ``HPSEARCH_MLFLOW_BACKOFF_MAX_S``) the queue is replayed in order, and once it is empty one
  line says ``... back after N s, flushed P metric points``. A 4xx answer (validation, unknown
  run, bad credentials) is not an outage: a direct write raises as before; a replayed write the
  server refuses is dropped with one line (401/403 keep the queue: credentials, not data).
* A trial whose run cannot be looked up during an outage gets a placeholder id; its creation
  (find by tags, else create) is queued and replayed like any write, and the placeholder maps
  to the real id from then on.
* Metric points keep the timestamp and step they were logged with. A write that may have
  reached the server before failing (timeout, reset, 5xx) is replayed without the points the
  server already holds (read back from its history), so nothing is doubled; acknowledged
  writes leave the queue.
* Reads (and ``search_run``, which must return a real id) first flush the queue, then retry
  with the same backoff until the server has been unreachable for ``HPSEARCH_MLFLOW_RETRY_S``
  (default 600 s) in all, then raise one-line :class:`TrackingError`.
* :meth:`Tracker.close` (end of a search) flushes, waiting up to what is left of
  ``HPSEARCH_MLFLOW_RETRY_S``; what still cannot be sent is written to a JSON-lines spool file
  and named on one line with the command that replays it (:func:`replay_spool`, idempotent).
  A process that exits with writes still queued spools them the same way (atexit).

Local stores (``sqlite:///``, ``file:``, database URIs) have no outages here: their errors
raise as they always did.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hpsearch.errors import TrackingError
from hpsearch.tasks.checkpoint import BEST_FILE, CHECKPOINT_FILE
from hpsearch.tracking.model import save_model

TAG = "hpsearch."
CONFIG_ARTIFACT = "config.json"  # every trial run's fully resolved trial config
BUNDLE_ARTIFACT = "bundle"  # a registered run's export bundle, as exported
MODEL_ARTIFACT = "model"  # ... and the MLflow model (MLmodel) wrapping it: the version's source
DATASET_CONTEXT_TAG = "mlflow.data.context"  # MLflow's input tag: training, evaluation, ...
DEFAULT_DB = Path("results") / "mlflow.db"
PENDING = "pending-"  # prefix of the placeholder id of a run whose creation is queued
SPOOL_VERSION = 1
REPLAY_COMMAND = "hpsearch replay-spool"
# (env var, default seconds): total outage tolerance, one request's timeout, first backoff,
# longest backoff
RETRY_ENV = ("HPSEARCH_MLFLOW_RETRY_S", 600.0)
TIMEOUT_ENV = ("HPSEARCH_MLFLOW_TIMEOUT_S", 10.0)
BACKOFF_ENV = ("HPSEARCH_MLFLOW_BACKOFF_S", 1.0)
BACKOFF_MAX_ENV = ("HPSEARCH_MLFLOW_BACKOFF_MAX_S", 30.0)
KNOWN_SCHEMES = ("", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql",
                 "databricks", "databricks-uc", "uc")


def default_tracking_uri(results_dir: str | Path = "results", create: bool = True) -> str:
    """``sqlite:////abs/results/mlflow.db``: absolute, because Ray workers change directory.
    With ``create`` the results directory is made: the default store lives there, while a
    SQLite URI the user gives must name an existing directory (see :class:`Tracker`)."""
    root = Path(results_dir).resolve()
    if create:
        root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def _seconds(env: tuple[str, float]) -> float:
    name, default = env
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    try:
        v = float(raw)
    except ValueError:
        v = -1.0
    if not (v >= 0 and math.isfinite(v)):
        raise TrackingError(f"{name}={raw!r}: expected a number of seconds >= 0 (default "
                            f"{default:g})")
    return v


def _client(uri: str):
    # the retries are ours (see the module docstring): MLflow's own would block Tune's loop
    # for minutes inside one call
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    # MLflow prints a "View run ... at URL" line per ended run on a server: noise in a search
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, math.ceil(
        _seconds(TIMEOUT_ENV)))))
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def _scheme(uri: str) -> str:
    head, sep, _ = uri.partition(":")
    if not sep or len(head) == 1:  # no scheme, or a Windows drive letter
        return ""
    return head.lower().split("+")[0]


def _check_uri(uri: str) -> None:
    """One-line errors for URIs that cannot work, before MLflow opens (and creates) a store."""
    scheme = _scheme(uri)
    if scheme not in KNOWN_SCHEMES:
        raise TrackingError(f"tracking URI {uri!r}: unsupported scheme {scheme!r}; use "
                            "sqlite:///PATH.db, http(s)://HOST:PORT (an MLflow server), "
                            "postgresql://... or file:///DIR")
    if scheme == "sqlite" and uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///").split("?")[0]
        if path and path != ":memory:" and not Path(path).parent.exists():
            raise TrackingError(f"tracking URI {uri}: directory {Path(path).parent} does not "
                                "exist (an existing store's path was mistyped? create the "
                                "directory to start a new store there)")
    if scheme in ("http", "https") and not uri.partition("://")[2].strip("/"):
        raise TrackingError(f"tracking URI {uri!r}: no host; use http(s)://HOST:PORT")


def _status(e: BaseException) -> int | None:
    """The HTTP status an MLflow/requests error stands for, None when there is none."""
    from mlflow.exceptions import MlflowException
    from requests import HTTPError

    if isinstance(e, MlflowException):
        return e.get_http_status_code()
    if isinstance(e, HTTPError) and e.response is not None:
        return e.response.status_code
    return None


def _transient(e: BaseException) -> bool:
    """Is ``e`` the server being unreachable (worth a retry), not a refused request?"""
    import requests
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(e, RestException):  # the server answered with an error of its own
        code = e.get_http_status_code()
        return code >= 500 or code == 429
    if isinstance(e, MlflowException):  # MLflow's HTTP layer: "API request to ... failed"
        code = e.get_http_status_code()
        return (code >= 500 or code == 429) and "API request to" in str(e)
    if isinstance(e, requests.HTTPError):  # artifact uploads
        r = e.response
        return r is None or r.status_code >= 500 or r.status_code == 429
    return isinstance(e, requests.ConnectionError | requests.Timeout)


def _not_sent(e: BaseException) -> bool:
    """True when the request certainly never reached the server (connection refused)."""
    s = str(e)
    return "Connection refused" in s or "NewConnectionError" in s


def _reason(e: BaseException | None) -> str:
    if e is None:
        return "no answer"
    s = str(e)
    if "Connection refused" in s:
        return "connection refused"
    if "Name or service not known" in s or "nodename nor servname" in s or \
            "Temporary failure in name resolution" in s:
        return "host name not found"
    if "timeout" in s.lower() or "timed out" in s.lower():
        return "timed out"
    if "Connection reset" in s or "RemoteDisconnected" in s or "Connection aborted" in s:
        return "connection reset"
    code = _status(e)
    if code:
        return f"HTTP {code}"
    return f"{type(e).__name__}: {s.strip().splitlines()[0][:160] if s.strip() else ''}"


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _points(ops: Iterable[dict[str, Any]]) -> int:
    return sum(len(op.get("metrics", ())) for op in ops)


class _Down(Exception):
    """Internal: the server did not answer; the queue stays as it is."""


class _Channel:
    """All writes to one tracking URI from this process, with the outage policy of the module
    docstring. Ops are JSON-able dicts (they are what a spool file holds):

    ``create`` (ref, exp, art_root, find, tags, name, start), ``batch`` (run, metrics
    ``[[key, value, timestamp_ms, step]]``, params ``[[k, v]]``, tags ``[[k, v]]``),
    ``terminate`` (run, status, end), ``artifacts`` (run, dir, path), ``artifact`` (run, file,
    path: one file), ``dict`` (run, data, name), ``dataset`` (run, name, digest, source_type,
    source, schema, profile, context: an MLflow dataset input).
    ``sent`` marks an op that may have reached the server before it failed.
    """

    def __init__(self, uri: str):
        self.uri = uri
        self.client = _client(uri)
        self.remote = _scheme(uri) in ("http", "https")
        self.lock = threading.RLock()
        self.queue: deque[dict[str, Any]] = deque()
        self.refs: dict[str, str] = {}  # placeholder -> real run id
        self.experiments: dict[str, str] = {}  # name -> id
        self.down_since: float | None = None
        self.reason = ""
        self.refused: str | None = None  # 401/403 while replaying: needs new credentials
        self.backoff = 0.0
        self.next_try = 0.0
        self.announced = False
        self.buffer_dir: Path | None = None
        self.dropped = 0

    # ------------------------------------------------------------------ public to Tracker
    def write(self, op: dict[str, Any]) -> None:
        with self.lock:
            if not self.remote:
                self._apply(op)
                return
            self._pump()
            if self.queue:  # behind what is already waiting: keep the order
                self._enqueue(op)
                return
            try:
                self._apply(op)
            except Exception as e:
                if not _transient(e):
                    raise
                op["sent"] = not _not_sent(e)
                self._enqueue(op)
                self._went_down(e)

    def open_run(self, op: dict[str, Any]) -> tuple[str, bool]:
        """A trial's run: found by ``op["find"]`` tags (set RUNNING again) or created. During an
        outage its creation is queued and a placeholder id returned (created=True)."""
        with self.lock:
            if not self.remote:
                return self._create(op)
            self._pump()
            if not self.queue:
                try:
                    return self._create(op)
                except Exception as e:
                    if not _transient(e):
                        raise
                    self._enqueue(op)
                    self._went_down(e)
                    return op["ref"], True
            self._enqueue(op)
            return op["ref"], True

    def read(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` once the queue is flushed, retried with backoff while the server is
        unreachable, up to the outage tolerance; then one-line :class:`TrackingError`."""
        with self.lock:
            if not self.remote:
                return fn()
            while True:
                if self.queue and not self.flush(wait=True):
                    raise TrackingError(self._unreachable())
                try:
                    out = fn()
                except Exception as e:
                    if not _transient(e):
                        raise
                    self._went_down(e)
                    if time.time() >= self._deadline():
                        raise TrackingError(self._unreachable()) from None
                    self._sleep()
                    continue
                if self.down_since is not None and not self.queue:
                    self._back(0, 0)
                return out

    def resolve(self, run_id: str) -> str:
        if run_id.startswith(PENDING):
            real = self.refs.get(run_id)
            if real is None:
                raise TrackingError(f"run {run_id} was never created in MLflow at {self.uri} "
                                    "(its creation was refused)")
            return real
        return run_id

    def experiment_id(self, name: str, artifact_location: str | None) -> str:
        eid = self.experiments.get(name)
        if eid is None:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                try:
                    eid = self.client.create_experiment(name, artifact_location=artifact_location)
                except Exception as e:
                    if _transient(e):
                        raise
                    exp = self.client.get_experiment_by_name(name)  # lost a creation race
                    if exp is None:
                        raise
                    eid = exp.experiment_id
            else:
                eid = exp.experiment_id
            self.experiments[name] = eid
        return eid

    def flush(self, wait: bool = True) -> bool:
        """Replay the queue; with ``wait``, keep trying until the outage tolerance is spent.
        True when nothing is left to send."""
        with self.lock:
            while self.queue:
                try:
                    self._replay()
                except _Down:
                    if not wait or self.refused or time.time() >= self._deadline():
                        return False
                    self._sleep()
            return True

    def buffered(self) -> dict[str, int]:
        with self.lock:
            return {"writes": len(self.queue), "metric_points": _points(self.queue)}

    def close(self, spool: str | Path | None = None, wait: bool = True) -> Path | None:
        """Flush; what cannot be sent goes to a spool file (returned, and named on one line)."""
        with self.lock:
            if not self.queue or self.flush(wait=wait):
                return None
            points, writes = _points(self.queue), len(self.queue)
            path = self._spool(spool)
            since = _clock(self.down_since or time.time())
            why = self.refused or f"still unreachable (since {since}, {self.reason})"
            _say(f"hpsearch: MLflow at {self.uri} {why}; {points} metric points and "
                 f"{writes} writes in all saved to {path}; replay them with: "
                 f"{REPLAY_COMMAND} {path}")
            return path

    # ------------------------------------------------------------------ outage state
    def _deadline(self) -> float:
        return (self.down_since or time.time()) + _seconds(RETRY_ENV)

    def _sleep(self) -> None:
        now = time.time()
        time.sleep(max(0.0, min(self.next_try, self._deadline()) - now))

    def _went_down(self, e: BaseException | None) -> None:
        now = time.time()
        if e is not None:
            code = _status(e)
            self.reason = _reason(e)
            if code in (401, 403):
                self.refused = (f"refused the credentials (HTTP {code}; check "
                                "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)")
        if self.down_since is None:
            self.down_since = now
            self.backoff = _seconds(BACKOFF_ENV)
        else:
            self.backoff = min(max(self.backoff * 2, 0.1), _seconds(BACKOFF_MAX_ENV))
        self.next_try = now + self.backoff
        if not self.announced and (self.queue or self.refused):
            self.announced = True
            _say(f"hpsearch: MLflow at {self.uri} unreachable since {_clock(self.down_since)} "
                 f"({self.reason}), buffering ({_points(self.queue)} metric points so far, "
                 f"{len(self.queue)} writes); trials go on; will retry for up to "
                 f"{_seconds(RETRY_ENV):.0f} s ({RETRY_ENV[0]})")

    def _back(self, points: int, writes: int) -> None:
        if self.announced:
            _say(f"hpsearch: MLflow at {self.uri} back after "
                 f"{time.time() - (self.down_since or time.time()):.0f} s, flushed {points} "
                 f"metric points ({writes} writes)")
        self.down_since, self.reason, self.refused = None, "", None
        self.backoff, self.next_try, self.announced = 0.0, 0.0, False

    def _unreachable(self) -> str:
        left = self.buffered()
        pending = (f"; {left['metric_points']} metric points and {left['writes']} writes "
                   "not sent yet (kept: Tracker.close spools them)") if left["writes"] else ""
        if self.refused:
            return f"MLflow at {self.uri} {self.refused}{pending}"
        return (f"MLflow at {self.uri} unreachable since {_clock(self.down_since or 0)} "
                f"({self.reason}) for more than {_seconds(RETRY_ENV):.0f} s "
                f"({RETRY_ENV[0]}){pending}")

    def _probe(self) -> bool:
        """Does anything answer at the server's address? (cheap; no credentials needed)"""
        import requests

        try:
            r = requests.get(self.uri.rstrip("/") + "/health",
                             timeout=min(2.0, _seconds(TIMEOUT_ENV) or 2.0))
        except requests.exceptions.SSLError:  # it answers; MLflow's own TLS settings decide
            return True
        except Exception as e:  # noqa: BLE001 - refused, reset, timeout: still down
            self.reason = _reason(e)
            return False
        if r.status_code >= 500:
            self.reason = f"HTTP {r.status_code}"
            return False
        return True

    def _pump(self) -> None:
        """Opportunistic retry: replay the queue when its backoff has run out."""
        if self.queue and time.time() >= self.next_try and not self.refused:
            try:
                self._replay()
            except _Down:
                pass

    def _replay(self) -> None:
        if not self._probe():
            self._went_down(None)
            raise _Down
        points = writes = 0
        cache: dict[tuple[str, str], set] = {}
        while self.queue:
            op = self.queue[0]
            try:
                points += self._apply(op, dedupe=bool(op.get("sent")), cache=cache)
            except Exception as e:
                code = _status(e)
                if _transient(e) or code in (401, 403):
                    op["sent"] = op.get("sent") or not _not_sent(e)
                    self._went_down(e)
                    raise _Down from None
                self.queue.popleft()
                self.dropped += 1
                _say(f"hpsearch: MLflow at {self.uri} refused a buffered {op['op']} write to "
                     f"run {op.get('run', op.get('ref'))} ({_reason(e)}); dropped it")
                continue
            self.queue.popleft()
            writes += 1
            if op["op"] == "artifacts" and op.get("owned"):
                shutil.rmtree(op["dir"], ignore_errors=True)
            elif op["op"] == "artifact" and op.get("owned"):  # its own copy's folder
                shutil.rmtree(Path(op["file"]).parent, ignore_errors=True)
        self._drop_buffer_dir()
        self._back(points, writes)

    def _drop_buffer_dir(self) -> None:
        if self.buffer_dir is not None:
            shutil.rmtree(self.buffer_dir, ignore_errors=True)
            self.buffer_dir = None

    # ------------------------------------------------------------------ doing one op
    def _create(self, op: dict[str, Any]) -> tuple[str, bool]:
        eid = self.experiment_id(op["exp"], op.get("art_root"))
        flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in op["find"].items())
        runs = self.client.search_runs([eid], filter_string=flt, max_results=1)
        if runs:
            rid = runs[0].info.run_id
            self.client.update_run(rid, status="RUNNING")
            created = False
        else:
            tags = {k: self.refs.get(v, v) for k, v in op["tags"].items()}
            rid = self.client.create_run(eid, run_name=op.get("name"), tags=tags,
                                         start_time=op.get("start")).info.run_id
            created = True
        self.refs[op["ref"]] = rid
        return rid, created

    def _apply(self, op: dict[str, Any], dedupe: bool = False,
               cache: dict[tuple[str, str], set] | None = None) -> int:
        """Send one op; returns the metric points it sent."""
        from mlflow.entities import Metric, Param, RunTag

        kind = op["op"]
        if kind == "create":
            self._create(op)
            return 0
        run = self.resolve(op["run"])
        if kind == "batch":
            metrics = [tuple(m) for m in op.get("metrics", ())]
            if dedupe and metrics:
                metrics = self._unsent(run, metrics, {} if cache is None else cache)
            params, tags = op.get("params", ()), op.get("tags", ())
            if metrics or params or tags:
                self.client.log_batch(
                    run, metrics=[Metric(k, v, ts, s) for k, v, ts, s in metrics],
                    params=[Param(k, v) for k, v in params],
                    tags=[RunTag(k, self.refs.get(v, v)) for k, v in tags])
            if cache is not None:
                for k, v, ts, s in metrics:
                    cache.setdefault((run, k), set()).add((s, ts, v))
            return len(metrics)
        if kind == "terminate":
            self.client.set_terminated(run, status=op["status"], end_time=op.get("end"))
        elif kind == "artifacts":
            self.client.log_artifacts(run, op["dir"], artifact_path=op.get("path"))
        elif kind == "artifact":
            self.client.log_artifact(run, op["file"], artifact_path=op.get("path"))
        elif kind == "dict":
            self.client.log_dict(run, op["data"], op["name"])
        elif kind == "dataset":  # the store keeps one input per (run, dataset): replay-safe
            from mlflow.entities import Dataset, DatasetInput, InputTag

            ds = Dataset(name=op["name"], digest=op["digest"], source_type=op["source_type"],
                         source=op["source"], schema=op.get("schema"), profile=op.get("profile"))
            self.client.log_inputs(run, datasets=[DatasetInput(ds, tags=[
                InputTag(DATASET_CONTEXT_TAG, op["context"])])])
        else:
            raise TrackingError(f"unknown tracking write {kind!r}")
        return 0

    def _unsent(self, run: str, metrics: list[tuple], cache: dict[tuple[str, str], set]
                ) -> list[tuple]:
        """The points of ``metrics`` the server does not hold yet (same key, step, timestamp,
        value): a write that may have landed before it failed is not doubled."""
        out = []
        for k, v, ts, s in metrics:
            if (run, k) not in cache:
                cache[(run, k)] = {(m.step, m.timestamp, m.value)
                                   for m in self.client.get_metric_history(run, k)}
            if (s, ts, v) not in cache[(run, k)]:
                out.append((k, v, ts, s))
        return out

    # ------------------------------------------------------------------ buffer and spool
    def _enqueue(self, op: dict[str, Any]) -> None:
        if op["op"] == "artifacts" and not op.get("owned"):
            # the caller's directory may be temporary (checkpoint uploads are): keep a copy
            if self.buffer_dir is None:
                self.buffer_dir = Path(tempfile.mkdtemp(prefix="hpsearch-mlflow-buffer-"))
            dst = self.buffer_dir / uuid.uuid4().hex
            shutil.copytree(op["dir"], dst, symlinks=False)
            op = {**op, "dir": str(dst), "owned": True}
        elif op["op"] == "artifact" and not op.get("owned"):
            # a copy in a folder of its own: the upload keeps the file's name
            if self.buffer_dir is None:
                self.buffer_dir = Path(tempfile.mkdtemp(prefix="hpsearch-mlflow-buffer-"))
            dst = self.buffer_dir / uuid.uuid4().hex
            dst.mkdir()
            copy = dst / Path(op["file"]).name
            shutil.copy2(op["file"], copy)
            op = {**op, "file": str(copy), "owned": True}
        elif op["op"] == "dict":
            op = {**op, "data": json.loads(json.dumps(op["data"]))}  # a snapshot
        self.queue.append(op)

    def _spool(self, spool: str | Path | None) -> Path:
        if spool is None:
            spool = os.environ.get("HPSEARCH_MLFLOW_SPOOL_DIR") or "."
        path = Path(spool)
        if path.is_dir() or not path.suffix:
            path = path / f"mlflow-spool-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        n = 1
        while path.exists():  # never overwrite an earlier spool
            path = path.with_name(f"{path.stem.rsplit('.', 1)[0]}.{n}.jsonl")
            n += 1
        art = path.with_name(path.name + ".artifacts")
        lines = [json.dumps({"hpsearch_spool": SPOOL_VERSION, "uri": self.uri,
                             "written": time.time(), "pid": os.getpid()})]
        for i, op in enumerate(self.queue):
            op = {k: v for k, v in op.items() if k != "owned"}
            if "run" in op:
                op["run"] = self.refs.get(op["run"], op["run"])
            if op["op"] == "artifacts":
                dst = art / f"{i:05d}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(op["dir"], dst)
                op["dir"] = str(dst.relative_to(path.parent))
            elif op["op"] == "artifact":
                dst = art / f"{i:05d}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(Path(op["file"]).parent), dst)
                op["file"] = str((dst / Path(op["file"]).name).relative_to(path.parent))
            lines.append(json.dumps(op))
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(path)
        self.queue.clear()  # the spool file holds them now: a later write starts afresh
        self._drop_buffer_dir()
        self.down_since, self.reason, self.refused = None, "", None
        self.backoff, self.next_try, self.announced = 0.0, 0.0, False
        return path


_CHANNELS: dict[str, _Channel] = {}
_CHANNELS_LOCK = threading.Lock()


def _channel(uri: str) -> _Channel:
    with _CHANNELS_LOCK:
        ch = _CHANNELS.get(uri)
        if ch is None:
            _check_uri(uri)
            try:
                ch = _Channel(uri)
            except TrackingError:
                raise
            except Exception as e:  # noqa: BLE001 - MLflow refuses the URI: one line
                raise TrackingError(f"tracking URI {uri!r}: "
                                    f"{str(e).strip().splitlines()[0][:200]}") from None
            _CHANNELS[uri] = ch
        return ch


@atexit.register
def _spool_at_exit() -> None:
    """Writes still queued when the process ends (nobody called Tracker.close) are not lost."""
    for ch in list(_CHANNELS.values()):
        if ch.queue:
            try:
                ch.close(None, wait=False)
            except Exception as e:  # noqa: BLE001 - at exit: say it, do not raise
                _say(f"hpsearch: could not spool {len(ch.queue)} MLflow writes for {ch.uri}: "
                     f"{e}")


def replay_spool(path: str | Path, uri: str | None = None) -> dict[str, int]:
    """Send the writes of a spool file (see :meth:`Tracker.close`) to its tracking server (or
    ``uri``), in order. Idempotent: runs are found by tags before being created and metric
    points the server already holds are skipped, so a replay that was cut short, or run twice,
    leaves exactly one copy. Returns counts: writes, metric_points (sent), skipped_points
    (already there), runs_created, refused (writes the server rejected with a 4xx)."""
    p = Path(path)
    if not p.is_file():
        raise TrackingError(f"no spool file {p}")
    try:
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        header, ops = rows[0], rows[1:]
        if header.get("hpsearch_spool") != SPOOL_VERSION:
            raise ValueError("no spool header")
    except (ValueError, IndexError, AttributeError) as e:
        raise TrackingError(f"{p} is not an hpsearch MLflow spool file ({e})") from None
    _check_uri(uri or header["uri"])
    try:
        ch = _Channel(uri or header["uri"])  # its own: nothing mixes with a live search's
    except Exception as e:  # noqa: BLE001
        raise TrackingError(f"tracking URI {uri or header['uri']!r}: "
                            f"{str(e).strip().splitlines()[0][:200]}") from None
    out = {"writes": 0, "metric_points": 0, "skipped_points": 0, "runs_created": 0,
           "refused": 0}
    cache: dict[tuple[str, str], set] = {}
    for i, op in enumerate(ops):
        if op["op"] == "artifacts":
            op["dir"] = str(p.parent / op["dir"])
        elif op["op"] == "artifact":
            op["file"] = str(p.parent / op["file"])
        try:
            if op["op"] == "create":
                _, created = ch._create(op)
                out["runs_created"] += created
                sent = 0
            else:
                sent = ch._apply(op, dedupe=True, cache=cache)
        except Exception as e:
            if _transient(e) or _status(e) in (401, 403):
                raise TrackingError(
                    f"replaying {p}: write {i + 1} of {len(ops)} failed: MLflow at {ch.uri} "
                    f"{_reason(e)}; {out['writes']} done; run the replay again later (it "
                    "skips what is already there)") from None
            out["refused"] += 1
            _say(f"hpsearch: MLflow at {ch.uri} refused {op['op']} write {i + 1} "
                 f"({_reason(e)}); skipped it")
            continue
        out["writes"] += 1
        out["metric_points"] += sent
        out["skipped_points"] += len(op.get("metrics", ())) - sent if op["op"] == "batch" else 0
    return out


class Tracker:
    """MLflow access for one experiment.

    Args:
        uri: tracking URI (``sqlite:///...`` or ``http://host:5000``). A URI that cannot work
            (unknown scheme, a SQLite file in a directory that does not exist) is a one-line
            :class:`TrackingError` here, before anything is created.
        experiment: experiment name, created on first use with an absolute artifact root.
        artifact_root: where a new local experiment keeps artifacts.
    """

    def __init__(self, uri: str, experiment: str, artifact_root: str | Path | None = None):
        self.uri, self.experiment_name = uri, experiment
        self._artifact_root = artifact_root
        self._ch = _channel(uri)
        self.client = self._ch.client

    # ------------------------------------------------------------------ connection
    def check(self) -> None:
        """Fail fast, with one line, when the store cannot be reached (one try, no retry)."""
        _check_uri(self.uri)
        try:
            self.client.search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - any failure means unreachable
            code = _status(e)
            if code in (401, 403):
                raise TrackingError(
                    f"MLflow at {self.uri} refused the credentials (HTTP {code}): set "
                    "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of that "
                    "server") from None
            raise TrackingError(f"cannot reach the MLflow tracking store {self.uri}: "
                                f"{_reason(e)}") from None

    def flush(self, wait: bool = True) -> bool:
        """Send what an outage left queued (see the module docstring); with ``wait``, retry
        until ``HPSEARCH_MLFLOW_RETRY_S`` of outage is spent. True when nothing is left."""
        return self._ch.flush(wait)

    def close(self, spool: str | Path | None = None, wait: bool = True) -> Path | None:
        """End of a search: :meth:`flush` (``wait=False``: one try, e.g. after Ctrl+C), then
        write what still could not be sent to a JSON-lines spool file (``spool``: a file or
        directory; default ``$HPSEARCH_MLFLOW_SPOOL_DIR`` or the working directory) and say so
        on one line with the command that replays it (:func:`replay_spool`). Returns the spool
        file, None when everything was sent. The tracker stays usable."""
        return self._ch.close(spool, wait)

    def buffered(self) -> dict[str, int]:
        """{"writes", "metric_points"} queued for this tracker's URI, not sent yet."""
        return self._ch.buffered()

    def _read(self, fn: Callable[[], Any]) -> Any:
        return self._ch.read(fn)

    def _location(self) -> str | None:
        if self._artifact_root is None:
            return None
        return Path(self._artifact_root).resolve().as_uri()

    @property
    def experiment_id(self) -> str:
        return self._read(lambda: self._ch.experiment_id(self.experiment_name,
                                                         self._location()))

    def existing_experiment_id(self) -> str:
        exp = self._read(lambda: self.client.get_experiment_by_name(self.experiment_name))
        if exp is None:
            names = [e.name for e in self._read(self.client.search_experiments)]
            raise TrackingError(f"no MLflow experiment {self.experiment_name!r} at {self.uri}; "
                                f"existing: {', '.join(names) or 'none'}")
        return exp.experiment_id

    # ------------------------------------------------------------------ runs
    def find_run(self, **tags: str):
        flt = " and ".join(f"tags.`{TAG}{k}` = '{v}'" for k, v in tags.items())
        runs = self._read(lambda: self.client.search_runs(
            [self._ch.experiment_id(self.experiment_name, self._location())],
            filter_string=flt, max_results=2))
        return runs[0] if runs else None

    def _open_op(self, find: dict[str, str], name: str, tags: dict[str, str]
                 ) -> dict[str, Any]:
        return {"op": "create", "ref": PENDING + uuid.uuid4().hex, "exp": self.experiment_name,
                "art_root": self._location(), "find": find, "tags": tags, "name": name,
                "start": int(time.time() * 1000)}

    def search_run(self, search_id: str, name: str, tags: dict[str, str],
                   params: dict[str, Any]) -> str:
        """The parent run of a search (reused when the search is resumed). Its id is needed
        before any trial starts, so an unreachable server is waited for (reads' policy)."""
        op = self._open_op({f"{TAG}search_id": search_id, f"{TAG}role": "search"}, name, {
            f"{TAG}search_id": search_id, f"{TAG}role": "search",
            **{f"{TAG}{k}": str(v) for k, v in tags.items()}})
        rid, created = self._read(lambda: self._ch._create(op))
        if created:
            self.log_params(rid, params)
        return rid

    def trial_run(self, parent_id: str, search_id: str, trial_id: str, name: str,
                  tags: dict[str, str]) -> tuple[str, bool]:
        """The run of one trial; returns (run_id, created). While the server is unreachable the
        id is a placeholder the tracker maps to the real run once it is created."""
        op = self._open_op({f"{TAG}search_id": search_id, f"{TAG}trial_id": trial_id}, name, {
            "mlflow.parentRunId": parent_id, f"{TAG}search_id": search_id,
            f"{TAG}trial_id": trial_id, f"{TAG}role": "trial", f"{TAG}status": "RUNNING",
            **{f"{TAG}{k}": str(v) for k, v in tags.items()}})
        return self._ch.open_run(op)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        items = [[k, _param_str(v)] for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self._ch.write({"op": "batch", "run": run_id, "params": items[i:i + 100]})

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int) -> None:
        ts = int(time.time() * 1000)  # the point's own time: a replay keeps it
        items = [[k, float(v), ts, int(step)] for k, v in metrics.items()
                 if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
        for i in range(0, len(items), 500):
            self._ch.write({"op": "batch", "run": run_id, "metrics": items[i:i + 500]})

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        items = [[k if k.startswith("mlflow.") else f"{TAG}{k}", str(v)] for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self._ch.write({"op": "batch", "run": run_id, "tags": items[i:i + 100]})

    def end_run(self, run_id: str, status: str) -> None:
        """status: FINISHED, FAILED or KILLED (MLflow's); also mirrored in ``hpsearch.status``."""
        self.set_tags(run_id, {"status": status})
        self._ch.write({"op": "terminate", "run": run_id, "status": status,
                        "end": int(time.time() * 1000)})

    def log_artifacts(self, run_id: str, local_dir: str | Path, path: str | None = None) -> None:
        self._ch.write({"op": "artifacts", "run": run_id, "dir": str(local_dir), "path": path})

    def log_artifact(self, run_id: str, local_file: str | Path,
                     artifact_path: str | None = None) -> None:
        """One file as an artifact of the run (under ``artifact_path``, keeping its name).
        Queued like every write during an outage (a copy of the file is kept, so it may be
        temporary)."""
        if not Path(local_file).is_file():
            raise TrackingError(f"log_artifact: {local_file} is not a file (log a directory "
                                "with log_artifacts)")
        self._ch.write({"op": "artifact", "run": run_id, "file": str(local_file),
                        "path": artifact_path})

    def log_dataset(self, run_id: str, name: str, digest: str, source: str,
                    profile: dict[str, Any], context: str = "training", *,
                    source_type: str = "local", schema: dict[str, Any] | None = None) -> None:
        """An MLflow dataset input of the run (the UI's Datasets column): ``name``, content
        ``digest``, ``source`` (a URI or path, stored as MLflow's ``{"uri": ...}`` unless it
        is a JSON object already), ``profile`` (e.g. counts per split) and ``schema`` as JSON,
        tagged ``mlflow.data.context`` = ``context``. Queued like every write."""
        try:
            is_json = isinstance(json.loads(source), dict)
        except ValueError:
            is_json = False
        self._ch.write({"op": "dataset", "run": run_id, "name": name, "digest": str(digest),
                        "source_type": source_type,
                        "source": source if is_json else json.dumps({"uri": str(source)}),
                        "schema": None if schema is None else json.dumps(schema, default=str),
                        "profile": json.dumps(profile, default=str), "context": context})

    def log_dict(self, run_id: str, data: dict[str, Any], name: str) -> None:
        """``data`` as the JSON artifact ``name`` of the run (e.g. its trial config)."""
        self._ch.write({"op": "dict", "run": run_id, "data": data, "name": name})

    def load_dict(self, run_id: str, name: str) -> dict[str, Any] | None:
        """The JSON artifact ``name`` of the run, or None when the run has none."""
        files = self._read(lambda: self.client.list_artifacts(self._ch.resolve(run_id)))
        if not any(f.path == name for f in files):
            return None
        with tempfile.TemporaryDirectory() as d:
            return json.loads(self.download(run_id, name, d).read_text())

    def download(self, run_id: str, path: str, dst: str | Path) -> Path:
        return Path(self._read(lambda: self.client.download_artifacts(
            self._ch.resolve(run_id), path, str(dst))))

    def register_bundle(self, run_id: str, bundle_dir: str | Path, name: str) -> str:
        """Upload an export bundle to the run as the MLflow model of it (artifact path
        ``model``: ``MLmodel``, signature, input example, the bundle itself as the model's
        ``bundle`` artifact; :mod:`hpsearch.tracking.model`) and as the plain ``bundle/``
        artifacts (as exported), and register the model as a new version of ``name`` in the
        Model Registry: ``mlflow.pyfunc.load_model("models:/NAME/VERSION")`` and ``mlflow
        models serve -m models:/NAME/VERSION`` load it. Returns the version."""
        run_id = self._read(lambda: self._ch.resolve(run_id))
        with tempfile.TemporaryDirectory(prefix="hpsearch-model-") as d:
            local = save_model(bundle_dir, Path(d) / MODEL_ARTIFACT)
            # the version points at the uploaded files: uploaded now, not queued
            self._read(lambda: self.client.log_artifacts(run_id, str(bundle_dir),
                                                         BUNDLE_ARTIFACT))
            self._read(lambda: self.client.log_artifacts(run_id, str(local), MODEL_ARTIFACT))
        try:
            self._read(lambda: self.client.get_registered_model(name))
        except TrackingError:
            raise
        except Exception:  # noqa: BLE001 - not registered yet
            self._read(lambda: self.client.create_registered_model(
                name, tags={f"{TAG}kind": "bundle"}))
        run = self._read(lambda: self.client.get_run(run_id))
        mv = self._read(lambda: self.client.create_model_version(
            name, source=f"{run.info.artifact_uri}/{MODEL_ARTIFACT}", run_id=run_id))
        return str(mv.version)

    def checkpoint_dir(self, run_id: str, dst: str | Path) -> Path:
        """A local directory holding the run's best checkpoint: Ray's checkpoint directory when
        it is still on disk, else the ``checkpoint/`` artifact downloaded under ``dst``."""
        run = self.get_run(run_id)
        ckpt = run.data.tags.get(f"{TAG}checkpoint")
        if ckpt and (Path(ckpt) / CHECKPOINT_FILE).exists():
            return Path(ckpt)
        out = Path(dst) / run_id / "checkpoint"
        if not (out / BEST_FILE).exists():
            out.mkdir(parents=True, exist_ok=True)
            try:
                got = self.download(run_id, f"checkpoint/{BEST_FILE}", out)
            except TrackingError:  # the server is unreachable: say that, not "no checkpoint"
                raise
            except Exception as e:  # noqa: BLE001
                raise TrackingError(f"run {run_id} has no checkpoint on disk or in its "
                                    f"artifacts: {str(e).splitlines()[0][:160]}") from None
            # MLflow 3 puts a single downloaded file straight into dst (older versions kept
            # its artifact path below dst): take the path it returns, whichever it is
            if got.resolve() != (out / BEST_FILE).resolve():
                os.replace(got, out / BEST_FILE)
        return out

    def resolve_run_ref(self, ref: str, dst: str | Path) -> Path:
        """``mlflow:RUN_ID`` or ``mlflow:EXPERIMENT/METRIC[/min]`` (the best trial run of that
        experiment by that metric) -> the run's local checkpoint directory. This is how a
        search starts from another search's result (staged search)."""
        body = ref.removeprefix("mlflow:")
        if "/" not in body:
            return self.checkpoint_dir(body, dst)
        parts = body.split("/")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("min", "max")):
            raise TrackingError(f"bad run reference {ref!r}; use mlflow:RUN_ID or "
                                "mlflow:EXPERIMENT/METRIC[/min|max]")
        other = Tracker(self.uri, parts[0])
        runs = other.best_runs(parts[1], parts[2] if len(parts) == 3 else "max", 1)
        if not runs:
            raise TrackingError(f"{ref}: experiment {parts[0]!r} has no trial run with metric "
                                f"{parts[1]!r}")
        return other.checkpoint_dir(runs[0].info.run_id, dst)

    # ------------------------------------------------------------------ queries
    def best_runs(self, metric: str, mode: str = "max", top: int = 5,
                  search_id: str | None = None, tie_break: str | None = None,
                  tie_break_mode: str = "max") -> list[Any]:
        """The ``top`` trial runs by ``metric``; runs with an equal value by ``tie_break``."""
        flt = f"tags.`{TAG}role` = 'trial'"
        if search_id:
            flt += f" and tags.`{TAG}search_id` = '{search_id}'"
        # trials log best_<metric> (the best evaluated epoch, whose test_* they also log):
        # rank by it, not by the last epoch's value, when it exists
        key = f"best_{metric}" if metric.startswith("val_") else metric
        order = [f"metrics.`{key}` {'DESC' if mode == 'max' else 'ASC'}"]
        if tie_break:  # the trials log best_<tie_break>: its value at their best epoch
            tkey = f"best_{tie_break}" if tie_break.startswith("val_") else tie_break
            order.append(f"metrics.`{tkey}` {'DESC' if tie_break_mode == 'max' else 'ASC'}")
        eid = self.existing_experiment_id()
        runs = self._read(lambda: self.client.search_runs(
            [eid], filter_string=flt, order_by=order, max_results=max(top * 4, 50)))
        runs = [r for r in runs if key in r.data.metrics or metric in r.data.metrics]
        return runs[:top]

    def get_run(self, run_id: str):
        try:
            return self._read(lambda: self.client.get_run(self._ch.resolve(run_id)))
        except TrackingError:
            raise
        except Exception as e:  # noqa: BLE001
            raise TrackingError(f"no MLflow run {run_id!r} at {self.uri}: "
                                f"{str(e).splitlines()[0][:160]}") from None

    def best_epoch_metrics(self, run: Any) -> dict[str, float]:
        """The run's metrics as of its best evaluated epoch (the weights its checkpoint, export
        and ``test_*`` values are from): ``val_*`` and ``train_*`` are read from their history at
        step ``best_epoch``; the run's latest values are those of its last epoch."""
        m = dict(run.data.metrics)
        step = m.get("best_epoch")
        if step is None:
            return m
        for key in [k for k in m if k.startswith(("val_", "train_"))]:
            at = self.metric_at_step(run.info.run_id, key, int(step))
            if at is not None:
                m[key] = at
        m["epoch"] = float(step)
        return m

    def metric_history(self, run_id: str, key: str) -> list[Any]:
        """Every point of metric ``key`` of the run (MLflow ``Metric``: value, timestamp,
        step), after what is queued has been sent."""
        return self._read(lambda: self.client.get_metric_history(self._ch.resolve(run_id), key))

    def metric_at_step(self, run_id: str, key: str, step: int) -> float | None:
        """The value ``key`` was logged with at ``step`` (the last one if logged twice)."""
        hist = [h for h in self.metric_history(run_id, key) if h.step == step]
        return hist[-1].value if hist else None

    def open_trial_runs(self, search_id: str) -> list[str]:
        """Ids of this search's trial runs still marked RUNNING in MLflow."""
        return list(self.open_trial_runs_by_trial(search_id).values())

    def open_trial_runs_by_trial(self, search_id: str) -> dict[str, str]:
        """{Tune trial id: run id} of this search's trial runs still marked RUNNING."""
        flt = (f"tags.`{TAG}role` = 'trial' and tags.`{TAG}search_id` = '{search_id}' and "
               "attributes.status = 'RUNNING'")
        eid = self.experiment_id
        runs = self._read(lambda: self.client.search_runs([eid], filter_string=flt,
                                                          max_results=10000))
        return {r.data.tags.get(f"{TAG}trial_id", r.info.run_id): r.info.run_id for r in runs}

    def trial_errors(self, search_id: str, limit: int = 3) -> list[tuple[str, str]]:
        """(run id, error tag) of this search's FAILED trial runs, oldest first."""
        flt = (f"tags.`{TAG}role` = 'trial' and tags.`{TAG}search_id` = '{search_id}' and "
               "attributes.status = 'FAILED'")
        eid = self.experiment_id
        runs = self._read(lambda: self.client.search_runs(
            [eid], filter_string=flt, order_by=["attributes.start_time ASC"],
            max_results=limit))
        return [(r.info.run_id, r.data.tags.get(f"{TAG}error", "(no error recorded)"))
                for r in runs]

    def runs(self, role: str = "trial", max_results: int = 5000) -> list[Any]:
        """The experiment's runs of one role (``trial`` or ``search``), newest first."""
        eid = self.existing_experiment_id()
        return self._read(lambda: self.client.search_runs(
            [eid], filter_string=f"tags.`{TAG}role` = '{role}'", max_results=max_results))

    def count_runs(self, **tags: str) -> int:
        flt = " and ".join(f"tags.`{TAG}{k}` = '{v}'" for k, v in tags.items()) or None
        eid = self.existing_experiment_id()
        return len(self._read(lambda: self.client.search_runs([eid], filter_string=flt,
                                                              max_results=10000)))


def _param_str(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."


def summarize_params(params: dict[str, str], keys: Iterable[str]) -> str:
    def fmt(v: str) -> str:
        try:
            f = float(v)
        except ValueError:
            return v
        return v if f.is_integer() else f"{f:.4g}"

    return " ".join(f"{k.split('.')[-1]}={fmt(params[k])}" for k in keys if k in params)
