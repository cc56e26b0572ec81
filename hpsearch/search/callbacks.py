"""Tune callback that mirrors every trial into exactly one nested MLflow run.

Ray's stock ``MLflowLoggerCallback`` neither nests runs nor survives ``Tuner.restore`` (it
opens a second run for a resumed trial). This one looks its runs up by tags, so after a
restore it finds and continues the same parent and child runs. It runs on the driver only:
trials and Train workers never talk to MLflow.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ray.tune import Callback

from hpsearch.errors import ConfigError
from hpsearch.search.codec import trial_config
from hpsearch.tasks import resolved_params
from hpsearch.tasks.checkpoint import BEST_FILE, CHECKPOINT_FILE, REPORTS_DIR
from hpsearch.tracking import CONFIG_ARTIFACT, Tracker

METRIC_PREFIXES = ("train_", "val_", "test_", "best_", "epoch")  # what Tune results reach MLflow


class MLflowTrialCallback(Callback):
    def __init__(self, uri: str, experiment: str, search_id: str, parent_run_id: str, *,
                 family: str, dataset: str, max_epochs: int) -> None:
        self.uri, self.experiment, self.search_id = uri, experiment, search_id
        self.parent_run_id = parent_run_id
        self.family, self.dataset, self.max_epochs = family, dataset, max_epochs
        self._tracker: Tracker | None = None
        self._runs: dict[str, str] = {}
        self._last_epoch: dict[str, int] = {}
        self._ckpt: dict[str, str] = {}

    # the MLflow client does not pickle; Tune pickles callbacks into tuner.pkl
    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_tracker"], d["_runs"] = None, {}
        return d

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.uri, self.experiment)
        return self._tracker

    def _run(self, trial: Any) -> str:
        rid = self._runs.get(trial.trial_id)
        if rid is None:
            rid, created = self.tracker.trial_run(
                self.parent_run_id, self.search_id, trial.trial_id, name=str(trial),
                tags={"family": self.family, "dataset": self.dataset})
            if created:
                try:
                    cfg = trial_config(trial.config)
                except ConfigError as e:  # the trial fails with the same error; the search
                    self.tracker.set_tags(rid, {"error": str(e)[:4000]})  # must go on
                else:
                    self.tracker.log_params(rid, resolved_params(cfg))
                    self.tracker.log_dict(rid, cfg.model_dump(mode="json"), CONFIG_ARTIFACT)
            self._runs[trial.trial_id] = rid
        return rid

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run(trial)

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        rid = self._run(trial)
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = {k: v for k, v in result.items() if k.startswith(METRIC_PREFIXES)}
        self.tracker.log_metrics(rid, metrics, step=epoch)
        self._last_epoch[trial.trial_id] = epoch
        if result.get("checkpoint_path"):  # TorchTrainer runs report their checkpoint here
            self._ckpt[trial.trial_id] = str(result["checkpoint_path"])

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any,
                      **info: Any) -> None:
        path = getattr(checkpoint, "path", None)
        if path:
            self._ckpt[trial.trial_id] = str(path)

    def _finish(self, trial: Any, status: str, error: str | None = None) -> None:
        rid = self._run(trial)
        epoch = self._last_epoch.get(trial.trial_id, 0)
        ckpt = self._ckpt.get(trial.trial_id)
        if ckpt is None and getattr(trial, "checkpoint", None) is not None:
            ckpt = getattr(trial.checkpoint, "path", None)
        tags: dict[str, Any] = {}
        if status == "FINISHED" and epoch < self.max_epochs:
            tags["stopped_early"] = "true"
        if error:
            tags["error"] = error[:4000]
        close_trial_run(self.tracker, rid, status, epoch, ckpt, tags)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        err = None
        try:
            e = trial.get_error()
            err = " | ".join(str(e).strip().splitlines()[-3:])[-800:] if e else None
        except Exception:  # noqa: BLE001 - the error file may not be readable yet
            err = None
        self._finish(trial, "FAILED", err or "trial raised an error (see its Ray trial dir)")


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
                    tags: dict[str, Any]) -> None:
    """End one trial run: epochs run, checkpoint path and artifact, extra tags, status."""
    tags = {"epochs_run": epoch, **tags}
    if ckpt:
        tags["checkpoint"] = ckpt
        upload_checkpoint(tracker, rid, Path(ckpt))
    tracker.set_tags(rid, tags)
    tracker.end_run(rid, status)


def finish_open_trials(tracker: Tracker, search_id: str, grid: Any, stopped_by: str) -> int:
    """After a ``fit`` that was not interrupted: trials Tune ended without completing them
    (``time_budget_s`` ran out) never reach ``on_trial_complete``. Close their runs FINISHED,
    tagged ``stopped_by``, with the checkpoint Ray kept (the best epoch is in it, so they can
    be exported like any other). Returns how many runs were closed."""
    open_runs = tracker.open_trial_runs_by_trial(search_id)  # one query, not one per trial
    closed = 0
    for res in grid:
        rid = open_runs.pop((res.metrics or {}).get("trial_id"), None)
        if rid is None:
            continue
        ckpt = getattr(res.checkpoint, "path", None) if res.checkpoint else None
        epoch = int((res.metrics or {}).get("epoch", 0))
        close_trial_run(tracker, rid, "FAILED" if res.error else "FINISHED", epoch, ckpt,
                        {"stopped_by": stopped_by})
        closed += 1
    for rid in open_runs.values():  # no result to go by (never reported)
        tracker.set_tags(rid, {"stopped_by": stopped_by})
        tracker.end_run(rid, "KILLED")
    return closed + len(open_runs)
