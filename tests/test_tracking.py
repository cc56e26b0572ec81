"""The tracking layer against real local MLflow stores (no Ray, no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpsearch.errors import TrackingError
from hpsearch.search.tuner import search_tracker
from hpsearch.tracking import Tracker, default_tracking_uri


def _one_trial_with_artifact(t, tmp: Path) -> tuple[str, str]:
    parent = t.search_run("s-1", "s-1", tags={}, params={"space": "x"})
    rid, created = t.trial_run(parent, "s-1", "t-1", name="t-1", tags={})
    assert created
    d = tmp / "art"
    d.mkdir()
    (d / "f.txt").write_text("x")
    t.log_artifacts(rid, d, "checkpoint")
    return parent, rid


@pytest.mark.parametrize("store", ["sqlite", "file"])
def test_search_tracker_stores_artifacts_and_closes_open_runs(tmp_path, monkeypatch, store):
    results = tmp_path / "results"
    results.mkdir()
    if store == "file":  # what the GPU machine's mlflow-skinny supports (no SQLAlchemy)
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (results / "mlruns").resolve().as_uri()
    else:
        uri = default_tracking_uri(results)
    t = search_tracker(uri, "exp", results)
    parent, rid = _one_trial_with_artifact(t, tmp_path)
    # the artifact is readable back, and the store lists exactly its experiments (a file store
    # whose root also held artifact folders would list them as malformed experiments)
    got = t.download(rid, "checkpoint/f.txt", tmp_path / "dl")
    assert got.read_text() == "x"
    names = sorted(e.name for e in t.client.search_experiments())
    assert "exp" in names
    if store == "file":
        root = results / "mlruns"
        malformed = [p.name for p in root.iterdir()
                     if p.is_dir() and not p.name.startswith(".") and p.name != "models"
                     and not (p / "meta.yaml").exists()]
        assert malformed == [], malformed
    # an interrupted search: the trial's run is still RUNNING until closed
    assert t.open_trial_runs("s-1") == [rid]
    t.end_run(rid, "KILLED")
    assert t.open_trial_runs("s-1") == []
    assert t.get_run(rid).info.status == "KILLED"
    # --resume reopens the same run
    again, created = t.trial_run(parent, "s-1", "t-1", name="t-1", tags={})
    assert (again, created) == (rid, False) and t.open_trial_runs("s-1") == [rid]


@pytest.mark.parametrize("store", ["sqlite", "file"])
def test_checkpoint_dir_falls_back_to_the_uploaded_artifact(tmp_path, monkeypatch, store):
    """Once Ray's checkpoint directory is gone, export/hedge-curve/``mlflow:`` references read
    the ``checkpoint/best.pt`` artifact: the returned directory must hold ``best.pt``."""
    results = tmp_path / "results"
    results.mkdir()
    if store == "file":
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (results / "mlruns").resolve().as_uri()
    else:
        uri = default_tracking_uri(results)
    t = search_tracker(uri, "exp", results)
    parent = t.search_run("s-1", "s-1", tags={}, params={})
    rid, _ = t.trial_run(parent, "s-1", "t-1", name="t-1", tags={})
    art = tmp_path / "art"
    art.mkdir()
    (art / "best.pt").write_bytes(b"weights")
    t.log_artifacts(rid, art, "checkpoint")
    t.set_tags(rid, {"checkpoint": str(tmp_path / "ray-dir-that-was-deleted")})
    d = t.checkpoint_dir(rid, tmp_path / "dl")
    assert (d / "best.pt").read_bytes() == b"weights"
    assert t.checkpoint_dir(rid, tmp_path / "dl") == d  # second call: already there
    assert (t.resolve_run_ref(f"mlflow:{rid}", tmp_path / "dl2") / "best.pt").exists()


def test_best_epoch_metrics_read_val_at_the_best_epoch(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    t = search_tracker(default_tracking_uri(results), "exp", results)
    parent = t.search_run("s-1", "s-1", tags={}, params={})
    rid, _ = t.trial_run(parent, "s-1", "t-1", name="t-1", tags={})
    for step, val, best in ((1, 0.5, 1), (2, 0.9, 2), (3, 0.7, 2)):
        t.log_metrics(rid, {"val_micro_f1": val, "train_loss": 1.0 / step,
                            "best_epoch": best, "test_micro_f1": 0.8}, step=step)
    run = t.get_run(rid)
    assert run.data.metrics["val_micro_f1"] == 0.7  # MLflow's latest value: the last epoch
    m = t.best_epoch_metrics(run)
    assert m["val_micro_f1"] == 0.9 and m["train_loss"] == 0.5 and m["epoch"] == 2
    assert m["test_micro_f1"] == 0.8


def test_best_and_report_take_the_tasks_metric_and_the_logged_config(tmp_path):
    """Without --metric, best/report rank by the experiment's task's default metric; the
    trial config a run logs (config.json) reads back into the same TrialConfig."""
    from hpsearch import api
    from hpsearch.tasks import TrialConfig, validate_trial
    from hpsearch.tracking import CONFIG_ARTIFACT

    results = tmp_path / "results"
    results.mkdir()
    t = search_tracker(default_tracking_uri(results), "labels", results)
    parent = t.search_run("s-1", "s-1", tags={}, params={"space": "x"})
    assert api.default_metric(t) == "val_micro_f1"  # no trial runs yet: the classifier's
    rid, _ = t.trial_run(parent, "s-1", "t-1", name="t-1", tags={"family": "euclidean_cone"})
    assert api.default_metric(t) == "val_edge_f1"
    cfg = TrialConfig.from_flat({"model.family": "euclidean_cone", "model.params.K": 2.5})
    assert t.load_dict(rid, CONFIG_ARTIFACT) is None
    t.log_dict(rid, cfg.model_dump(mode="json"), CONFIG_ARTIFACT)
    assert validate_trial(t.load_dict(rid, CONFIG_ARTIFACT)) == cfg


@pytest.mark.parametrize("uri,expect", [
    ("foo://bar", "unsupported scheme 'foo'"),
    ("sqlite:////missing-hpsearch-dir/sub/x.db", "directory /missing-hpsearch-dir/sub does not "
                                                 "exist"),
    ("http://127.0.0.1:1", "cannot reach the MLflow tracking store http://127.0.0.1:1: "
                           "connection refused"),
])
def test_bad_tracking_uris_are_one_line(uri, expect):
    """Unusable URIs fail at once with one line naming them: in the constructor (foo://, a
    SQLite file in a missing directory: MLflow would create the directories and a new empty
    store) or in check() (nothing listening)."""
    with pytest.raises(TrackingError) as e:
        Tracker(uri, "x").check()
    assert expect in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not Path("/missing-hpsearch-dir").exists()  # no store created on the way
