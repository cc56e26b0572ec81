"""The one adapter over MLflow: experiments, parent/child runs, params, metrics, artifacts.

Runs are found by tags, never by remembered ids, so a restored search (``--resume``) reopens
the same parent run and the same child run per trial: exactly one MLflow run per trial.

Tags written: ``hpsearch.search_id``, ``hpsearch.trial_id``, ``hpsearch.family``,
``hpsearch.dataset``, ``hpsearch.status``, ``hpsearch.checkpoint`` (latest checkpoint dir),
``hpsearch.role`` (``search`` or ``trial``) and MLflow's own ``mlflow.parentRunId``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hpsearch.errors import TrackingError
from hpsearch.tasks.checkpoint import BEST_FILE, CHECKPOINT_FILE

TAG = "hpsearch."
CONFIG_ARTIFACT = "config.json"  # every trial run's fully resolved trial config
DEFAULT_DB = Path("results") / "mlflow.db"


def default_tracking_uri(results_dir: str | Path = "results") -> str:
    """``sqlite:////abs/results/mlflow.db``: absolute, because Ray workers change directory."""
    return f"sqlite:///{(Path(results_dir).resolve() / 'mlflow.db')}"


def _client(uri: str):
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


class Tracker:
    """MLflow access for one experiment.

    Args:
        uri: tracking URI (``sqlite:///...`` or ``http://host:5000``).
        experiment: experiment name, created on first use with an absolute artifact root.
        artifact_root: where a new local experiment keeps artifacts.
    """

    def __init__(self, uri: str, experiment: str, artifact_root: str | Path | None = None):
        self.uri, self.experiment_name = uri, experiment
        self._artifact_root = artifact_root
        self._experiment_id: str | None = None
        self.client = _client(uri)

    # ------------------------------------------------------------------ connection
    def check(self) -> None:
        """Fail fast, with one line, when the store cannot be reached."""
        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri.removeprefix("sqlite:///"))
            if not db.parent.exists():
                raise TrackingError(f"tracking URI {self.uri}: directory {db.parent} does not "
                                    "exist")
        try:
            self.client.search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - any failure means unreachable
            raise TrackingError(f"cannot reach the MLflow tracking store {self.uri}: "
                                f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                loc = None
                if self._artifact_root is not None:
                    loc = Path(self._artifact_root).resolve().as_uri()
                try:
                    self._experiment_id = self.client.create_experiment(
                        self.experiment_name, artifact_location=loc)
                except Exception:  # noqa: BLE001 - lost a creation race: read it back
                    exp = self.client.get_experiment_by_name(self.experiment_name)
                    if exp is None:
                        raise
                    self._experiment_id = exp.experiment_id
            else:
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    def existing_experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is None:
            names = [e.name for e in self.client.search_experiments()]
            raise TrackingError(f"no MLflow experiment {self.experiment_name!r} at {self.uri}; "
                                f"existing: {', '.join(names) or 'none'}")
        return exp.experiment_id

    # ------------------------------------------------------------------ runs
    def find_run(self, **tags: str):
        flt = " and ".join(f"tags.`{TAG}{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=flt, max_results=2)
        return runs[0] if runs else None

    def search_run(self, search_id: str, name: str, tags: dict[str, str],
                   params: dict[str, Any]) -> str:
        """The parent run of a search (reused when the search is resumed)."""
        run = self.find_run(search_id=search_id, role="search")
        if run is not None:
            self.client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags={
            f"{TAG}search_id": search_id, f"{TAG}role": "search",
            **{f"{TAG}{k}": str(v) for k, v in tags.items()}})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def trial_run(self, parent_id: str, search_id: str, trial_id: str, name: str,
                  tags: dict[str, str]) -> tuple[str, bool]:
        """The run of one trial; returns (run_id, created)."""
        run = self.find_run(search_id=search_id, trial_id=trial_id)
        if run is not None:
            self.client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id, False
        run = self.client.create_run(self.experiment_id, run_name=name, tags={
            "mlflow.parentRunId": parent_id, f"{TAG}search_id": search_id,
            f"{TAG}trial_id": trial_id, f"{TAG}role": "trial", f"{TAG}status": "RUNNING",
            **{f"{TAG}{k}": str(v) for k, v in tags.items()}})
        return run.info.run_id, True

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items()
                 if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i:i + 500])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k if k.startswith("mlflow.") else f"{TAG}{k}", str(v))

    def end_run(self, run_id: str, status: str) -> None:
        """status: FINISHED, FAILED or KILLED (MLflow's); also mirrored in ``hpsearch.status``."""
        self.set_tags(run_id, {"status": status})
        self.client.set_terminated(run_id, status=status)

    def log_artifacts(self, run_id: str, local_dir: str | Path, path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path=path)

    def log_dict(self, run_id: str, data: dict[str, Any], name: str) -> None:
        """``data`` as the JSON artifact ``name`` of the run (e.g. its trial config)."""
        self.client.log_dict(run_id, data, name)

    def load_dict(self, run_id: str, name: str) -> dict[str, Any] | None:
        """The JSON artifact ``name`` of the run, or None when the run has none."""
        if not any(f.path == name for f in self.client.list_artifacts(run_id)):
            return None
        with tempfile.TemporaryDirectory() as d:
            return json.loads(self.download(run_id, name, d).read_text())

    def download(self, run_id: str, path: str, dst: str | Path) -> Path:
        return Path(self.client.download_artifacts(run_id, path, str(dst)))

    def register_bundle(self, run_id: str, bundle_dir: str | Path, name: str) -> str:
        """Upload an export bundle as the run's ``bundle/`` artifacts and register it as a new
        version of model ``name`` in the MLflow Model Registry; returns the version."""
        self.log_artifacts(run_id, bundle_dir, "bundle")
        try:
            self.client.get_registered_model(name)
        except Exception:  # noqa: BLE001 - not registered yet
            self.client.create_registered_model(name, tags={f"{TAG}kind": "bundle"})
        run = self.client.get_run(run_id)
        mv = self.client.create_model_version(name, source=f"{run.info.artifact_uri}/bundle",
                                              run_id=run_id)
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
        runs = self.client.search_runs([self.existing_experiment_id()], filter_string=flt,
                                       order_by=order, max_results=max(top * 4, 50))
        runs = [r for r in runs if key in r.data.metrics or metric in r.data.metrics]
        return runs[:top]

    def get_run(self, run_id: str):
        try:
            return self.client.get_run(run_id)
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

    def metric_at_step(self, run_id: str, key: str, step: int) -> float | None:
        """The value ``key`` was logged with at ``step`` (the last one if logged twice)."""
        hist = [h for h in self.client.get_metric_history(run_id, key) if h.step == step]
        return hist[-1].value if hist else None

    def open_trial_runs(self, search_id: str) -> list[str]:
        """Ids of this search's trial runs still marked RUNNING in MLflow."""
        return list(self.open_trial_runs_by_trial(search_id).values())

    def open_trial_runs_by_trial(self, search_id: str) -> dict[str, str]:
        """{Tune trial id: run id} of this search's trial runs still marked RUNNING."""
        flt = (f"tags.`{TAG}role` = 'trial' and tags.`{TAG}search_id` = '{search_id}' and "
               "attributes.status = 'RUNNING'")
        runs = self.client.search_runs([self.experiment_id], filter_string=flt,
                                       max_results=10000)
        return {r.data.tags.get(f"{TAG}trial_id", r.info.run_id): r.info.run_id for r in runs}

    def trial_errors(self, search_id: str, limit: int = 3) -> list[tuple[str, str]]:
        """(run id, error tag) of this search's FAILED trial runs, oldest first."""
        flt = (f"tags.`{TAG}role` = 'trial' and tags.`{TAG}search_id` = '{search_id}' and "
               "attributes.status = 'FAILED'")
        runs = self.client.search_runs([self.experiment_id], filter_string=flt,
                                       order_by=["attributes.start_time ASC"],
                                       max_results=limit)
        return [(r.info.run_id, r.data.tags.get(f"{TAG}error", "(no error recorded)"))
                for r in runs]

    def runs(self, role: str = "trial", max_results: int = 5000) -> list[Any]:
        """The experiment's runs of one role (``trial`` or ``search``), newest first."""
        return self.client.search_runs([self.existing_experiment_id()],
                                       filter_string=f"tags.`{TAG}role` = '{role}'",
                                       max_results=max_results)

    def count_runs(self, **tags: str) -> int:
        flt = " and ".join(f"tags.`{TAG}{k}` = '{v}'" for k, v in tags.items()) or None
        return len(self.client.search_runs([self.existing_experiment_id()], filter_string=flt,
                                           max_results=10000))


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
