"""A registered bundle is a real MLflow model: ``models:/NAME/1`` loads with
``mlflow.pyfunc.load_model`` and serves with ``mlflow models serve``, predicting what the
bundle's own predictor does; label tables serve is-a energies. Also the provenance writes
(``log_artifact``, ``log_dataset``) and their replay after an outage (no Ray, no server)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hpsearch import tracking
from hpsearch.bundle import Predictor, load_bundle, write_bundle
from hpsearch.errors import ExportError
from hpsearch.tasks import DirectoryReporter, experiment_from_checkpoint, run_trial
from hpsearch.tasks.config import TrialConfig
from hpsearch.tracking import Tracker, default_tracking_uri, replay_spool
from tests.conftest import label_tree_file

from .conftest import TINY_DATA

NAME = "tiny-per-level"


def _tracker(root: Path, experiment: str = "exp") -> Tracker:
    root.mkdir(parents=True, exist_ok=True)
    return Tracker(default_tracking_uri(root), experiment, artifact_root=root / "artifacts")


def _run(t: Tracker) -> str:
    parent = t.search_run("s-1", "s-1", tags={}, params={})
    rid, _ = t.trial_run(parent, "s-1", "t-1", name="t-1", tags={})
    return rid


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """(tracker, run id, bundle dir) of a tiny per-level classifier registered as NAME v1."""
    tmp = tmp_path_factory.mktemp("model")
    cfg = TrialConfig.from_flat({"data.params": TINY_DATA, "model.width": 8,
                                 "data.image_size": 16, "optim.epochs": 1,
                                 "optim.batch_size": 32})
    run_trial(cfg, DirectoryReporter(tmp / "ck"))
    bundle = write_bundle(experiment_from_checkpoint(tmp / "ck"), tmp / "b", {"run_id": "x"})
    t = _tracker(tmp / "results")
    rid = _run(t)
    assert t.register_bundle(rid, bundle, NAME) == "1"
    return t, rid, bundle


def _pngs(tmp: Path, n: int = 6) -> list[Path]:
    from torchvision.io import write_png

    out = []
    for i in range(n):
        f = tmp / f"{i}.png"
        write_png(torch.from_numpy(np.random.default_rng(i).integers(
            0, 255, (3, 16 + 3 * i, 20), dtype=np.uint8)), str(f))
        out.append(f)
    return out


def _as_paths(frame: pd.DataFrame, levels: list[str]) -> list[list[tuple[str, float]]]:
    """The model's rows as label paths [(label, prob)], cut at ``depth``."""
    return [[(r[lvl], round(float(r[f"{lvl}_prob"]), 6)) for lvl in levels[:int(r["depth"])]]
            for r in frame.to_dict("records")]


def _expected(bundle: Path, files: list[Path], hedge: float | None):
    return [[(s["label"], s["prob"]) for s in p["path"]]
            for p in Predictor(load_bundle(bundle)).predict_files(files, hedge=hedge)]


def test_registered_version_loads_as_pyfunc_with_signature_and_hedge(registered, tmp_path):
    import mlflow

    t, rid, bundle = registered
    files = _pngs(tmp_path)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    levels = list(load_bundle(bundle).hierarchy.level_names)
    frame = pd.DataFrame({"image": [f.read_bytes() for f in files]})
    full = model.predict(frame)
    assert list(full.columns) == [c for lvl in levels for c in (lvl, f"{lvl}_prob")] + ["depth"]
    assert _as_paths(full, levels) == _expected(bundle, files, None)
    assert (full["depth"] == 3).all()
    # the hedge param: as the bundle's hedging; a high threshold shortens some paths
    hedged = model.predict(frame, params={"hedge": 0.6})
    assert _as_paths(hedged, levels) == _expected(bundle, files, 0.6)
    assert (hedged["depth"] < 3).any()
    with pytest.raises(ExportError, match="--hedge is a probability threshold"):
        model.predict(frame, params={"hedge": 1.5})
    # the version: its source is the run's MLmodel directory, with signature and params
    mv = t.client.get_model_version(NAME, "1")
    assert mv.run_id == rid and mv.source.endswith("/model")
    info = mlflow.models.get_model_info(f"models:/{NAME}/1")
    sig = info.signature
    assert sig is not None and sig.inputs.input_names() == ["image"]
    assert sig.inputs.to_dict()[0]["type"] == "binary"
    assert [(p.name, p.default) for p in sig.params] == [("hedge", 0.0)]
    assert info.saved_input_example_info is not None
    # the plain bundle/ artifact is still there (export and tests read it)
    arts = {a.path for a in t.client.list_artifacts(rid)}
    assert {"bundle", "model"} <= arts
    # a corrupted bundle inside the model is refused at load (its checksums travel with it)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(
        tmp_path / "dl")))
    w = local / "artifacts" / "bundle" / "weights.pt"
    w.write_bytes(w.read_bytes() + b"x")
    with pytest.raises(ExportError, match="checksum mismatch"):
        mlflow.pyfunc.load_model(str(local))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(registered, tmp_path):
    t, _, bundle = registered
    files = _pngs(tmp_path, 3)
    port = _free_port()
    log = tmp_path / "serve.log"
    # the serving command runs `uvicorn` from PATH: this environment's, as when it is active
    env = {**os.environ, "MLFLOW_TRACKING_URI": t.uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}/1",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "-w", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.skip(f"mlflow models serve exited {proc.returncode} before answering: "
                            f"{log.read_text()[-400:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, f"no /ping in 120 s: {log.read_text()[-800:]}"
            time.sleep(0.5)
        images = [base64.b64encode(f.read_bytes()).decode() for f in files]
        levels = list(load_bundle(bundle).hierarchy.level_names)
        for hedge in (None, 0.6):
            body = {"dataframe_split": {"columns": ["image"], "data": [[b] for b in images]}}
            if hedge is not None:
                body["params"] = {"hedge": hedge}
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                got = pd.DataFrame(json.loads(r.read())["predictions"])
            assert _as_paths(got, levels) == _expected(bundle, files, hedge)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """The server's whole process group (uvicorn and its worker): TERM, then KILL the rest."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left
    except ProcessLookupError:
        pass
    proc.wait()




def test_label_embedding_model_serves_is_a_energies(tmp_path):
    import mlflow

    cfg = TrialConfig.from_flat({
        "model.family": "euclidean_cone", "optim.epochs": 2, "optim.batch_size": 32,
        "optim.lr": 0.05, "metric": "val_edge_f1", "model.params": {"dim": 4},
        "data.params": {"label_source": "parent_child", "path": str(label_tree_file(tmp_path))}})
    run_trial(cfg, DirectoryReporter(tmp_path / "ck"))
    exp = experiment_from_checkpoint(tmp_path / "ck")
    bundle = write_bundle(exp, tmp_path / "b", {"run_id": "y"})
    t = _tracker(tmp_path / "results")
    rid = _run(t)
    assert t.register_bundle(rid, bundle, "tiny-cones") == "1"
    model = mlflow.pyfunc.load_model("models:/tiny-cones/1")
    names = list(exp.nodes)
    table = exp.embeddings()
    frame = pd.DataFrame({"child": ["r0_00", "r1_01", "r0_00_10"],
                          "parent": ["r0", "r0", None]})
    out = model.predict(frame, params={"top_k": 3})
    threshold = load_bundle(bundle).manifest["threshold"]
    for row in out.to_dict("records")[:2]:
        e = float(exp.model.energy(table[names.index(row["parent"])],
                                   table[names.index(row["child"])]))
        assert row["energy"] == pytest.approx(e, rel=1e-5)
        assert row["is_a"] == (e <= threshold)
    last = out.to_dict("records")[2]
    assert pd.isna(last["energy"]) and pd.isna(last["parent"]) and pd.isna(last["is_a"])
    assert len(last["ancestors"]) == 3 and "r0_00_10" not in last["ancestors"]
    energies = list(last["ancestor_energies"])
    assert energies == sorted(energies)
    with pytest.raises(ExportError, match="unknown label 'nope'"):
        model.predict(pd.DataFrame({"child": ["nope"]}))
    sig = mlflow.models.get_model_info("models:/tiny-cones/1").signature
    assert sig.inputs.input_names() == ["child", "parent"]
    assert [(p.name, p.default) for p in sig.params] == [("top_k", 5)]


def test_log_artifact_and_dataset_survive_an_outage_and_replay(tmp_path, monkeypatch):
    """Both writes go through the channel: while the server is 'unreachable' (the channel is
    made remote and every send refused) they queue, spool to a file with a copy of the
    artifact, and replay_spool sends them; replaying twice leaves one dataset input."""
    import requests

    t = _tracker(tmp_path / "results")
    rid = _run(t)
    f = tmp_path / "manifest.json"
    f.write_text('{"a": 1}')
    # straight through while the store answers
    t.log_artifact(rid, f, "provenance")
    t.log_dataset(rid, "synthetic", "d1g3st", str(tmp_path / "data"), {"train": 10})
    ch = t._ch
    monkeypatch.setattr(ch, "remote", True)

    def refuse(op, dedupe=False, cache=None):
        raise requests.ConnectionError("Connection refused")

    monkeypatch.setattr(ch, "_apply", refuse)
    g = tmp_path / "later.txt"
    g.write_text("later")
    t.log_artifact(rid, g)
    t.log_dataset(rid, "synthetic-test", "e2", "s3://bucket/data", {"test": 5},
                  context="evaluation")
    assert t.buffered()["writes"] == 2
    g.unlink()  # the queue holds its own copy
    spool = t.close(tmp_path / "spool", wait=False)
    assert spool is not None and spool.is_file()
    monkeypatch.undo()
    for _ in range(2):
        done = replay_spool(spool)
        assert done["writes"] == 2 and done["refused"] == 0
    arts = {a.path for a in t.client.list_artifacts(rid)}
    assert {"later.txt", "provenance"} <= arts
    got = t.download(rid, "later.txt", tmp_path / "dl")
    assert got.read_text() == "later"
    inputs = t.get_run(rid).inputs.dataset_inputs
    by_name = {i.dataset.name: i for i in inputs}
    assert sorted(by_name) == ["synthetic", "synthetic-test"] and len(inputs) == 2
    ctx = {i.dataset.name: {tg.key: tg.value for tg in i.tags} for i in inputs}
    assert ctx["synthetic"][tracking.DATASET_CONTEXT_TAG] == "training"
    assert ctx["synthetic-test"][tracking.DATASET_CONTEXT_TAG] == "evaluation"
    ds = by_name["synthetic-test"].dataset
    assert ds.digest == "e2" and json.loads(ds.source) == {"uri": "s3://bucket/data"}
    assert json.loads(ds.profile) == {"test": 5}
    with pytest.raises(tracking.TrackingError, match="is not a file"):
        t.log_artifact(rid, tmp_path)
