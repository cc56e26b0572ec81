"""Nothing a user receives can run code when hpsearch reads it (docs/security.md).

A pickle whose ``__reduce__`` calls ``os.system("touch MARKER")`` is planted as a checkpoint's
``best.pt`` / ``checkpoint.pt``, as a CIFAR python batch (in a directory and in a .tar.gz), as a
bundle's ``weights.pt`` / ``program.pt2``, as pretrained backbone weights and as label
embeddings: every read is a one-line typed error and the marker is never created. The normal
paths still work: each task's checkpoint holds only tensors and plain data, loads with
``weights_only=True``, resumes, and a classifier bundle exports and predicts, signed
(HMAC-SHA256 under ``HPSEARCH_BUNDLE_KEY``, running ``program.pt2``) and unsigned (the model
rebuilt from ``config.json`` + ``weights.pt``) alike.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import struct
import tarfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from hpsearch.bundle import (
    KEY_ENV,
    REQUIRE_ENV,
    SIGNATURE_FILE,
    Predictor,
    load_bundle,
    write_bundle,
)
from hpsearch.config import DataConfig, ModelConfig
from hpsearch.data import load_dataset
from hpsearch.data.cifar import CIFAR10_CLASSES, _loads
from hpsearch.errors import ConfigError, DataError, ExportError
from hpsearch.models.backbones import build_backbone
from hpsearch.tasks import DirectoryReporter, experiment_from_checkpoint, run_trial
from hpsearch.tasks.checkpoint import (
    BEST_FILE,
    CHECKPOINT_FILE,
    load_checkpoint,
    plain_state,
    read_state,
)
from hpsearch.tasks.label_embedding import load_embedding_tensor

from .test_task_contract import contract_config

KEY = "k" * 8 + "0123456789abcdef"  # a test key (>= 16 characters)


class Payload:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture()
def marker(tmp_path) -> Path:
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "a planted pickle ran code"


def test_the_payload_runs_under_plain_pickle(tmp_path):
    """The planted files below are live: plain unpickling would run them."""
    m = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(m)))
    assert m.exists()


# ---------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple]:
    """Each task trained 1 epoch of its tiny contract config (tests/test_task_contract.py)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name in ("classifier", "label_embedding", "joint_embedding"):
        d = root / name
        d.mkdir()
        cfg = contract_config(name, d, **{"optim.epochs": 2})
        run_trial(cfg.replace(optim__epochs=1), DirectoryReporter(d / "ck"))
        out[name] = (cfg, d / "ck")
    return out


PLAIN = (str, bytes, int, float, bool, type(None), torch.Tensor)


def _only_plain(x, where="") -> None:
    if isinstance(x, dict):
        assert type(x) in (dict, OrderedDict), where
        for k, v in x.items():
            _only_plain(v, f"{where}[{k!r}]")
    elif isinstance(x, list | tuple):
        assert type(x) in (list, tuple), where
        for i, v in enumerate(x):
            _only_plain(v, f"{where}[{i}]")
    else:
        assert isinstance(x, PLAIN), f"{where}: {type(x)}"


@pytest.mark.parametrize("name", ["classifier", "label_embedding", "joint_embedding"])
def test_every_task_checkpoint_is_plain_data_and_resumes(runs, name, tmp_path):
    cfg, ck = runs[name]
    for f in (CHECKPOINT_FILE, BEST_FILE):
        state = torch.load(ck / f, map_location="cpu", weights_only=True)
        _only_plain(state, f"{name}/{f}")
        assert state["config"] == cfg.replace(optim__epochs=1).model_dump()
    assert load_checkpoint(ck)["epoch"] == 0
    exp = experiment_from_checkpoint(ck)
    assert exp.cfg.model.family == cfg.model.family
    # resume the 1-epoch run to 2 epochs: it reads checkpoint.pt and best.pt back
    work = tmp_path / "ck"
    shutil.copytree(ck, work)
    rep = DirectoryReporter(work)
    run_trial(cfg, rep, resume_from=work)
    assert [m["epoch"] for m in rep.history] == [2.0]
    assert load_checkpoint(work)["epoch"] == 1


def test_plain_state_converts_numpy_scalars_and_refuses_objects():
    sd = torch.nn.Linear(2, 1).state_dict()
    assert plain_state(sd) is sd  # untouched (keeps _metadata)
    out = plain_state({"best": {"value": np.float64(0.5), "epoch": np.int64(3)}, "sd": sd})
    assert type(out["best"]["value"]) is float and type(out["best"]["epoch"]) is int
    assert out["sd"] is sd
    with pytest.raises(TypeError, match=r"checkpoint state\['x'\] is a numpy.ndarray"):
        plain_state({"x": np.zeros(2)})
    with pytest.raises(TypeError, match="is a pathlib"):
        plain_state({"a": [Path("/x")]})


def test_planted_checkpoint_pickles_are_refused_and_never_run(runs, tmp_path, marker):
    cfg, ck = runs["classifier"]
    good = torch.load(ck / BEST_FILE, weights_only=True)
    planted = tmp_path / "planted"
    planted.mkdir()
    # best.pt as torch.save writes it (zip), its experiment state replaced by the payload
    torch.save({**good, "experiment": Payload(marker)}, planted / BEST_FILE)
    for read in (lambda: experiment_from_checkpoint(planted), lambda: read_state(planted),
                 lambda: read_state(planted, what="feature_checkpoint")):
        with pytest.raises(ConfigError, match=r"checkpoint file .*best.pt refused: it needs "
                                              r"posix.system.*re-run the training"):
            read()
    # checkpoint.pt as a raw (non-zip) pickle: the resume path
    with open(planted / CHECKPOINT_FILE, "wb") as f:
        pickle.dump({"experiment": Payload(marker), "epoch": 0}, f)
    with pytest.raises(ConfigError, match=r"checkpoint.pt refused: it holds more than tensors"):
        load_checkpoint(planted)
    with pytest.raises(ConfigError, match=r"checkpoint.pt refused"):
        run_trial(cfg, DirectoryReporter(tmp_path / "out"), resume_from=planted)
    # a checkpoint of the previous format holding a non-tensor object (a numpy scalar):
    # refused with the fix, not unpickled
    old = tmp_path / "old"
    old.mkdir()
    torch.save({**good, "best": {"value": np.float64(0.5)}}, old / BEST_FILE)
    with pytest.raises(ConfigError, match=r"needs numpy._core.multiarray.scalar.*re-run"):
        read_state(old)
    # truncated / not a checkpoint at all
    (old / BEST_FILE).write_bytes((ck / BEST_FILE).read_bytes()[:100])
    with pytest.raises(ConfigError, match=r"best.pt is not a readable checkpoint"):
        read_state(old)
    torch.save({"weights": torch.zeros(1)}, old / BEST_FILE)
    with pytest.raises(ConfigError, match=r"best.pt is not an hpsearch checkpoint"):
        read_state(old)


def test_planted_weight_files_of_models_are_refused(tmp_path, marker):
    f = tmp_path / "w.pt"
    torch.save({"conv1.weight": Payload(marker)}, f)
    m = ModelConfig(backbone="resnet18", pretrained_weights=str(f))
    with pytest.raises(DataError, match=r"model.pretrained_weights: .*w.pt refused"):
        build_backbone(m)
    torch.save(Payload(marker), tmp_path / "label_embeddings.pt")
    with pytest.raises(ConfigError, match=r"init_from: .*label_embeddings.pt refused"):
        load_embedding_tensor(tmp_path)


# ---------------------------------------------------------------------------- CIFAR batches
class _Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the official CIFAR batches (protocol 2, every
    str as a py2 byte string, numpy as ``numpy.core.multiarray._reconstruct``)."""

    dispatch = dict(pickle._Pickler.dispatch)
    NAMES = {id(np._core.multiarray._reconstruct): b"numpy.core.multiarray\n_reconstruct\n",
             id(np.ndarray): b"numpy\nndarray\n", id(np.dtype): b"numpy\ndtype\n"}

    def save_py2_str(self, obj) -> None:
        b = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(b) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(b)) + b)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None) -> None:
        self.write(pickle.GLOBAL + self.NAMES[id(obj)])
        self.memoize(obj)


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _batch(per_class: int, name: str) -> dict:
    y = np.repeat(np.arange(10), per_class)
    x = np.repeat((y * 20 + 5).astype(np.uint8)[:, None], 3072, axis=1)
    return {b"batch_label": f"{name} of 6", b"labels": y.tolist(), b"data": x,
            b"filenames": [f"img_{i}.png" for i in range(len(y))]}


FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def test_cifar_batches_in_the_real_format_load_and_planted_ones_are_refused(tmp_path, marker):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for f in FILES:
        (d / f).write_bytes(py2_pickle(_batch(2, f)))
    assert (d / FILES[0]).read_bytes()[:2] == b"\x80\x02"
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in (d / FILES[0]).read_bytes()
    cfg = DataConfig(name="cifar10", root=str(tmp_path), image_size=8,
                     params={"cache_dir": str(tmp_path / "c")})
    ds = load_dataset(cfg)
    assert [len(ds.train), len(ds.val), len(ds.test)] == [100, 10, 10]
    h = ds.hierarchy
    for img, lab in zip(ds.train.images, ds.train.level_labels, strict=True):
        assert img[0, 0, 0] == CIFAR10_CLASSES.index(h.names[h.offsets[2] + int(lab[2])]) * 20 + 5
    # Python 3 re-pickles of a batch (numpy 2 names, _codecs for protocol-2 bytes, protocol
    # 5's _frombuffer) read too
    for proto in (2, 4, 5):
        got = _loads(pickle.dumps(_batch(1, "x"), protocol=proto), "p")
        assert got[b"data"].dtype == np.uint8 and got[b"labels"] == list(range(10))
    # planted: the payload beside real keys, in a directory ...
    evil = {**_batch(2, "x"), b"labels": Payload(marker)}
    (d / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=2))
    cfg2 = cfg.model_copy(update={"params": {"cache_dir": str(tmp_path / "c2")}})
    with pytest.raises(DataError, match=r"data_batch_3: refused to unpickle posix.system"):
        load_dataset(cfg2)
    # ... in a .tar.gz
    arc = tmp_path / "cifar.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        for f in FILES:
            tf.add(d / f, f"cifar-10-batches-py/{f}")
    cfg3 = DataConfig(name="cifar10", image_size=8, params={
        "archive": str(arc), "cache_dir": str(tmp_path / "c3")})
    with pytest.raises(DataError, match=r"cifar.tar.gz:data_batch_3: refused to unpickle posix"):
        load_dataset(cfg3)
    # other globals, object arrays, and a non-batch pickle are refused too
    for bad, msg in ((pickle.dumps({b"data": np.array([1, "x"], dtype=object)}),
                      "cannot unpickle"),
                     (pickle.dumps({b"x": OrderedDict()}), "refused to unpickle "
                                                           "collections.OrderedDict"),
                     (pickle.dumps([1, 2]), "not a CIFAR python batch")):
        with pytest.raises(DataError, match=msg):
            _loads(bad, "bad")


# ---------------------------------------------------------------------------- bundles
def _resum(b: Path) -> None:
    """Rewrite SHA256SUMS for the bundle's current files: what anyone can do (unkeyed)."""
    names = sorted(p.name for p in b.iterdir()
                   if p.is_file() and p.name not in ("SHA256SUMS", SIGNATURE_FILE))
    (b / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256((b / n).read_bytes()).hexdigest()}  {n}\n" for n in names))


@pytest.fixture(scope="module")
def bundles(runs, tmp_path_factory) -> tuple[Path, Path]:
    """(unsigned, signed) bundles of the classifier run."""
    root = tmp_path_factory.mktemp("bundles")
    exp = experiment_from_checkpoint(runs["classifier"][1])
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(KEY_ENV, raising=False)
        mp.delenv(REQUIRE_ENV, raising=False)
        plain = write_bundle(exp, root / "plain", {"run_id": "x"})
        mp.setenv(KEY_ENV, KEY)
        signed = write_bundle(exp, root / "signed", {"run_id": "x"})
    return plain, signed


def _images(tmp: Path) -> list[Path]:
    from torchvision.io import write_png

    out = []
    for i in range(3):
        f = tmp / f"{i}.png"
        write_png(torch.from_numpy(np.random.default_rng(i).integers(
            0, 255, (3, 16, 16), dtype=np.uint8)), str(f))
        out.append(f)
    return out


def test_signed_bundles_run_the_program_unsigned_ones_the_weights(bundles, tmp_path,
                                                                  monkeypatch):
    plain, signed = bundles
    assert not (plain / SIGNATURE_FILE).exists()
    assert (signed / SIGNATURE_FILE).read_text().startswith("hmac-sha256 ")
    calls = []
    real = torch.export.load
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.delenv(KEY_ENV, raising=False)
    imgs = _images(tmp_path)
    for b in (plain, signed):  # no key: neither is authenticated, program.pt2 never loaded
        p = Predictor(load_bundle(b))
        assert p.source == "weights" and not load_bundle(b).signed
    by_weights = p.predict_files(imgs)
    assert calls == []
    monkeypatch.setenv(KEY_ENV, KEY)
    sb = load_bundle(signed)
    assert sb.signed
    p = Predictor(sb)
    assert p.source == "program" and len(calls) == 1
    by_program = p.predict_files(imgs)
    assert [[s["label"] for s in r["path"]] for r in by_program] == \
        [[s["label"] for s in r["path"]] for r in by_weights]
    for a, b in zip(by_program, by_weights, strict=True):
        assert np.allclose([s["prob"] for s in a["path"]], [s["prob"] for s in b["path"]],
                           atol=1e-5)


def test_signature_ux(bundles, tmp_path, monkeypatch, capsys):
    plain, signed = bundles
    monkeypatch.setenv(KEY_ENV, KEY)
    with pytest.raises(ExportError, match=rf"{plain} is not signed but {KEY_ENV} is set"):
        load_bundle(plain)
    monkeypatch.setenv(KEY_ENV, KEY + "x")
    with pytest.raises(ExportError, match=r"SIGNATURE does not match.*another key"):
        load_bundle(signed)
    odd = Path(shutil.copytree(signed, tmp_path / "odd"))
    (odd / SIGNATURE_FILE).write_text("hmac-sha256 \u00e9t\u00e9\n")  # not even hex
    monkeypatch.setenv(KEY_ENV, KEY)
    with pytest.raises(ExportError, match=r"SIGNATURE does not match"):
        load_bundle(odd)
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(ExportError, match=rf"{KEY_ENV} has 5 characters; use at least 16"):
        load_bundle(signed)
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(ExportError, match=rf"{REQUIRE_ENV}=1 but {KEY_ENV} is not set"):
        load_bundle(signed)
    with pytest.raises(ExportError, match=rf"{REQUIRE_ENV}=1 but {KEY_ENV} is not set"):
        write_bundle(None, tmp_path / "never")  # refused before any work
    assert not (tmp_path / "never").exists()
    monkeypatch.setenv(REQUIRE_ENV, "maybe")
    with pytest.raises(ExportError, match=rf"{REQUIRE_ENV}='maybe': set it to 1"):
        load_bundle(signed)
    monkeypatch.setenv(REQUIRE_ENV, "1")
    monkeypatch.setenv(KEY_ENV, KEY)
    assert load_bundle(signed).signed
    # the CLI: one line, exit 2
    from hpsearch.cli import main

    capsys.readouterr()
    assert main(["predict", str(plain), "x.png"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is not signed" in err, err


def test_planted_bundle_files_are_refused_and_never_run(bundles, tmp_path, monkeypatch,
                                                        marker):
    plain, signed = bundles
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    evil = torch.save  # a zip like torch.save writes, holding the payload
    # weights.pt planted, sums rewritten (unkeyed sums cannot tell): refused, not run
    w = Path(shutil.copytree(plain, tmp_path / "w"))
    evil({"head.weight": Payload(marker)}, w / "weights.pt")
    _resum(w)
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ExportError, match=r"weights.pt refused: it holds more than tensors"):
        Predictor(load_bundle(w))
    # program.pt2 planted in an unsigned bundle: never loaded (the weights predict)
    pr = Path(shutil.copytree(plain, tmp_path / "pr"))
    evil(Payload(marker), pr / "program.pt2")
    _resum(pr)
    assert Predictor(load_bundle(pr)).source == "weights"
    # the same in a signed bundle, with the key set: the signature no longer matches and
    # nothing of the bundle is read
    sp = Path(shutil.copytree(signed, tmp_path / "sp"))
    evil(Payload(marker), sp / "program.pt2")
    _resum(sp)
    monkeypatch.setenv(KEY_ENV, KEY)
    with pytest.raises(ExportError, match=r"SIGNATURE does not match"):
        load_bundle(sp)
    # the signature left out: refused as unsigned
    (sp / SIGNATURE_FILE).unlink()
    with pytest.raises(ExportError, match=r"is not signed"):
        load_bundle(sp)
