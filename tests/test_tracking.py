"""The tracking layer against real local MLflow stores (no Ray, no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpsearch.search.tuner import search_tracker
from hpsearch.tracking import default_tracking_uri


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
