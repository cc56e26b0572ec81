"""Export bundles without Ray or MLflow: written from a trained experiment, verified on load
(every file covered by SHA256SUMS), predicting consistent label paths."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hpsearch.bundle import Predictor, load_bundle, write_bundle
from hpsearch.errors import ExportError
from hpsearch.tasks import DirectoryReporter, experiment_from_checkpoint, run_trial
from hpsearch.tasks.config import TrialConfig

from .conftest import TINY_DATA


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bundle")
    cfg = TrialConfig.from_flat({"data.params": TINY_DATA, "model.width": 8,
                                 "optim.epochs": 1, "optim.batch_size": 32})
    run_trial(cfg, DirectoryReporter(tmp / "ck"))
    return write_bundle(experiment_from_checkpoint(tmp / "ck"), tmp / "b", {"run_id": "x"})


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_bundle_loads_and_predicts_label_paths_in_batches(bundle_dir, tmp_path):
    from torchvision.io import write_png

    b = load_bundle(bundle_dir)
    assert b.manifest["task"] == "classifier" and b.manifest["run_id"] == "x"
    paths = []
    for i in range(5):
        f = tmp_path / f"{i}.png"
        write_png(torch.from_numpy(np.random.default_rng(i).integers(
            0, 255, (3, 24 + i, 20, ), dtype=np.uint8)), str(f))
        paths.append(f)
    pred = Predictor(b)
    whole = pred.predict_files(paths)
    assert [o["image"] for o in whole] == [str(f) for f in paths]
    assert all(len(o["path"]) == 3 for o in whole)
    assert pred.predict_files(paths, batch_size=2) == whole  # batching changes nothing
    hedged = pred.predict_files(paths, hedge=1.0)
    assert all(len(o["path"]) <= 3 for o in hedged)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ExportError, match="--hedge is a probability threshold"):
            pred.predict_files(paths, hedge=bad)


def test_tampered_bundles_are_refused(bundle_dir, tmp_path):
    # an edited file
    b = _copy(bundle_dir, tmp_path / "edited")
    (b / "weights.pt").write_bytes((b / "weights.pt").read_bytes() + b"x")
    with pytest.raises(ExportError, match="checksum mismatch for .*weights.pt"):
        load_bundle(b)
    # ... whose line was deleted from SHA256SUMS
    sums = (b / "SHA256SUMS").read_text().splitlines()
    (b / "SHA256SUMS").write_text("\n".join(x for x in sums if not x.endswith("weights.pt")))
    with pytest.raises(ExportError, match="weights.pt not covered by SHA256SUMS"):
        load_bundle(b)
    # an emptied SHA256SUMS checks nothing: refused too
    (b / "SHA256SUMS").write_text("")
    with pytest.raises(ExportError, match="not covered by SHA256SUMS"):
        load_bundle(b)
    # a garbage line is a one-line error; blank lines are fine
    g = _copy(bundle_dir, tmp_path / "garbage")
    (g / "SHA256SUMS").write_text((g / "SHA256SUMS").read_text() + "\nnot-a-digest\n")
    with pytest.raises(ExportError, match="line .* is malformed"):
        load_bundle(g)
    ok = _copy(bundle_dir, tmp_path / "blank")
    (ok / "SHA256SUMS").write_text("\n" + (ok / "SHA256SUMS").read_text() + "\n\n")
    load_bundle(ok)
    # a bundle of another format version (checksums updated consistently)
    v = _copy(bundle_dir, tmp_path / "v2")
    m = json.loads((v / "manifest.json").read_text())
    m["format_version"] = 99
    (v / "manifest.json").write_text(json.dumps(m))
    (v / "SHA256SUMS").write_text("\n".join(
        f"{_sha(v / line.split()[1])}  {line.split()[1]}"
        for line in (v / "SHA256SUMS").read_text().splitlines() if line.strip()) + "\n")
    with pytest.raises(ExportError, match="format_version 99; this hpsearch reads version 1"):
        load_bundle(v)


def test_unwritable_places_are_one_line_errors(bundle_dir, tmp_path, monkeypatch):
    from hpsearch.data.cache import cached_image_array
    from hpsearch.errors import DataError

    f = tmp_path / "a-file"
    f.write_text("x")
    exp = None  # write_bundle refuses before touching the experiment
    with pytest.raises(ExportError, match="cannot create the bundle directory"):
        write_bundle(exp, f / "sub")
    with pytest.raises(DataError, match="cannot write the image cache at .*cache_dir"):
        cached_image_array(["k"], np.zeros((1, 4, 4, 3), np.uint8), None, cache=f / "c")
