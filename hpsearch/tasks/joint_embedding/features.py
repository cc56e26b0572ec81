"""Image features from a frozen backbone, extracted once and shared by every trial.

The joint image + label embedding (thesis §5.6, eq. 5.2: f_i(i) = W · CNN(i)) learns only W; the
CNN is frozen, so its features are a pure function of (backbone, weights, preprocessing, images).
(With ``train_backbone`` the experiment trains that same network end to end instead and reads
only the step-0 train features from here, for the standardisation.)
They are computed once per (feature source, dataset) and cached on disk as float32
``<cache>/features-<key>/{train,val,test}.npy`` (memory-mapped by every later trial):

* ``<cache>`` is ``$HPSEARCH_CACHE``, else ``~/.cache/hpsearch`` (:func:`cache_root`);
* ``<key>`` hashes the source (:meth:`FeatureSource.key_parts`: backbone name, SHA-1 of the
  weights file, width, grayscale, seed of a random init, or SHA-1 of the checkpoint file), the
  image-defining part of the data config and a fingerprint of the images and labels themselves.

Concurrency: a build holds the entry's ``fcntl`` lock (:mod:`hpsearch.data.cache`); each split is
written to a temporary file and ``os.replace``-d, so a ``.npy`` exists only when complete and a
waiting process finds it finished.

Sources (``model.params.features``):

* ``backbone``: a registered backbone (``model.backbone``: ``small_cnn``, torchvision names), with
  local ``model.pretrained_weights`` or seeded random weights;
* ``checkpoint``: a trained image-classifier run's checkpoint directory
  (:func:`hpsearch.tasks.checkpoint.experiment_from_checkpoint`), whose model's
  ``forward_features`` and evaluation preprocessing are used. An MLflow run id is resolved to
  such a directory by the CLI layer, not here.

Unlike the published ``ImageEmb`` (which never called ``.eval()``, so BatchNorm used batch
statistics at batch size 1), extraction runs in eval mode under ``torch.inference_mode``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from hpsearch.config import DataConfig, ModelConfig
from hpsearch.data.base import HierDataset, ImageSplit
from hpsearch.data.cache import cache_key, cache_root, locked, progress_bar
from hpsearch.data.transforms import Preprocess
from hpsearch.errors import ConfigError, DataError
from hpsearch.models.backbones import build_backbone
from hpsearch.models.joint_embedding import JointEmbeddingParams
from hpsearch.tasks.base import RunContext, task_of
from hpsearch.tasks.checkpoint import checkpoint_file as state_file
from hpsearch.tasks.checkpoint import read_state
from hpsearch.tasks.classifier import SPEC as CLASSIFIER
from hpsearch.tasks.classifier import ClassifierExperiment
from hpsearch.tasks.config import validate_trial

SPLITS = ("train", "val", "test")
FEATURE_VERSION = 1  # bump when extraction changes, to invalidate old entries
FINGERPRINT_SAMPLES = 64  # images hashed per split to detect changed data under the same config


@dataclass
class CacheStats:
    """Process-wide counters (tests and logs): splits extracted vs. served from the cache."""

    extracted: int = 0
    hits: int = 0


STATS = CacheStats()


@dataclass(frozen=True)
class FeatureSource:
    """Where frozen image features come from.

    Attributes:
        kind: ``backbone`` (a registered backbone) or ``checkpoint`` (a trained run).
        backbone: registered backbone name (``kind="backbone"``).
        pretrained_weights: local state-dict file for ``backbone``; None = seeded random init.
        width: channels of ``small_cnn``'s first stage.
        grayscale: feed one-channel images (``kind="backbone"``).
        seed: seeds a random-weights backbone, so its features are reproducible.
        checkpoint: checkpoint directory of an image-classifier run (``kind="checkpoint"``).
    """

    kind: Literal["backbone", "checkpoint"] = "backbone"
    backbone: str = "small_cnn"
    pretrained_weights: str | None = None
    width: int = 32
    grayscale: bool = False
    seed: int = 0
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("backbone", "checkpoint"):
            raise ConfigError(f"feature source kind must be 'backbone' or 'checkpoint', got "
                              f"{self.kind!r}")
        if self.kind == "checkpoint" and not self.checkpoint:
            raise ConfigError("features='checkpoint' needs feature_checkpoint=<checkpoint "
                              "directory of a trained image-classifier run>")

    @classmethod
    def from_model_config(cls, model: ModelConfig, *, kind: str = "backbone",
                          checkpoint: str | None = None, seed: int = 0) -> FeatureSource:
        """The source named by ``cfg.model`` (backbone fields) plus the family's options."""
        if kind == "checkpoint":
            return cls(kind="checkpoint", checkpoint=checkpoint)
        return cls(kind="backbone", backbone=model.backbone,  # type: ignore[arg-type]
                   pretrained_weights=model.pretrained_weights, width=model.width,
                   grayscale=model.grayscale, seed=seed)

    def key_parts(self) -> dict[str, Any]:
        """What the features depend on (files by content, not by path)."""
        if self.kind == "checkpoint":
            return {"kind": "checkpoint", "file": _fingerprint(checkpoint_file(self.checkpoint))}
        parts: dict[str, Any] = {"kind": "backbone", "backbone": self.backbone,
                                 "grayscale": self.grayscale}
        if self.backbone == "small_cnn":
            parts["width"] = self.width
        if self.pretrained_weights:
            parts["weights"] = _fingerprint(Path(self.pretrained_weights))
        else:
            parts["seed"] = self.seed
        return parts

    def describe(self) -> dict[str, Any]:
        """A JSON-able description for exports and logs."""
        if self.kind == "checkpoint":
            return {"kind": "checkpoint", "checkpoint": str(self.checkpoint)}
        d = asdict(self)
        d.pop("checkpoint")
        if self.pretrained_weights:
            d.pop("seed")
        return d


def checkpoint_file(path: str | os.PathLike | None) -> Path:
    """The state file of a checkpoint directory (``best.pt`` if present, else
    ``checkpoint.pt``), as :func:`~hpsearch.tasks.checkpoint.experiment_from_checkpoint` reads
    it."""
    return state_file(str(path), what="feature_checkpoint")


_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> SHA-1, per process


def _fingerprint(path: Path) -> dict[str, Any]:
    """Size and SHA-1 of a file's bytes: a copy of a checkpoint (e.g. an MLflow artifact
    downloaded into a fresh temporary folder for every trial) still hits the same entry."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (feature source)")
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        h = hashlib.sha1()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[memo] = h.hexdigest()
    return {"size": st.st_size, "sha1": _DIGESTS[memo]}


# ---------------------------------------------------------------------- extraction
@dataclass(frozen=True, eq=False)
class FeatureExtractor:
    """A frozen network and the preprocessing it was trained with."""

    net: nn.Module  # has forward_features(x [B, C, H, W]) -> [B, F]
    preprocess: Preprocess
    out_dim: int
    device: torch.device

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, batch_size: int = 256,
                 out: np.ndarray | None = None, bar: Any = None) -> np.ndarray:
        """uint8 ``[N, H, W, C]`` -> float32 ``[N, F]`` (written into ``out`` when given;
        ``bar``, a :func:`~hpsearch.data.cache.progress_bar`, advanced per batch)."""
        self.net.eval()  # BN running statistics, no dropout (the published code missed this)
        n = len(images)
        if out is None:
            out = np.empty((n, self.out_dim), dtype=np.float32)
        for s in range(0, n, batch_size):
            xb = torch.from_numpy(np.array(images[s:s + batch_size]))
            f = self.net.forward_features(self.preprocess(xb.to(self.device)))
            out[s:s + len(xb)] = f.float().reshape(len(xb), -1).cpu().numpy()
            if bar is not None:
                bar.update(len(xb))
        return out


def build_extractor(source: FeatureSource, dataset: HierDataset, data_cfg: DataConfig,
                    device: torch.device | str = "cpu") -> FeatureExtractor:
    """Instantiate the frozen network of ``source`` (no features computed yet)."""
    device = torch.device(device)
    if source.kind == "checkpoint":
        return _checkpoint_extractor(source, dataset, device)
    mc = ModelConfig(backbone=source.backbone, pretrained_weights=source.pretrained_weights,
                     width=source.width, grayscale=source.grayscale)
    in_ch = 1 if source.grayscale else dataset.channels
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the trial's RNG
        torch.manual_seed(source.seed)
        net = build_backbone(mc, in_ch)
    net.requires_grad_(False)
    pre = Preprocess(mean=dataset.mean, std=dataset.std, size=data_cfg.image_size,
                     grayscale=source.grayscale)
    return FeatureExtractor(net.to(device).eval(), pre, int(net.out_dim), device)


def classifier_from_checkpoint(path: str | os.PathLike, ctx: RunContext | None = None
                               ) -> ClassifierExperiment:
    """The image classifier saved in checkpoint directory ``path`` (its best epoch), or a
    :class:`ConfigError` when that run is of another task (no image backbone)."""
    state = read_state(path, what="feature_checkpoint")
    cfg = validate_trial(state["config"])
    if task_of(cfg).name != CLASSIFIER.name:
        raise ConfigError(f"feature_checkpoint={str(path)!r} holds a {cfg.model.family!r} run, "
                          "which has no image backbone; use the checkpoint of an "
                          "image-classifier run")
    exp = ClassifierExperiment(cfg, ctx or RunContext())
    exp.load_state_dict(state["experiment"])
    return exp


def _checkpoint_extractor(source: FeatureSource, dataset: HierDataset,
                          device: torch.device) -> FeatureExtractor:
    exp = classifier_from_checkpoint(str(source.checkpoint), RunContext(device=device))
    model, ccfg, src_data = exp.model, exp.cfg, exp.data
    if src_data.channels != dataset.channels:
        raise ConfigError(f"feature_checkpoint={source.checkpoint!r} was trained on "
                          f"{src_data.channels}-channel images, the joint dataset has "
                          f"{dataset.channels}")
    pre = Preprocess(mean=tuple(src_data.mean), std=tuple(src_data.std),
                     size=ccfg.data.image_size, grayscale=ccfg.model.grayscale)
    model.requires_grad_(False)
    model.to(device).eval()
    out_dim = int(getattr(model.backbone, "out_dim", 0))
    if out_dim <= 0:
        with torch.inference_mode():
            probe = torch.from_numpy(np.array(dataset.train.images[:1])).to(device)
            out_dim = int(model.forward_features(pre(probe)).reshape(1, -1).shape[1])
    return FeatureExtractor(model, pre, out_dim, device)


def feature_source(model: ModelConfig, params: JointEmbeddingParams) -> FeatureSource:
    """The :class:`FeatureSource` named by a joint config."""
    return FeatureSource.from_model_config(model, kind=params.features,
                                           checkpoint=params.feature_checkpoint,
                                           seed=params.feature_seed)


def source_feature_dim(model: ModelConfig, params: JointEmbeddingParams, in_ch: int = 3) -> int:
    """F of a feature source without extracting anything (builds the network only)."""
    if params.features == "checkpoint":
        cfg = validate_trial(read_state(str(params.feature_checkpoint),
                                        what="feature_checkpoint")["config"])
        mc = cfg.model
        in_ch = 1 if mc.grayscale else in_ch
    else:
        mc = ModelConfig(backbone=model.backbone, width=model.width, grayscale=model.grayscale)
        in_ch = 1 if model.grayscale else in_ch
    return int(build_backbone(mc.model_copy(update={"pretrained_weights": None,
                                                    "freeze_backbone": False,
                                                    "train_layers": "all"}), in_ch).out_dim)


# ---------------------------------------------------------------------- cache
def data_fingerprint(dataset: HierDataset) -> dict[str, Any]:
    """Sizes plus a SHA-1 of the labels and of ``FINGERPRINT_SAMPLES`` evenly spaced images per
    split: a changed dataset under an unchanged config gets a new cache entry."""
    out: dict[str, Any] = {"name": dataset.name}
    for name in SPLITS:
        sp: ImageSplit = dataset.split(name)
        h = hashlib.sha1(np.ascontiguousarray(sp.level_labels).tobytes())
        if len(sp):
            idx = np.unique(np.linspace(0, len(sp) - 1, FINGERPRINT_SAMPLES).astype(np.int64))
            h.update(np.ascontiguousarray(sp.images[idx]).tobytes())
        out[name] = {"shape": list(sp.images.shape), "sha1": h.hexdigest()}
    return out


def feature_entry(source: FeatureSource, data_cfg: DataConfig, dataset: HierDataset,
                  cache: Path | None = None) -> Path:
    """The cache directory of (``source``, dataset)."""
    data = data_cfg.model_dump(include={"name", "root", "image_size", "val_fraction", "params"})
    parts = {"v": FEATURE_VERSION, "source": source.key_parts(), "data": data,
             "fingerprint": data_fingerprint(dataset)}
    return (cache or cache_root(None)) / f"features-{cache_key(parts)}"


def cached_features(source: FeatureSource, data_cfg: DataConfig, dataset: HierDataset, *,
                    splits: tuple[str, ...] = SPLITS, device: torch.device | str = "cpu",
                    batch_size: int = 256, cache: Path | None = None) -> dict[str, np.ndarray]:
    """float32 ``[N, F]`` features of every split in ``splits``, memory-mapped from the cache.

    Missing splits are extracted (one network instantiation for all of them) under the entry's
    lock; present ones are never recomputed.

    Args:
        source: the frozen network.
        data_cfg: the trial's ``cfg.data`` (its image-defining fields enter the key).
        dataset: the loaded dataset ``load_dataset(data_cfg)``.
        splits: which splits to return.
        device: where to run the network when extracting.
        batch_size: extraction batch size.
        cache: cache root (default :func:`~hpsearch.data.cache.cache_root`).
    """
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ConfigError(f"unknown split {bad[0]!r}; allowed: {', '.join(SPLITS)}")
    d = feature_entry(source, data_cfg, dataset, cache)
    files = {s: d / f"{s}.npy" for s in splits}
    missing: list[str] = []
    if not all(f.is_file() for f in files.values()):
        with locked(d / ".lock"):
            missing = [s for s in splits if not files[s].is_file()]
            if missing:
                for stale in d.glob("*.tmp-*.npy"):  # left by a killed build; we hold the lock
                    stale.unlink(missing_ok=True)
                ext = build_extractor(source, dataset, data_cfg, device)
                for s in missing:
                    _write_split(ext, dataset.split(s).images, files[s], batch_size)
                    STATS.extracted += 1
                meta = {"source": source.describe(), "key": source.key_parts(),
                        "dim": ext.out_dim, "data": data_cfg.model_dump()}
                (d / "source.json").write_text(json.dumps(meta, indent=1, default=str))
    STATS.hits += len(splits) - len(missing)
    return {s: np.load(f, mmap_mode="r") for s, f in files.items()}


def _write_split(ext: FeatureExtractor, images: np.ndarray, final: Path, bs: int) -> None:
    tmp = final.with_name(f"{final.stem}.tmp-{os.getpid()}.npy")
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                        shape=(len(images), ext.out_dim))
        with progress_bar(len(images), f"{final.parent.name}/{final.stem}") as bar:
            ext(images, bs, out=arr, bar=bar)
        if len(arr) and not np.isfinite(arr).all():
            raise DataError(f"the feature network produced NaN/inf features for {final.stem}; "
                            "check the backbone weights")
        arr.flush()
        del arr
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
