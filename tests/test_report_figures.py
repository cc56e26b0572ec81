"""``write_report``: the Markdown + PNG report of a search, on a small real store.

Tiny trials are trained in this process (``run_trial``, no Ray) and logged as one parent run
and one child run per trial the way ``hpsearch.search.callbacks`` does (tags, params, config,
per-epoch metrics, reports artifact, checkpoint tag); the Optuna study is made with optuna
directly in a temporary SQLite storage and named by the parent's tags.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import optuna
import pytest

from hpsearch.report import asha_rungs, write_report
from hpsearch.tasks import DirectoryReporter, TrialConfig, resolved_params, run_trial
from hpsearch.tasks.checkpoint import REPORTS_DIR
from hpsearch.tracking import CONFIG_ARTIFACT, Tracker
from tests.conftest import label_tree_file

from .conftest import TINY_DATA

OBJECTIVES = [["val_micro_f1", "max"], ["val_macro_f1", "max"]]




def _log_trial(t: Tracker, parent: str, sid: str, i: int, cfg: TrialConfig, out: Path,
               stopped: bool) -> str:
    """Train ``cfg`` into ``out`` and log it as trial ``i`` of search ``sid``."""
    rep = DirectoryReporter(out)
    run_trial(cfg, rep)
    rid, _ = t.trial_run(parent, sid, f"t{i}", name=f"trial_{i}",
                         tags={"family": cfg.model.family, "dataset": cfg.data.name})
    t.log_params(rid, resolved_params(cfg))
    t.log_dict(rid, cfg.model_dump(mode="json"), CONFIG_ARTIFACT)
    for m in rep.history:
        t.log_metrics(rid, m, step=int(m["epoch"]))
    if (out / REPORTS_DIR).is_dir():
        t.log_artifacts(rid, out / REPORTS_DIR, "reports")
    tags = {"epochs_run": len(rep.history), "checkpoint": str(out)}
    if stopped:
        tags.update(stopped_early="true", stopped_by="asha")
    t.set_tags(rid, tags)
    t.end_run(rid, "FINISHED")
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    # a multi-objective classifier search with an Optuna study and ASHA params
    cls = Tracker(uri, "cls", artifact_root=tmp / "artifacts")
    sid = "cls-search"
    db = f"sqlite:///{tmp / 'optuna.db'}"
    parent = cls.search_run(sid, sid, tags={"objectives": json.dumps(OBJECTIVES),
                                            "optuna_storage": db, "optuna_study": sid},
                            params={"scheduler": "asha", "grace_period": 1,
                                    "reduction_factor": 2, "max_epochs": 3})
    study = optuna.create_study(study_name=sid, storage=db, directions=["maximize"] * 2)
    for i, (lr, epochs) in enumerate([(0.05, 3), (0.01, 2), (0.2, 3)]):
        cfg = TrialConfig.from_flat({
            "model.family": "per_level", "model.width": 8, "data.params": TINY_DATA,
            "data.image_size": 16, "optim.batch_size": 32, "optim.lr": lr,
            "optim.epochs": epochs, "metric": "val_micro_f1"})
        rid = _log_trial(cls, parent, sid, i, cfg, tmp / f"cls{i}", stopped=epochs < 3)
        m = cls.best_epoch_metrics(cls.get_run(rid))
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr, "width": 8 + i},
            distributions={"lr": optuna.distributions.FloatDistribution(1e-3, 1, log=True),
                           "width": optuna.distributions.IntDistribution(4, 16)},
            values=[m["val_micro_f1"], m["val_macro_f1"]]))
    cls.end_run(parent, "FINISHED")
    # label embeddings: an older hyperbolic-cone search, then the latest, Euclidean cones;
    # neither has an Optuna study
    emb = Tracker(uri, "emb", artifact_root=tmp / "artifacts")
    tree = label_tree_file(tmp)
    for sid, family, n in (("emb-old", "hyperbolic_cone", 1), ("emb-new", "euclidean_cone", 2)):
        p = emb.search_run(sid, sid, tags={"metric": "val_edge_f1"},
                           params={"scheduler": "fifo", "max_epochs": 3})
        for i in range(n):
            cfg = TrialConfig.from_flat({
                "model.family": family, "optim.batch_size": 32, "optim.lr": 0.05 * (i + 1),
                "optim.epochs": 3, "metric": "val_edge_f1",
                "data.params": {"label_source": "parent_child", "path": str(tree)},
                "model.params": {"dim": 2, "K": 0.1 if family == "hyperbolic_cone" else 1.0}})
            _log_trial(emb, p, sid, i, cfg, tmp / f"{sid}{i}", stopped=False)
        emb.end_run(p, "FINISHED")
    return {"cls": cls, "emb": emb, "tmp": tmp}


def _assert_images(index: Path, names: set[str]) -> str:
    md = index.read_text()
    got = {p.name for p in index.parent.glob("*.png")}
    assert names <= got, f"missing figures: {sorted(names - got)}"
    for name in got:
        assert f"]({name})" in md, f"{name} is not in index.md"
        img = mpimg.imread(index.parent / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200, (name, img.shape)
        assert img[..., :3].std() > 0.02, f"{name} is blank"
    return md


def test_classifier_search_report_has_tables_figures_optuna_and_pareto(store, tmp_path):
    t = store["cls"]
    index = write_report(t, tmp_path / "r", top=2)
    assert index == tmp_path / "r" / "index.md"
    md = _assert_images(index, {"optuna_history.png", "optuna_importances.png",
                                "optuna_parallel.png", "pareto_front.png", "trials.png"})
    pngs = {p.name for p in index.parent.glob("*.png")}
    assert any(n.startswith("per_label_f1_") for n in pngs)
    assert any(n.startswith("curves_") for n in pngs)
    assert not any(n.startswith("embedding_") for n in pngs)  # a classifier has none
    assert "Label embeddings" not in md
    assert "`cls-search`" in md and "the latest search" in md  # names the search it used
    assert "| overall | 14 |" in md  # the thesis table of the best run (2 + 4 + 8 labels)
    assert "ASHA's rungs at epochs 1, 2" in md
    assert asha_rungs(1, 2, 3) == [1, 2] and asha_rungs(2, 3, 20) == [2, 6, 18]
    assert "skipped" not in md
    # the report is logged on the parent run
    parent = t.find_run(search_id="cls-search", role="search")
    files = {f.path for f in t.client.list_artifacts(parent.info.run_id, "report")}
    assert "report/index.md" in files and "report/pareto_front.png" in files


def test_classifier_runs_log_val_test_loss_and_train_f1(store):
    t = store["cls"]
    run = max(t.runs("trial"), key=lambda r: r.data.metrics["best_val_micro_f1"])
    m = run.data.metrics
    for k in ("train_loss", "val_loss", "test_loss", "train_micro_f1", "train_macro_f1"):
        assert k in m and m[k] == m[k], k
    assert 0 <= m["train_micro_f1"] <= 1 and m["val_loss"] > 0
    assert len(t.metric_history(run.info.run_id, "train_micro_f1")) == m["epoch"]


def test_embedding_search_latest_is_euclidean_and_missing_pieces_are_one_line(store, tmp_path):
    t = store["emb"]
    md = _assert_images(write_report(t, tmp_path / "new", log=False), {"trials.png"})
    assert "`emb-new`" in md and "emb-old" not in md
    assert "Euclidean cones" in md and "half-aperture ψ = arcsin(K/‖x‖), K = 1" in md
    assert "Optuna figures: skipped, the search's parent run has no " in md
    assert "Pareto" not in md and "Per-label" not in md  # single objective, no images
    assert any(p.name.startswith("embedding_") for p in (tmp_path / "new").glob("*.png"))
    assert "Traceback" not in md


def test_a_named_search_is_used_and_hyperbolic_cones_go_in_the_poincare_disk(store, tmp_path):
    t = store["emb"]
    md = _assert_images(write_report(t, tmp_path / "old", search_id="emb-old", log=False),
                        set())
    assert "`emb-old` (given;" in md and "Poincaré disk" in md
    assert "K(1−‖x‖²)/‖x‖), K = 0.1" in md


def test_an_unreadable_optuna_storage_and_an_unknown_search_are_one_line(store, tmp_path):
    t = store["cls"]
    parent = t.find_run(search_id="cls-search", role="search")
    t.set_tags(parent.info.run_id, {"optuna_storage": f"sqlite:///{tmp_path}/gone.db"})
    try:
        md = write_report(t, tmp_path / "r", log=False).read_text()
    finally:
        t.set_tags(parent.info.run_id,
                   {"optuna_storage": f"sqlite:///{store['tmp'] / 'optuna.db'}"})
    assert f"- Optuna figures: skipped, its Optuna storage sqlite:///{tmp_path}/gone.db does " \
           "not exist here." in md
    assert not (tmp_path / "gone.db").exists()  # not created by looking
    assert not (tmp_path / "r" / "optuna_history.png").exists()
    with pytest.raises(Exception, match="no search 'nope'.*cls-search"):
        write_report(t, tmp_path / "x", search_id="nope")
