"""Hierarchical CIFAR-10 (thesis §2.3.1) and CIFAR-100 with a label-hierarchy file.

Inputs, first match wins (``data.root`` = R):

- ``data.params.archive``: a ``.tar.gz`` holding either the image-folder layout
  (``[prefix/]train|test/<class>/*.jpg``) or the python pickles; read once, straight into the
  decoded-image cache (no files are extracted).
- pickles: ``R/cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``) or
  ``R/cifar-100-python/`` (``train``, ``test``, ``meta``), or R itself holding them
  (torchvision's layout).
- image folders: ``R/train/<class>/*`` and ``R/test/<class>/*`` (CIFAR-10 only).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpsearch.config import DataConfig
from hpsearch.data._io import (
    check_params,
    contiguous_splits,
    files_stamp,
    fingerprint,
    leaf_level_labels,
    require_file,
    shared_path,
    split_counts,
)
from hpsearch.data.base import DATASETS, HierDataset, ImageSplit
from hpsearch.data.cache import Encoded, cache_key, cache_root, cached_image_array
from hpsearch.data.labels import register_dataset_hierarchy
from hpsearch.errors import ConfigError, DataError
from hpsearch.hierarchy import Hierarchy

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
#: Thesis §2.3.1: root "entity" (not a level) -> living / non-living -> 4 groups -> 10 classes.
CIFAR10_PATHS = (
    ("living", "mammal", "cat"), ("living", "mammal", "deer"), ("living", "mammal", "dog"),
    ("living", "mammal", "horse"), ("living", "non-mammal", "bird"),
    ("living", "non-mammal", "frog"), ("non-living", "vehicle", "automobile"),
    ("non-living", "vehicle", "truck"), ("non-living", "craft", "airplane"),
    ("non-living", "craft", "ship"),
)
CIFAR10_LEVELS = ("domain", "group", "class")
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def is_image_name(name: str) -> bool:
    """An image by its extension, not macOS' AppleDouble metadata (``._x.jpg``)."""
    base = Path(name).name
    return Path(base).suffix.lower() in IMAGE_EXTS and not base.startswith("._")


def is_hidden(path: Path) -> bool:
    """``.ipynb_checkpoints``, ``.git``, ... : never a class folder."""
    return path.name.startswith(".")

COMMON: dict[str, Any] = {
    "archive": None,  # .tar.gz with pickles or train|test/<class>/ images
    "splits": "pooled",  # pooled: 80/10/10 per class of train+test; standard: official test
    "split_seed": 0,
    "limit_per_class": None,  # keep at most this many images per class (quick runs)
    "train_per_class": None,  # after the split: at most this many TRAIN images per class
    "normalization": "dataset",  # dataset | imagenet (mean/std handed to the model)
    "cache_dir": None,
    "workers": None,
}
CIFAR100_EXTRA: dict[str, Any] = {
    "hierarchy_file": None,  # parent-child file; default: the 20 superclasses -> 100 classes
    "child_parent": False,
    "class_names_file": None,  # "id name" per line, renames hierarchy nodes
    "leveling": "strict",  # strict | pad  (see _io.leaf_level_labels)
}


# ---------------------------------------------------------------------------- raw sources
@dataclass
class _Raw:
    """The pooled images of the official train (origin 0) and test (origin 1) sets."""

    labels: np.ndarray  # [N] class index
    origin: np.ndarray  # [N] 0 train, 1 test
    ids: list[str]
    key: list  # fingerprint of the inputs
    loader: Callable[[np.ndarray], np.ndarray | list]  # row selection -> arrays or items
    extra: dict  # e.g. coarse labels / class names of CIFAR-100
    # row selection -> digest of the source files (image folders; see cached_image_array)
    stamp: Callable[[np.ndarray], str | None] | None = None


# ---------------------------------------------------------------------------- safe unpickling
# A CIFAR python batch is a pickled dict of bytes keys -> bytes, lists of ints / bytes and one
# uint8 numpy array; real files (Python 2 cPickle, protocol 2) name exactly these globals.
# Re-pickled copies (Python 3, numpy 2) also name numpy._core and, for protocol 2 bytes,
# _codecs.encode; protocol 5 pickles arrays through _frombuffer. Nothing else is resolved: a
# batch that names os.system (or any other global) is a DataError, and nothing in it is run.
class _NdarrayType:
    """What ``numpy.ndarray`` resolves to in a batch: only :func:`_reconstruct` accepts it (a
    pickle cannot call numpy.ndarray itself)."""


_NDARRAY = _NdarrayType()


def _array_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    dt = np.dtype(spec, bool(align), bool(copy))
    if dt.hasobject:
        raise pickle.UnpicklingError(f"object dtype {dt}")
    return dt


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("_reconstruct of something other than numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, shape, _array_dtype(dtype))


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    return np.frombuffer(buf, dtype=_array_dtype(dtype)).reshape(shape, order=order)


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode other than latin1 text")
    return text.encode("latin1")


_BATCH_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _array_dtype,
    ("_codecs", "encode"): _latin1,
}


class _Refused(Exception):
    pass


class _BatchUnpickler(pickle.Unpickler):
    """Resolves only :data:`_BATCH_GLOBALS`; never imports a module."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _BATCH_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("a persistent id")


def _plain_batch(obj: Any, depth: int = 0) -> bool:
    """Only dicts, lists, tuples, bytes, str, numbers and non-object numpy arrays."""
    if isinstance(obj, bytes | str | int | float | type(None)):
        return True
    if isinstance(obj, np.ndarray):
        return type(obj) is np.ndarray and not obj.dtype.hasobject
    if depth > 4:
        return False
    if type(obj) is dict:
        return all(_plain_batch(k, depth + 1) and _plain_batch(v, depth + 1)
                   for k, v in obj.items())
    if type(obj) in (list, tuple):
        return all(_plain_batch(v, depth + 1) for v in obj)
    return False


def _load_batch(f: Any, where: str) -> dict:
    """A CIFAR python batch from the open binary file ``f`` (see :data:`_BATCH_GLOBALS`)."""
    try:
        d = _BatchUnpickler(f, encoding="bytes").load()
    except _Refused as r:
        raise DataError(f"{where}: refused to unpickle {r}: a CIFAR python batch holds only "
                        "dicts, lists, bytes and numpy arrays (nothing in it was run); replace "
                        "it with the file from the official CIFAR python archive") from None
    except Exception as err:
        raise DataError(f"{where}: cannot unpickle ({type(err).__name__}); expected a CIFAR "
                        "python batch (dict with b'data', b'labels')") from None
    if type(d) is not dict or not _plain_batch(d):
        raise DataError(f"{where}: not a CIFAR python batch (a dict of bytes keys to lists "
                        "and numpy arrays); replace it with the file from the official CIFAR "
                        "python archive")
    return d


def _unpickle(path: Path) -> dict:
    require_file(path, "a CIFAR python pickle batch")
    with open(path, "rb") as f:
        return _load_batch(f, str(path))


def _batch_arrays(d: dict, path: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[label_key], dtype=np.int64)
    except KeyError as err:
        raise DataError(f"{path}: missing key {err.args[0]!r}; expected a CIFAR batch with "
                        f"b'data' and {label_key!r}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(f"{path}: data has shape {data.shape} for {len(labels)} labels; expected "
                        "[N, 3072] (3x32x32, channel-major)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _pickle_dir(root: Path, sub: str, first: str) -> Path | None:
    for d in (root / sub, root):
        if (d / first).is_file():
            return d
    return None


def _raw_pickles10(d: Path, batches: dict[str, bytes] | None = None, name: str = "") -> _Raw:
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    parts = []
    for f in files:
        if batches is None:
            raw = _unpickle(d / f)
            where = str(d / f)
        else:
            if f not in batches:
                raise DataError(f"{name}: member cifar-10-batches-py/{f} not found; expected "
                                "the CIFAR-10 python archive layout")
            raw = _loads(batches[f], f"{name}:{f}")
            where = f"{name}:{f}"
        parts.append(_batch_arrays(raw, where, b"labels"))
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    origin = np.repeat([0, 1], [sum(len(p[1]) for p in parts[:5]), len(parts[5][1])])
    key = [fingerprint(d / f) for f in files] if batches is None else [name]
    return _Raw(y, origin, [f"{i}" for i in range(len(y))], key,
                lambda idx: x[idx], {})


def _loads(data: bytes, where: str) -> dict:
    return _load_batch(io.BytesIO(data), where)


def _raw_folder(root: Path, classes: tuple[str, ...]) -> _Raw:
    labels, origin, items = [], [], []
    for o, split in enumerate(("train", "test")):
        sd = root / split
        if not sd.is_dir():
            raise DataError(f"{sd}: directory not found; expected {split}/<class>/*.jpg")
        for cdir in sorted(p for p in sd.iterdir() if p.is_dir() and not is_hidden(p)):
            if cdir.name not in classes:
                raise DataError(f"{cdir}: unknown class folder; expected one of "
                                f"{', '.join(classes)}")
            files = sorted(p for p in cdir.iterdir() if is_image_name(p.name))
            items += files
            labels += [classes.index(cdir.name)] * len(files)
            origin += [o] * len(files)
    if not items:
        raise DataError(f"{root}: no images under train/<class>/ and test/<class>/")
    ids = [str(p.relative_to(root)) for p in items]
    key = [str(root.resolve()), [fingerprint(root / s) for s in ("train", "test")]]
    return _Raw(np.asarray(labels), np.asarray(origin), ids, key,
                lambda idx: [items[i] for i in idx], {},
                stamp=lambda idx: files_stamp(items[i] for i in idx))


_ARCHIVE_BYTES: dict[str, dict[str, bytes]] = {}  # members of the archive read last


def _archive_read(path: Path, wanted: set[str] | None) -> dict[str, bytes]:
    """One streaming pass: bytes of the ``wanted`` file members (all when ``None``)."""
    held = _ARCHIVE_BYTES.get(str(path))
    if held is not None and wanted is not None and wanted <= held.keys():
        return {w: held[w] for w in wanted}
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r|*") as tf:
            for m in tf:
                if m.isfile() and (wanted is None or m.name in wanted):
                    fh = tf.extractfile(m)
                    out[m.name] = fh.read() if fh else b""
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read archive ({err}); expected a .tar.gz") from None
    return out


def _archive_names(path: Path, cache: Path) -> list[str]:
    """File members of an archive; listed once per archive version in a cache manifest.

    Listing a .tar.gz costs a full decompression, so the first listing also keeps the member
    bytes in memory for the decode that normally follows (released by :func:`_release`).
    """
    manifest = cache / f"archive-{cache_key(fingerprint(path))}.json"
    if manifest.is_file():
        return json.loads(manifest.read_text())
    data = _archive_read(path, None)
    _ARCHIVE_BYTES.clear()
    _ARCHIVE_BYTES[str(path)] = data
    names = list(data)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(names))
    os.replace(tmp, manifest)
    return names


def _release() -> None:
    _ARCHIVE_BYTES.clear()


_MEMBER = re.compile(r"^(?:.*/)?(train|test)/([^/]+)/([^/]+)$")


def _raw_archive(path: Path, classes: tuple[str, ...], pickle_dir: str, first: str,
                 pickle_reader: Callable[..., _Raw], cache: Path) -> _Raw:
    require_file(path, "a .tar.gz archive of CIFAR images or pickles")
    names = _archive_names(path, cache)
    pick = [n for n in names if n.endswith(f"{pickle_dir}/{first}")]
    if pick:
        base = pick[0][: -len(first)]
        members = {n[len(base):]: n for n in names if n.startswith(base)}
        data = _archive_read(path, set(members.values()))
        raw = pickle_reader(None, {k: data[v] for k, v in members.items()}, str(path))
        raw.key = fingerprint(path)
        _release()
        return raw
    rows = []
    for n in names:
        m = _MEMBER.match(n)
        if m and is_image_name(m.group(3)):
            if m.group(2) not in classes:
                raise DataError(f"{path}: member {n} has unknown class {m.group(2)!r}; "
                                f"expected one of {', '.join(classes)}")
            rows.append((m.group(1) == "test", classes.index(m.group(2)), n))
    if not rows:
        raise DataError(f"{path}: no {pickle_dir}/{first} and no train|test/<class>/<image> "
                        "members; expected a CIFAR archive")
    rows.sort()
    origin = np.array([r[0] for r in rows], dtype=np.int64)
    labels = np.array([r[1] for r in rows], dtype=np.int64)
    ids = [r[2] for r in rows]

    def load(idx: np.ndarray) -> list:
        data = _archive_read(path, {ids[i] for i in idx})
        _release()
        return [Encoded(f"{path}:{ids[i]}", data[ids[i]]) for i in idx]

    return _Raw(labels, origin, ids, fingerprint(path), load, {})


def _cache(cfg: DataConfig, p: dict) -> Path:
    return cache_root(_root_dir(cfg), p["cache_dir"])


def _raw10(cfg: DataConfig, p: dict) -> _Raw:
    if p["archive"]:
        return _raw_archive(shared_path(p["archive"]), CIFAR10_CLASSES, "cifar-10-batches-py",
                            "data_batch_1", _raw_pickles10, _cache(cfg, p))
    if not cfg.root:
        raise ConfigError("cifar10 needs data.root (with cifar-10-batches-py/ or train/, test/) "
                          "or data.params.archive")
    root = Path(cfg.root)
    if root.is_file() and root.name.endswith((".tar.gz", ".tgz", ".tar")):
        return _raw_archive(root, CIFAR10_CLASSES, "cifar-10-batches-py", "data_batch_1",
                            _raw_pickles10, _cache(cfg, p))
    d = _pickle_dir(root, "cifar-10-batches-py", "data_batch_1")
    if d is not None:
        return _raw_pickles10(d)
    if (root / "train").is_dir():
        return _raw_folder(root, CIFAR10_CLASSES)
    raise DataError(f"{root}: found neither cifar-10-batches-py/ pickles nor train/<class>/ "
                    "images; set data.root accordingly or data.params.archive")


# ---------------------------------------------------------------------------- splitting
def select(raw: _Raw, p: dict, val_fraction: float) -> tuple[np.ndarray, list[int]]:
    """Rows of the pooled source laid out train | val | test, and the three sizes.

    ``pooled`` (thesis §2.3.1): per class, train+test are pooled, optionally capped at
    ``limit_per_class`` (random, seeded), then split 80/10/10 (:func:`split_counts`).
    ``standard``: the official test set is the test split; val is ``val_fraction`` of each
    class's training images; the cap applies to train and test separately.
    ``train_per_class`` is not used here (it never changes these rows): see
    :func:`train_subset`. Both may be set: ``limit_per_class`` shrinks the pool (all splits),
    then ``train_per_class`` caps only the train split of what is left.
    """
    if p["splits"] not in ("pooled", "standard"):
        raise ConfigError(f"data.params.splits must be pooled or standard, got {p['splits']!r}")
    lim = p["limit_per_class"]
    if lim is not None and (not isinstance(lim, int) or lim < 1):
        raise ConfigError(f"data.params.limit_per_class must be a positive int, got {lim!r}")
    rng = np.random.default_rng(int(p["split_seed"]))
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in np.unique(raw.labels):
        if p["splits"] == "pooled":
            idx = rng.permutation(np.flatnonzero(raw.labels == c))[:lim]
            n_tr, n_va, _ = split_counts(len(idx))
            chunks = (idx[:n_tr], idx[n_tr:n_tr + n_va], idx[n_tr + n_va:])
        else:
            tr = rng.permutation(np.flatnonzero((raw.labels == c) & (raw.origin == 0)))[:lim]
            te = rng.permutation(np.flatnonzero((raw.labels == c) & (raw.origin == 1)))[:lim]
            n_va = int(round(val_fraction * len(tr)))
            chunks = (tr[n_va:], tr[:n_va], te)
        for k in range(3):
            parts[k].append(np.sort(chunks[k]))
    rows = [np.concatenate(x) if x else np.zeros(0, np.int64) for x in parts]
    return np.concatenate(rows), [len(r) for r in rows]


TRAIN_SUBSET_STREAM = 4_202  # second word of the train_per_class seed (see train_subset)


def check_train_per_class(value: Any) -> int | None:
    """``data.params.train_per_class``: ``None`` or a positive int (a bool is not a count)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise ConfigError(f"data.params.train_per_class must be a positive int or null, got "
                          f"{value!r}; give e.g. 100 or 1000 (thesis Table 4.2), or null for all")
    return value


def train_subset(labels: np.ndarray, k: int | None, seed: int) -> np.ndarray:
    """Positions (sorted) of the train rows kept by ``train_per_class = k``.

    Thesis §4.2.1 / Table 4.2 vary the training images per class (100, 1,000, all) with val
    and test fixed, so this runs AFTER :func:`select`: val and test rows never depend on ``k``.
    Per leaf class ``c`` (``labels``: the class of each train row), the rows are shuffled by
    ``np.random.default_rng([seed, TRAIN_SUBSET_STREAM, c])`` and the first ``min(count, k)``
    are kept. The generator is separate from the split's, and per class, so the subsets are
    deterministic, independent of the other classes' counts, and nested (k=100 is a subset of
    k=1000 for the same seed).
    """
    if k is None:
        return np.arange(len(labels))
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng = np.random.default_rng([int(seed), TRAIN_SUBSET_STREAM, int(c)])
        keep.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


def _normalization(p: dict, mean: tuple, std: tuple) -> tuple[tuple, tuple]:
    if p["normalization"] == "dataset":
        return mean, std
    if p["normalization"] == "imagenet":
        return IMAGENET
    raise ConfigError(f"data.params.normalization must be dataset or imagenet, got "
                      f"{p['normalization']!r}")


def build_from_raw(
    name: str, cfg: DataConfig, p: dict, raw: _Raw, h: Hierarchy, level_labels: np.ndarray,
    mean: tuple, std: tuple,
) -> HierDataset:
    """Select rows, decode/resize once through the cache, slice into splits.

    ``train_per_class`` is applied to the train rows after the cached array is loaded (see
    :func:`train_subset`), so every setting of it shares the one cache entry of the full split
    (decoded once for 100 / 1,000 / all) and val/test are the very same rows. The kept train
    rows are then an in-memory copy (k x classes images) instead of a memory-map view, unless
    nothing is dropped.
    """
    mean, std = _normalization(p, mean, std)
    k = check_train_per_class(p.get("train_per_class"))
    rows, sizes = select(raw, p, cfg.val_fraction)
    size = int(cfg.image_size)
    key = {"dataset": name, "src": raw.key, "rows": cache_key(rows.tolist()), "size": size}
    try:
        images = cached_image_array(key, lambda: raw.loader(rows), size, cache=_cache(cfg, p),
                                    name=name, workers=p["workers"],
                                    stamp=(lambda: raw.stamp(rows)) if raw.stamp else None)
    finally:
        _release()
    ids = [raw.ids[i] for i in rows]
    splits = contiguous_splits(images, level_labels[rows], sizes, ids)
    keep = train_subset(raw.labels[rows[:sizes[0]]], k, int(p["split_seed"]))
    if len(keep) < sizes[0]:
        tr = splits[0]
        splits[0] = ImageSplit(np.ascontiguousarray(tr.images[keep]), tr.level_labels[keep],
                               tuple(tr.ids[i] for i in keep))
    return HierDataset(name, h, *splits, mean=mean, std=std,
                       meta={"splits": p["splits"], "size": size, "source": raw.key,
                             "train_per_class": k})


def _root_dir(cfg: DataConfig) -> str | None:
    if cfg.root and os.path.isfile(cfg.root):
        return os.path.dirname(cfg.root)
    return cfg.root


# ---------------------------------------------------------------------------- CIFAR-10
def cifar10_hierarchy() -> Hierarchy:
    """living/non-living -> mammal, non-mammal, vehicle, craft -> 10 classes (thesis §2.3.1)."""
    return Hierarchy.from_level_labels(CIFAR10_PATHS, level_names=CIFAR10_LEVELS)


@register_dataset_hierarchy("cifar10")
def _cifar10_h(cfg: DataConfig) -> Hierarchy:
    p = check_params("data.params (cifar10)", cfg.params, COMMON)
    check_train_per_class(p["train_per_class"])
    return cifar10_hierarchy()


@DATASETS.register("cifar10")
def build_cifar10(cfg: DataConfig) -> HierDataset:
    """Hierarchical CIFAR-10: 3 levels (2/4/10), 80/10/10 per class by default."""
    p = check_params("data.params (cifar10)", cfg.params, COMMON)
    raw = _raw10(cfg, p)
    h = cifar10_hierarchy()
    _, labels = leaf_level_labels(h, [CIFAR10_CLASSES[c] for c in raw.labels], where="cifar10")
    return build_from_raw("cifar10", cfg, p, raw, h, labels, CIFAR10_MEAN, CIFAR10_STD)


# ---------------------------------------------------------------------------- CIFAR-100
def _raw_pickles100(d: Path | None, members: dict[str, bytes] | None = None,
                    name: str = "") -> _Raw:
    parts, metas = [], {}
    for f in ("train", "test", "meta"):
        if members is None:
            raw = _unpickle(d / f)
            where = str(d / f)
        else:
            if f not in members:
                raise DataError(f"{name}: member cifar-100-python/{f} not found")
            raw = _loads(members[f], f"{name}:{f}")
            where = f"{name}:{f}"
        if f == "meta":
            metas = raw
            continue
        x, y = _batch_arrays(raw, where, b"fine_labels")
        coarse = np.asarray(raw.get(b"coarse_labels", np.full(len(y), -1)), dtype=np.int64)
        parts.append((x, y, coarse))
    try:
        fine_names = [n.decode() for n in metas[b"fine_label_names"]]
        coarse_names = [n.decode() for n in metas[b"coarse_label_names"]]
    except KeyError as err:
        raise DataError(f"{name or d}: meta lacks {err.args[0]!r}; expected CIFAR-100 meta with "
                        "fine_label_names and coarse_label_names") from None
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    coarse = np.concatenate([p[2] for p in parts])
    origin = np.repeat([0, 1], [len(parts[0][1]), len(parts[1][1])])
    key = [fingerprint(d / f) for f in ("train", "test", "meta")] if members is None else [name]
    return _Raw(y, origin, [str(i) for i in range(len(y))], key, lambda idx: x[idx],
                {"fine": fine_names, "coarse": coarse_names, "coarse_labels": coarse})


def _raw100(cfg: DataConfig, p: dict) -> _Raw:
    if p["archive"]:
        return _raw_archive(shared_path(p["archive"]), (), "cifar-100-python", "meta",
                            _raw_pickles100, _cache(cfg, p))
    if not cfg.root:
        raise ConfigError("cifar100 needs data.root (with cifar-100-python/) or "
                          "data.params.archive")
    d = _pickle_dir(Path(cfg.root), "cifar-100-python", "meta")
    if d is None:
        raise DataError(f"{cfg.root}: cifar-100-python/meta not found; expected torchvision's "
                        "CIFAR-100 python layout (train, test, meta)")
    return _raw_pickles100(d)


def _read_names(path: str | Path) -> dict[str, str]:
    path = require_file(path, "class names, one 'id name' pair per line")
    out = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected 'id name', got {line[:80]!r}")
        out[parts[0]] = parts[1].strip()
    return out


def cifar100_hierarchy(p: dict, fine: list[str], coarse: list[str],
                       coarse_of_fine: np.ndarray | None) -> tuple[Hierarchy, list[str]]:
    """The hierarchy and the hierarchy node of each fine class (index order)."""
    if p["hierarchy_file"] is None:
        if coarse_of_fine is None or (coarse_of_fine < 0).any():
            raise DataError("CIFAR-100 pickles lack coarse_labels; give data.params."
                            "hierarchy_file")
        rows = [(coarse[coarse_of_fine[i]], fine[i]) for i in range(len(fine))]
        h = Hierarchy.from_level_labels(rows, level_names=("superclass", "class"))
        return h, list(fine)
    h = Hierarchy.from_parent_child_file(p["hierarchy_file"], child_parent=bool(p["child_parent"]))
    if p["class_names_file"] is not None:
        ren = _read_names(p["class_names_file"])
        new = [ren.get(n, n) for n in h.names]
        if len(set(new)) != len(new):
            raise DataError(f"{p['class_names_file']}: renaming makes two nodes share a name")
        m = dict(zip(h.names, new, strict=True))
        edges = [(m[h.names[q]], m[h.names[c]]) for c, ps in enumerate(h.parents) for q in ps]
        h = Hierarchy.from_edges(edges, nodes=[m[h.names[r]] for r in h.roots])
    leaves = {h.names[i] for i in h.leaves}
    nodes = []
    for i, n in enumerate(fine):
        if str(i) in leaves:
            nodes.append(str(i))
        elif n in leaves:
            nodes.append(n)
        else:
            raise DataError(f"{p['hierarchy_file']}: CIFAR-100 class {i} ({n!r}) is not a leaf; "
                            "expected leaves named by class index or class name")
    return h, nodes


def _cifar100_params(cfg: DataConfig) -> dict:
    p = check_params("data.params (cifar100)", cfg.params, {**COMMON, **CIFAR100_EXTRA,
                                                             "splits": "standard"})
    check_train_per_class(p["train_per_class"])
    return p


@register_dataset_hierarchy("cifar100")
def _cifar100_h(cfg: DataConfig) -> Hierarchy:
    p = _cifar100_params(cfg)
    raw = _raw100(cfg, p)
    coarse_of = _coarse_of_fine(raw)
    h, nodes = cifar100_hierarchy(p, raw.extra["fine"], raw.extra["coarse"], coarse_of)
    h, _ = leaf_level_labels(h, nodes, leveling=p["leveling"], where="cifar100")
    return h


def _coarse_of_fine(raw: _Raw) -> np.ndarray:
    out = np.full(len(raw.extra["fine"]), -1, dtype=np.int64)
    out[raw.labels] = raw.extra["coarse_labels"]
    return out


@DATASETS.register("cifar100")
def build_cifar100(cfg: DataConfig) -> HierDataset:
    """CIFAR-100 with its 20 superclasses or a parent-child hierarchy file (Barz & Denzler)."""
    p = _cifar100_params(cfg)
    raw = _raw100(cfg, p)
    h, nodes = cifar100_hierarchy(p, raw.extra["fine"], raw.extra["coarse"],
                                  _coarse_of_fine(raw))
    h, labels = leaf_level_labels(h, [nodes[c] for c in raw.labels], leveling=p["leveling"],
                                  where="cifar100")
    return build_from_raw("cifar100", cfg, p, raw, h, labels, CIFAR100_MEAN, CIFAR100_STD)
