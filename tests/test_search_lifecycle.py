"""Search bookkeeping around ``Tuner.fit`` without starting Ray: which search ``--resume``
picks, which options it keeps, unique search ids, and MLflow runs closed when fit raises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpsearch.errors import ConfigError
from hpsearch.search import tuner as tuner_mod
from hpsearch.search.space import validate_space
from hpsearch.search.tuner import (
    SEARCH_META,
    SearchOptions,
    _new_search_dir,
    _resumable,
    _resume_options,
    _search_id_pattern,
)

from .conftest import TINY_DATA

SPACE = {"name": "lc", "family": "per_level", "dataset": "synthetic",
         "fixed": {"data.params": TINY_DATA, "model.width": 8},
         "search": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1}},
         "budget": {"num_samples": 2, "max_epochs": 1, "max_concurrent": 1}}


def _restorable(d: Path, meta: dict | None) -> Path:
    """A directory Tune's ``can_restore`` accepts (it looks for tuner.pkl)."""
    d.mkdir(parents=True)
    (d / "tuner.pkl").write_bytes(b"")
    if meta is not None:
        (d / SEARCH_META).write_text(json.dumps(meta))
    return d


def test_search_ids_match_their_own_space_only():
    pat = _search_id_pattern("demo")
    assert pat.fullmatch("demo-20261123-031500")
    assert pat.fullmatch("demo-20261123-031500-2")
    assert not pat.fullmatch("demo-x-20261123-031500")
    assert not pat.fullmatch("demo-20261123-031500-x")


def test_new_search_dirs_are_unique_within_one_second(tmp_path):
    a, b = _new_search_dir(tmp_path, "s"), _new_search_dir(tmp_path, "s")
    assert a != b and a.is_dir() and b.is_dir()
    assert _search_id_pattern("s").fullmatch(b.name)


def test_resume_picks_the_newest_unfinished_search_of_this_space(tmp_path):
    import os
    import time

    old = _restorable(tmp_path / "lc-20260101-000000", {"finished": False})
    done = _restorable(tmp_path / "lc-20260102-000000", {"finished": True})
    other = _restorable(tmp_path / "lc-x-20260103-000000", {"finished": False})
    now = time.time()
    for i, d in enumerate((old, done, other)):
        os.utime(d, (now + i, now + i))
    path, meta = _resumable(tmp_path, "lc")
    assert path == old and meta == {"finished": False}
    old.joinpath(SEARCH_META).write_text(json.dumps({"finished": True}))
    with pytest.raises(ConfigError, match="every search named 'lc' .* has finished"):
        _resumable(tmp_path, "lc")
    with pytest.raises(ConfigError, match="no earlier search named 'nope'"):
        _resumable(tmp_path, "nope")


def test_resume_keeps_the_stored_options_and_refuses_conflicting_ones(tmp_path):
    space = validate_space(SPACE)
    meta = {"space_json": space.model_dump_json(), "experiment": "lc",
            "tracking_uri": "sqlite:///x.db", "num_samples": 2, "max_epochs": 1, "seed": 0,
            "data_root": None, "finished": False}
    got = _resume_options(space, SearchOptions(resume=True), meta, "lc-1")
    assert (got.experiment, got.tracking_uri, got.num_samples, got.seed) == (
        "lc", "sqlite:///x.db", 2, 0)
    same = _resume_options(space, SearchOptions(resume=True, num_samples=2), meta, "lc-1")
    assert same.num_samples == 2
    with pytest.raises(ConfigError, match="started with --experiment lc; it cannot continue "
                                          "with --experiment other"):
        _resume_options(space, SearchOptions(resume=True, experiment="other"), meta, "lc-1")
    with pytest.raises(ConfigError, match="--max-epochs"):
        _resume_options(space, SearchOptions(resume=True, max_epochs=5), meta, "lc-1")
    edited = validate_space({**SPACE, "budget": {"num_samples": 3, "max_epochs": 1}})
    with pytest.raises(ConfigError, match="space file changed since lc-1 started"):
        _resume_options(edited, SearchOptions(resume=True), meta, "lc-1")


class _Boom:
    def fit(self):
        raise RuntimeError("searcher exploded")


def test_an_error_out_of_fit_closes_the_parent_run_failed(tmp_path, monkeypatch):
    """Anything escaping ``Tuner.fit`` (a callback, the searcher, the store) ends the parent
    and open trial runs FAILED with the error, instead of leaving them RUNNING."""
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # no cluster needed
    monkeypatch.setattr(tuner_mod, "_new_tuner", lambda *a, **k: _Boom())
    opened = {}

    def fake_search_run(self, search_id, name, tags, params, _orig=tuner_mod.Tracker.search_run):
        rid = _orig(self, search_id, name, tags, params)
        opened["trial"] = self.trial_run(rid, search_id, "t1", name="t1", tags={})[0]
        opened["parent"] = rid
        return rid

    monkeypatch.setattr(tuner_mod.Tracker, "search_run", fake_search_run)
    space = validate_space(SPACE)
    with pytest.raises(RuntimeError, match="searcher exploded"):
        tuner_mod.run_search(space, SearchOptions(results_dir=str(tmp_path / "res"),
                                                  verbose=0))
    t = tuner_mod.search_tracker(f"sqlite:///{tmp_path / 'res' / 'mlflow.db'}", "lc",
                                 tmp_path / "res")
    parent = t.get_run(opened["parent"])
    assert parent.info.status == "FAILED"
    assert "RuntimeError: searcher exploded" in parent.data.tags["hpsearch.error"]
    assert t.get_run(opened["trial"]).info.status == "FAILED"
    # the search dir and its stored options exist, marked unfinished
    (sdir,) = (tmp_path / "res" / "ray").glob("lc-*")
    assert json.loads((sdir / SEARCH_META).read_text())["finished"] is False


def test_preflight_metric_check_knows_the_retrieval_metrics_trials_log():
    """Trials log mahp_250 / hp_at_k / accuracy for every classifier: a search may select by
    them (review finding: the 4-image pre-flight evaluation did not produce them)."""
    from hpsearch.tasks import TrialConfig
    from hpsearch.tasks.runner import check_metrics

    base = {"data.params": TINY_DATA, "model.width": 8}
    for metric in ("val_mahp_250", "val_accuracy", "val_balanced_accuracy", "val_hp_at_10",
                   "val_micro_f1"):
        check_metrics(TrialConfig.from_flat({**base, "metric": metric}))
    with pytest.raises(ConfigError, match="'val_bogus' is not produced"):
        check_metrics(TrialConfig.from_flat({**base, "metric": "val_bogus"}))
