"""Tune callback that mirrors every trial into exactly one nested MLflow run.

Ray's stock ``MLflowLoggerCallback`` neither nests runs nor survives ``Tuner.restore`` (it
opens a second run for a resumed trial). This one looks its runs up by tags, so after a
restore it finds and continues the same parent and child runs. It runs on the driver only:
trials and Train workers never talk to MLflow.

Exactly once: a reopened run's logged steps are read back (one metric-history query per run),
and a step the run already has is not logged again, so an epoch a restored trial reports a
second time (its result replayed, or the epoch re-run from an older checkpoint) keeps one point
per metric.

Run status: MLflow's own status is FINISHED, FAILED or KILLED; the ``hpsearch.status`` tag says
more: ``STOPPED`` for a trial a scheduler (or the time budget) ended early, with
``hpsearch.stopped_by`` naming it and ``hpsearch.epochs_run`` the epoch (its MLflow status stays
FINISHED: its checkpoint is valid and exportable; ``hpsearch.stopped_early`` is kept for older
readers). ``hpsearch.retries`` counts the infrastructure failures Tune retried
(``hpsearch.retry_error`` the last one), ``hpsearch.resumed_from_epoch`` the checkpoint epoch the
trial last resumed from, ``hpsearch.code_version`` the code that started it
(``hpsearch.code_version_resumed`` the code that last reopened it).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray.tune import Callback

from hpsearch.errors import ConfigError, HpsearchError, TrackingError
from hpsearch.provenance import code_version, git_commit
from hpsearch.search.codec import sampled, trial_config
from hpsearch.search.progress import fmt_value, trial_number
from hpsearch.search.trainable import (
    ERROR_KEY,
    ERROR_KIND_KEY,
    RESUMED_KEY,
    disk_full_message,
    is_disk_full,
)
from hpsearch.tasks import resolved_params
from hpsearch.tasks.checkpoint import BEST_FILE, CHECKPOINT_FILE, REPORTS_DIR
from hpsearch.tracking import CONFIG_ARTIFACT, Tracker

METRIC_PREFIXES = ("train_", "val_", "test_", "best_", "epoch")  # what Tune results reach MLflow
STOPPED = "STOPPED"  # hpsearch.status of a run ended early on purpose (MLflow: FINISHED)
STEP_KEY = "epoch"  # logged at every step: its history says which steps a run has


class MLflowTrialCallback(Callback):
    def __init__(self, uri: str, experiment: str, search_id: str, parent_run_id: str, *,
                 family: str, dataset: str, max_epochs: int, scheduler: str = "asha",
                 dataset_input: dict[str, Any] | None = None) -> None:
        self.uri, self.experiment, self.search_id = uri, experiment, search_id
        self.parent_run_id = parent_run_id
        self.family, self.dataset, self.max_epochs = family, dataset, max_epochs
        self.scheduler = scheduler
        # Tracker.log_dataset's arguments: every trial run lists the dataset it trained on
        self.dataset_input = dataset_input
        self._names: dict[str, str] = {}
        self._numbers: dict[str, int] = {}
        self._tracker: Tracker | None = None
        self._runs: dict[str, str] = {}
        self._steps: dict[str, set[int]] = {}  # steps each open run has in MLflow
        self._errors: dict[str, tuple[str, str]] = {}  # trial -> (message, kind) it ended with
        self._closed: set[str] = set()  # trials whose run this driver closed
        self._last_epoch: dict[str, int] = {}
        self._ckpt: dict[str, str] = {}

    # the MLflow client does not pickle; Tune pickles callbacks into tuner.pkl. What a
    # restored driver must not trust (runs, their steps) is read back from MLflow instead.
    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_tracker"], d["_runs"], d["_steps"], d["_errors"] = None, {}, {}, {}
        d["_closed"] = set()
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        d.setdefault("scheduler", "asha")
        d.setdefault("_steps", {})
        d.setdefault("_errors", {})
        d.setdefault("_closed", set())
        self.__dict__.update(d)

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.uri, self.experiment)
        return self._tracker

    @contextlib.contextmanager
    def _store(self, doing: str) -> Iterator[None]:
        """A full disk under the tracking store becomes one line naming it."""
        try:
            yield
        except HpsearchError:
            raise
        except Exception as e:
            if not is_disk_full(e):
                raise
            where = getattr(e, "filename", None) or self.uri.removeprefix("sqlite:///")
            raise TrackingError(disk_full_message(where, doing)) from None

    def _number(self, trial: Any, trials: list | None) -> int:
        return trial_number(self._numbers, trial, trials)

    def _run(self, trial: Any, trials: list | None = None) -> str:
        rid = self._runs.get(trial.trial_id)
        if rid is None:
            number = self._number(trial, trials)
            name = run_name(self.search_id, number, trial, self.family)
            self._names[trial.trial_id] = name
            rid, created = self.tracker.trial_run(
                self.parent_run_id, self.search_id, trial.trial_id, name=name,
                tags={"family": self.family, "dataset": self.dataset,
                      "code_version": code_version(), "trial_no": number})
            if created:
                self.tracker.set_tags(rid, source_tags())
                if self.dataset_input:
                    self.tracker.log_dataset(rid, **self.dataset_input)
                self._steps[trial.trial_id] = set()
                try:
                    cfg = trial_config(trial.config)
                except ConfigError as e:  # the trial fails with the same error; the search
                    self.tracker.set_tags(rid, {"error": str(e)[:4000]})  # must go on
                else:
                    self.tracker.log_params(rid, resolved_params(cfg))
                    self.tracker.log_dict(rid, cfg.model_dump(mode="json"), CONFIG_ARTIFACT)
            else:  # a restored search reopens it: what it already has is not logged twice
                steps = logged_steps(self.tracker, rid)
                self._steps[trial.trial_id] = steps
                if steps:
                    self._last_epoch[trial.trial_id] = max(steps)
                # code_version stays the one it began with
                self.tracker.set_tags(rid, {"status": "RUNNING",
                                            "code_version_resumed": code_version()})
            self._runs[trial.trial_id] = rid
        return rid

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        with self._store("opening a trial run"):
            self._run(trial, trials)

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        with self._store("opening a trial run"):
            self._run(trial, trials)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune retries the trial (an infrastructure failure): say so on its run."""
        with self._store("tagging a retried trial"):
            self.tracker.set_tags(self._run(trial), {
                "retries": trial.num_failures,
                "retry_error": _error_text(trial) or "(no error recorded)"})

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if result.get(ERROR_KEY):  # the trainable's terminal result: no metrics, an error
            message = str(result[ERROR_KEY])
            self._errors[trial.trial_id] = (message, str(result.get(ERROR_KIND_KEY, "")))
            if self._errors[trial.trial_id][1] == "disk_full":
                # every other trial would fail the same way: close this run, stop the search
                # (an error raised here ends Tune's fit; one raised in on_trial_complete would
                # only fail this trial)
                self._finish(trial, "FAILED")
                raise HpsearchError(message)
            return
        with self._store("logging trial metrics"):
            rid = self._run(trial)
            epoch = int(result.get("epoch", result.get("training_iteration", 0)))
            steps = self._steps.setdefault(trial.trial_id, set())
            if epoch not in steps:
                metrics = {k: v for k, v in result.items() if k.startswith(METRIC_PREFIXES)}
                self.tracker.log_metrics(rid, metrics, step=epoch)
                steps.add(epoch)
            if result.get(RESUMED_KEY) is not None:
                self.tracker.set_tags(rid, {"resumed_from_epoch": int(result[RESUMED_KEY])})
        self._last_epoch[trial.trial_id] = epoch
        if result.get("checkpoint_path"):  # TorchTrainer runs report their checkpoint here
            self._ckpt[trial.trial_id] = str(result["checkpoint_path"])

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any,
                      **info: Any) -> None:
        path = getattr(checkpoint, "path", None)
        if path:
            self._ckpt[trial.trial_id] = str(path)

    def _finish(self, trial: Any, status: str, error: str | None = None) -> None:
        if trial.trial_id in self._closed:
            return  # closed already (a disk-full trial, before Tune stopped everything)
        ended = self._errors.pop(trial.trial_id, None)
        with self._store("closing a trial run"):
            rid = self._run(trial)
            epoch = self._last_epoch.get(trial.trial_id, 0)
            ckpt = self._ckpt.get(trial.trial_id)
            if ckpt is None and getattr(trial, "checkpoint", None) is not None:
                ckpt = getattr(trial.checkpoint, "path", None)
            tags: dict[str, Any] = {}
            label = None
            if ended is not None:  # ended by the trainable with a deterministic error
                status, error = "FAILED", ended[0]
                if ended[1] == "disk_full":
                    ckpt = None  # nothing more onto the full disk
            elif status == "FINISHED" and epoch < self.max_epochs:
                tags.update(stopped_early="true", stopped_by=self.scheduler)
                label = STOPPED
                # MLflow's statuses have no "stopped": the run list shows it in the name
                name = self._names.get(trial.trial_id) or run_name(
                    self.search_id, self._number(trial, None), trial, self.family)
                tags["mlflow.runName"] = (f"{name} [stopped by {self.scheduler} at epoch "
                                          f"{epoch}/{self.max_epochs}]")
            if error:
                tags["error"] = error[:4000]
            close_trial_run(self.tracker, rid, status, epoch, ckpt, tags, label=label)
            self._runs.pop(trial.trial_id, None)
            self._steps.pop(trial.trial_id, None)
            self._closed.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "FAILED", _error_text(trial)
                     or "trial raised an error (see its Ray trial dir)")


def run_name(search_id: str, number: int, trial: Any, family: str, max_values: int = 4) -> str:
    """``<search>/<trial-no> <family> lr=0.0123 optimizer=sgd …``: what the MLflow run list
    shows instead of Tune's ``tune_trainable_<id>``. The values are the trial's sampled ones
    (conditional ones only where sampled), by the last part of their key, in space order."""
    values = sampled(getattr(trial, "config", {}) or {})
    parts = [f"{k.rsplit('.', 1)[-1]}={fmt_value(v)}"
             for k, v in list(values.items())[:max_values]]
    return " ".join([f"{search_id}/{number}", family, *parts])


def source_tags() -> dict[str, str]:
    """MLflow's own source tags (the UI's "Source" and "Git commit")."""
    sha = git_commit()
    tags = {"mlflow.source.name": "hpsearch", "mlflow.source.type": "JOB"}
    if sha:
        tags["mlflow.source.git.commit"] = sha.removesuffix("-dirty")
        tags["git_commit"] = sha  # with "-dirty" when the checkout had uncommitted changes
    return tags


def _error_text(trial: Any) -> str | None:
    """The last lines of the trial's error, short (Tune keeps the whole trace in its dir)."""
    try:
        e = trial.get_error()
        return " | ".join(str(e).strip().splitlines()[-3:])[-800:] if e else None
    except Exception:  # noqa: BLE001 - the error file may not be readable yet
        return None


def logged_steps(tracker: Tracker, rid: str) -> set[int]:
    """The steps run ``rid`` has logged (one metric-history query)."""
    return {int(m.step) for m in tracker.metric_history(rid, STEP_KEY)}


def upload_checkpoint(tracker: Tracker, rid: str, ckpt: Path) -> None:
    """Copy the best weights (else the latest state) and the reports into the run's
    artifacts, so export works after Ray's directories are gone."""
    if (ckpt / REPORTS_DIR).is_dir():
        tracker.log_artifacts(rid, ckpt / REPORTS_DIR, "reports")
    files = [f for f in (ckpt / BEST_FILE, ckpt / CHECKPOINT_FILE) if f.exists()]
    if not files:
        return
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / files[0].name).symlink_to(files[0])
        tracker.log_artifacts(rid, d, "checkpoint")


def close_trial_run(tracker: Tracker, rid: str, status: str, epoch: int, ckpt: str | None,
                    tags: dict[str, Any], label: str | None = None) -> None:
    """End one trial run: epochs run, checkpoint path and artifact, extra tags, status
    (MLflow's ``status``; ``label``, e.g. STOPPED, in ``hpsearch.status`` when given)."""
    tags = {"epochs_run": epoch, **tags}
    if ckpt:
        tags["checkpoint"] = ckpt
        upload_checkpoint(tracker, rid, Path(ckpt))
    tracker.set_tags(rid, tags)
    tracker.end_run(rid, status)  # also sets hpsearch.status = status
    if label and label != status:
        tracker.set_tags(rid, {"status": label})


def failed_trials(grid: Any) -> int:
    """Trials of a ``ResultGrid`` that failed: raised (Tune's ``num_errors``) or ended by the
    trainable with a deterministic error (TERMINATED for Tune, FAILED in MLflow)."""
    return sum(1 for r in grid if r.error is not None or (r.metrics or {}).get(ERROR_KEY))


def hpsearch_cause(exc: BaseException) -> HpsearchError | None:
    """The :class:`HpsearchError` behind ``exc`` (Tune re-raises a callback's error as a
    ``TuneError`` holding the traceback as text, the original in ``__context__``)."""
    seen: BaseException | None = exc
    for _ in range(20):
        if seen is None:
            return None
        if isinstance(seen, HpsearchError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def finish_open_trials(tracker: Tracker, search_id: str, grid: Any, stopped_by: str) -> int:
    """After a ``fit`` that was not interrupted: trials Tune ended without completing them
    (``time_budget_s`` ran out) never reach ``on_trial_complete``. Close their runs FINISHED
    (``hpsearch.status`` STOPPED), tagged ``stopped_by``, with the checkpoint Ray kept (the best
    epoch is in it, so they can be exported like any other). Returns how many runs were
    closed."""
    open_runs = tracker.open_trial_runs_by_trial(search_id)  # one query, not one per trial
    closed = 0
    for res in grid:
        rid = open_runs.pop((res.metrics or {}).get("trial_id"), None)
        if rid is None:
            continue
        ckpt = getattr(res.checkpoint, "path", None) if res.checkpoint else None
        epoch = int((res.metrics or {}).get("epoch", 0))
        status = "FAILED" if res.error else "FINISHED"
        close_trial_run(tracker, rid, status, epoch, ckpt, {"stopped_by": stopped_by},
                        label=None if res.error else STOPPED)
        closed += 1
    for rid in open_runs.values():  # no result to go by (never reported, or a trial the
        tracker.set_tags(rid, {"stopped_by": stopped_by})  # restored Tune state never knew)
        tracker.end_run(rid, "KILLED")
    return closed + len(open_runs)
