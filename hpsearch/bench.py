"""Benchmarks, run as ``hpsearch bench SUBCOMMAND`` (top floor: it uses the public API only).

Input pipeline (issue 3): the decoded uint8 cache against per-batch JPEG decoding.

``hpsearch bench input-pipeline ...`` trains the same model (same seed, same
images, same order, same augmentation) for the same number of batches twice in one process:

(a) ``memmap``: the platform's pipeline. ``hpsearch.data.load_dataset`` decodes the dataset once
    into the uint8 memmap cache; batches are sliced from it by
    :func:`hpsearch.data.transforms.iterate_batches` and converted, normalised and augmented
    on the device by :class:`hpsearch.data.transforms.Preprocess`.
(b) ``jpeg``: the conventional pipeline. The same images as JPEG files on local disk, a torch
    ``DataLoader`` whose workers read and decode every file for every batch
    (``torchvision.io.decode_jpeg``), resize when needed, normalise and apply the same random
    crop + flip (:func:`hpsearch.data.transforms.random_crop_flip`, one sample at a time).

Each pipeline is timed twice: data only (batches ready on the device, no model) and a full
training pass (forward, backward, SGD step). The cache build time (archive read + decode +
write, into a fresh cache directory) is reported beside them.

``hpsearch bench resize ...`` is a decode micro-benchmark for ETHEC-sized images:
448x448 JPEGs decoded and resized to 224x224 by PIL, PIL with JPEG draft mode (DCT-domain
downscaling), torchvision, and the cache's own ``decode_image``, single-threaded.

``hpsearch bench runs-csv ...`` and ``... compare ...`` summarise finished searches
from MLflow (through :mod:`hpsearch.tracking`): one CSV row per trial run, and a Markdown table
of each experiment's best run, with the validation metrics *of the best epoch* read from the
metric history (the latest logged ``val_*`` value belongs to the last epoch, not the best).

No timing here is asserted anywhere; the numbers go to ``results/``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hpsearch.config import DataConfig, ModelConfig
from hpsearch.data import HierDataset, ImageSplit, load_dataset
from hpsearch.data.cache import Encoded, decode_batch, decode_image
from hpsearch.data.transforms import Preprocess, iterate_batches, random_crop_flip
from hpsearch.errors import ConfigError, DataError, HpsearchError
from hpsearch.hierarchy import Hierarchy
from hpsearch.models import build_model
from hpsearch.tasks import RunContext, TrialConfig
from hpsearch.tasks.label_embedding import LabelEmbeddingExperiment
from hpsearch.tracking import Tracker, default_tracking_uri


# ---------------------------------------------------------------------------- results
@dataclass
class PassResult:
    """One timed pass over ``batches`` batches.

    Attributes:
        images: images delivered.
        seconds: wall time of the pass, worker start-up included.
        images_per_s: ``images / seconds``.
        first_batch_s: wall time until the first batch was ready on the device.
        losses: training losses per batch (empty for a data-only pass).
    """

    images: int
    seconds: float
    images_per_s: float
    first_batch_s: float
    losses: list[float] = field(default_factory=list)


@dataclass
class PipelineReport:
    """Both pipelines on the same images, plus one-off costs (seconds)."""

    config: dict[str, Any]
    cache_build_s: float | None  # load_dataset into a fresh cache (None: not measured)
    cache_load_s: float | None  # load_dataset again, cache present
    jpeg_prepare_s: float  # extracting / writing the JPEG files of path (b), once
    memmap_data: PassResult
    memmap_train: PassResult
    jpeg_data: PassResult
    jpeg_train: PassResult

    def markdown(self) -> str:
        """The four passes as a Markdown table."""
        rows = ["| pipeline | pass | images | seconds | images/s | first batch (s) | "
                "last loss |", "|---|---|---|---|---|---|---|"]
        for name, r in (("memmap cache", self.memmap_data), ("memmap cache", self.memmap_train),
                        ("JPEG files", self.jpeg_data), ("JPEG files", self.jpeg_train)):
            kind = "train step" if r.losses else "data only"
            last = f"{r.losses[-1]:.4f}" if r.losses else "-"
            rows.append(f"| {name} | {kind} | {r.images} | {r.seconds:.2f} | "
                        f"{r.images_per_s:.1f} | {r.first_batch_s:.3f} | {last} |")
        return "\n".join(rows)


# ---------------------------------------------------------------------------- JPEG path
class JpegFiles(torch.utils.data.Dataset):
    """JPEG files -> (normalised, augmented float ``[C, S, S]``, labels ``[L]``) per item.

    Every ``__getitem__`` reads and decodes the file (the work the memmap cache does once).
    The augmentation is :func:`random_crop_flip` on a one-image batch with a per-item seeded
    generator, i.e. the same distribution of crops and flips as the memmap path.
    """

    def __init__(self, files: Sequence[str | os.PathLike], labels: np.ndarray, *,
                 mean: Sequence[float], std: Sequence[float], size: int, augment: bool,
                 seed: int = 0) -> None:
        if len(files) != len(labels):
            raise DataError(f"{len(files)} JPEG files but {len(labels)} label rows")
        self.files = [str(f) for f in files]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.size, self.augment, self.seed = size, augment, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        from torchvision.io import ImageReadMode, decode_jpeg, read_file

        img = decode_jpeg(read_file(self.files[i]), mode=ImageReadMode.RGB)  # uint8 [C, H, W]
        x = img.float().div_(255.0)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = torch.nn.functional.interpolate(x[None], size=(self.size, self.size),
                                                mode="bilinear", antialias=True,
                                                align_corners=False)[0]
        x = (x - self.mean) / self.std
        if self.augment:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
            x = random_crop_flip(x[None], pad=max(1, self.size // 8), generator=g)[0]
        return x, torch.from_numpy(self.labels[i])


def write_jpegs(images: np.ndarray, out_dir: str | os.PathLike, quality: int = 95) -> list[Path]:
    """Encode uint8 ``[N, H, W, C]`` images as ``out_dir/000000.jpg ...`` (torchvision)."""
    from torchvision.io import encode_jpeg

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, im in enumerate(images):
        t = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1).contiguous()
        p = out / f"{i:06d}.jpg"
        p.write_bytes(encode_jpeg(t, quality=quality).numpy().tobytes())
        files.append(p)
    return files


def extract_members(archive: str | os.PathLike, members: Sequence[str],
                    out_dir: str | os.PathLike) -> list[Path]:
    """Extract the named members of a tar archive (one streaming pass) to ``out_dir``.

    Returns the extracted paths in the order of ``members``. Files already present are kept.

    Raises:
        DataError: a member is not in the archive.
    """
    out = Path(out_dir)
    want = {m: out / m for m in members}
    missing = {m for m, p in want.items() if not p.is_file()}
    if missing:
        with tarfile.open(archive, "r|*") as tf:
            for m in tf:
                if m.isfile() and m.name in missing:
                    fh = tf.extractfile(m)
                    dst = want[m.name]
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    dst.write_bytes(fh.read() if fh else b"")
                    missing.discard(m.name)
                    if not missing:
                        break
        if missing:
            raise DataError(f"{archive}: member {sorted(missing)[0]} not found "
                            f"({len(missing)} of {len(members)} missing)")
    return [want[m] for m in members]


# ---------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_pass(batches: Iterator[tuple[Tensor, Tensor]], device: torch.device, *,
                model: torch.nn.Module | None = None,
                optimizer: torch.optim.Optimizer | None = None) -> PassResult:
    """Consume ``batches`` (already preprocessed float images on ``device``), training ``model``
    on them when given."""
    t0 = time.perf_counter()
    first, seen, losses = math.nan, 0, []
    for x, y in batches:
        if model is not None and optimizer is not None:
            out = model(x)
            loss = model.head.loss(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        else:
            float(x[:1, :1, :1, :1].sum())  # force the batch to exist (and sync a GPU)
        seen += len(y)
        if math.isnan(first):
            _sync(device)
            first = time.perf_counter() - t0
    _sync(device)
    dt = time.perf_counter() - t0
    return PassResult(seen, dt, seen / dt if dt > 0 else 0.0, first, losses)


def _memmap_batches(split: ImageSplit, order: np.ndarray, batch_size: int,
                    device: torch.device, pre: Preprocess, gen: torch.Generator
                    ) -> Iterator[tuple[Tensor, Tensor]]:
    for xb, yb in iterate_batches(split.images, split.level_labels, order, batch_size, device):
        yield pre(xb, gen), yb


def _jpeg_batches(files: Sequence[Path], labels: np.ndarray, batch_size: int,
                  device: torch.device, *, mean: Sequence[float], std: Sequence[float],
                  size: int, num_workers: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    ds = JpegFiles(files, labels, mean=mean, std=std, size=size, augment=True, seed=seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers,
                                         pin_memory=device.type == "cuda")
    for xb, yb in loader:
        yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


def _fresh_model(model: str, width: int, h: Hierarchy, in_ch: int, device: torch.device,
                 seed: int, lr: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    net = build_model(ModelConfig(family="per_level", backbone=model, width=width), h, in_ch)
    net.to(device).train()
    return net, torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)


def compare_pipelines(split: ImageSplit, jpeg_files: Sequence[Path], hierarchy: Hierarchy, *,
                      mean: Sequence[float], std: Sequence[float], image_size: int,
                      model: str = "small_cnn", width: int = 32, batches: int = 20,
                      batch_size: int = 128, device: str = "cpu", num_workers: int = 2,
                      seed: int = 0, lr: float = 0.01) -> dict[str, PassResult]:
    """Time both pipelines over the first ``batches * batch_size`` images of ``split``.

    Args:
        split: the decoded split (rows ``i`` and ``jpeg_files[i]`` are the same image).
        jpeg_files: one JPEG file per row of ``split`` (at least as many as are used).
        hierarchy: the label hierarchy (per-level heads are built from it).
        mean, std: per-channel normalisation.
        image_size: side fed to the model.
        model: backbone name (``small_cnn``, ``resnet18``, ...).
        width: small-CNN width.
        batches: batches per pass.
        batch_size: images per batch.
        device: ``cpu`` or ``cuda``.
        num_workers: DataLoader processes of the JPEG path.
        seed: model initialisation, image order and augmentation seed.
        lr: SGD learning rate of the training passes.

    Returns:
        ``{"memmap_data", "memmap_train", "jpeg_data", "jpeg_train"}`` -> :class:`PassResult`.

    Raises:
        ConfigError: ``batches``/``batch_size`` not positive, or a CUDA device is missing.
    """
    if batches < 1 or batch_size < 1:
        raise ConfigError(f"batches and batch_size must be positive, got {batches} and "
                          f"{batch_size}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu")
    n = min(len(split), batches * batch_size)
    if len(jpeg_files) < n:
        raise DataError(f"{len(jpeg_files)} JPEG files for {n} images")
    order = np.random.default_rng(seed).permutation(len(split))[:n]
    files = [jpeg_files[i] for i in order]
    labels = split.level_labels[order]
    in_ch = int(split.images.shape[-1])
    pre = Preprocess(mean=tuple(mean), std=tuple(std), size=image_size, augment=True)

    out: dict[str, PassResult] = {}
    out["memmap_data"] = _timed_pass(_memmap_batches(
        split, order, batch_size, dev, pre, torch.Generator().manual_seed(seed)), dev)
    net, opt = _fresh_model(model, width, hierarchy, in_ch, dev, seed, lr)
    out["memmap_train"] = _timed_pass(_memmap_batches(
        split, order, batch_size, dev, pre, torch.Generator().manual_seed(seed)), dev,
        model=net, optimizer=opt)
    jpeg_kw = dict(mean=mean, std=std, size=image_size, num_workers=num_workers, seed=seed)
    out["jpeg_data"] = _timed_pass(_jpeg_batches(files, labels, batch_size, dev, **jpeg_kw), dev)
    net, opt = _fresh_model(model, width, hierarchy, in_ch, dev, seed, lr)
    out["jpeg_train"] = _timed_pass(_jpeg_batches(files, labels, batch_size, dev, **jpeg_kw),
                                    dev, model=net, optimizer=opt)
    return out


def input_pipeline(*, dataset: str = "cifar10", archive: str | None = None,
                   data_root: str | None = None, limit_per_class: int | None = None,
                   image_size: int = 32, model: str = "small_cnn", width: int = 32,
                   batches: int = 20, batch_size: int = 128, device: str = "cpu",
                   num_workers: int = 2, seed: int = 0, work_dir: str | None = None,
                   fresh_cache: bool = True) -> PipelineReport:
    """Build (time) the cache of a registered dataset, write its JPEGs once, compare pipelines.

    The JPEG files of path (b) are the original archive members when the dataset's ids name
    members of ``archive`` (CIFAR-10 from its JPEG tarball), otherwise the cached images
    re-encoded at quality 95 (e.g. the synthetic data).

    Args:
        dataset: a registered dataset name.
        archive: ``data.params.archive`` (CIFAR).
        data_root: ``data.root``.
        limit_per_class: ``data.params.limit_per_class`` (CIFAR).
        image_size: ``data.image_size``.
        model, width, batches, batch_size, device, num_workers, seed: see
            :func:`compare_pipelines`.
        work_dir: scratch directory for the fresh cache and the JPEG files (default: a new
            directory under the system temp dir).
        fresh_cache: build the cache in ``work_dir`` to time the build; ``False`` uses the
            normal cache location (the build time is then whatever it took, maybe a hit).

    Returns:
        The :class:`PipelineReport`.
    """

    load_before = _loadavg()
    work = Path(work_dir or tempfile.mkdtemp(prefix="hpsearch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    params: dict[str, Any] = {}
    if archive:
        params["archive"] = archive
    if limit_per_class is not None:
        params["limit_per_class"] = limit_per_class
    if fresh_cache:
        cache = work / f"cache-{os.getpid()}-{time.time_ns()}"
        if dataset == "synthetic":
            data_root = str(cache)  # synthetic caches under data.root
        else:
            params["cache_dir"] = str(cache)
    cfg = DataConfig(name=dataset, root=data_root, image_size=image_size, params=params)
    t = time.perf_counter()
    data: HierDataset = load_dataset(cfg)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    data = load_dataset(cfg)
    load_s = time.perf_counter() - t

    split = data.train
    n = min(len(split), batches * batch_size)
    order = np.random.default_rng(seed).permutation(len(split))[:n]
    t = time.perf_counter()
    files: list[Path | None] = [None] * len(split)
    if archive and split.ids and not Path(split.ids[0]).is_absolute():
        got = extract_members(archive, [split.ids[i] for i in order], work / "jpeg")
        for i, p in zip(order, got, strict=True):
            files[i] = p
    else:
        got = write_jpegs(np.asarray(split.images[np.sort(order)]), work / "jpeg-reencoded")
        for i, p in zip(np.sort(order), got, strict=True):
            files[i] = p
    prep_s = time.perf_counter() - t
    res = compare_pipelines(split, files, data.hierarchy, mean=data.mean, std=data.std,
                            image_size=image_size, model=model, width=width, batches=batches,
                            batch_size=batch_size, device=device, num_workers=num_workers,
                            seed=seed)
    conf = dict(dataset=dataset, archive=archive, limit_per_class=limit_per_class,
                image_size=image_size, model=model, width=width, batches=batches,
                batch_size=batch_size, device=device, num_workers=num_workers, seed=seed,
                torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
                train_images=len(split), stored_image_side=int(split.images.shape[1]),
                jpeg_source="archive members" if archive else "re-encoded q95",
                torch=torch.__version__, loadavg_before=load_before, loadavg_after=_loadavg())
    return PipelineReport(conf, build_s if fresh_cache else None, load_s, prep_s,
                          res["memmap_data"], res["memmap_train"], res["jpeg_data"],
                          res["jpeg_train"])


def _loadavg() -> str | None:
    """``/proc/loadavg`` (1, 5, 15 min): other processes on a shared machine skew timings."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


# ---------------------------------------------------------------------------- resize
def _smooth_images(n: int, side: int, seed: int) -> np.ndarray:
    """``n`` photo-like uint8 ``[side, side, 3]`` images: upsampled noise plus fine noise, so
    JPEG sizes and decode costs resemble natural images rather than flat colour."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, side // 16, side // 16, generator=g)
    x = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)
    x = x + 0.08 * torch.randn(n, 3, side, side, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def resize_benchmark(n: int = 64, src: int = 448, dst: int = 224, quality: int = 90,
                     repeats: int = 3, seed: int = 0, threads: int = 1) -> list[dict[str, Any]]:
    """Decode + resize ``n`` generated ``src``-px JPEGs to ``dst`` px, per method.

    Methods: ``pil`` (``Image.open().convert("RGB").resize(BILINEAR)``, PIL's antialiased
    downscale), ``pil_draft`` (``Image.draft`` lets libjpeg decode at 1/2, 1/4, 1/8 scale in
    the DCT domain, then the exact resize), ``torchvision`` (``decode_jpeg`` +
    ``transforms.v2.functional.resize(antialias=True)``), ``hpsearch_cache``
    (:func:`hpsearch.data.cache.decode_image`, what the cache build runs per image), and
    ``hpsearch_cache_batch_<device>`` (:func:`hpsearch.data.cache.decode_batch`, the build's
    batched path, ``cuda`` = nvJPEG, when a GPU is visible).

    Returns:
        One dict per method: ``method``, ``images_per_s`` (best of ``repeats``),
        ``ms_per_image``, ``mean_abs_diff_vs_torchvision`` (0-255 scale).
    """
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg
    from torchvision.transforms.v2 import functional as TF


    imgs = _smooth_images(n, src, seed)
    blobs = [encode_jpeg(torch.from_numpy(im).permute(2, 0, 1).contiguous(),
                         quality=quality).numpy().tobytes() for im in imgs]

    def pil(b: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(b)) as im:
            return np.asarray(im.convert("RGB").resize((dst, dst), Image.BILINEAR))

    def pil_draft(b: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(b)) as im:
            im.draft("RGB", (dst, dst))
            im = im.convert("RGB")
            if im.size != (dst, dst):
                im = im.resize((dst, dst), Image.BILINEAR)
            return np.asarray(im)

    def tv(b: bytes) -> np.ndarray:
        t = decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8),
                        mode=ImageReadMode.RGB)
        return TF.resize(t, [dst, dst], antialias=True).permute(1, 2, 0).numpy()

    def cache(b: bytes) -> np.ndarray:
        return decode_image(Encoded("bench", b), dst)

    per_image = {"pil": pil, "pil_draft": pil_draft, "torchvision": tv, "hpsearch_cache": cache}
    methods: dict[str, Callable[[list[bytes]], list[np.ndarray]]] = {
        k: (lambda bl, f=f: [f(b) for b in bl]) for k, f in per_image.items()}
    # the cache build's batched path (HPSEARCH_DECODE_DEVICE): nvJPEG on CUDA
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        methods[f"hpsearch_cache_batch_{dev}"] = lambda bl, dev=dev: list(decode_batch(
            [Encoded("bench", b) for b in bl], dst, dev))
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ref = [tv(b).astype(np.float32) for b in blobs]
        rows = []
        for name, fn in methods.items():
            best = math.inf
            fn(blobs[:2])  # warm-up (CUDA context, nvJPEG handles)
            for _ in range(repeats):
                t = time.perf_counter()
                outs = fn(blobs)
                best = min(best, time.perf_counter() - t)
            diff = float(np.mean([np.abs(o.astype(np.float32) - r).mean()
                                  for o, r in zip(outs, ref, strict=True)]))
            rows.append({"method": name, "images_per_s": n / best,
                         "ms_per_image": 1000 * best / n, "mean_abs_diff_vs_torchvision": diff})
    finally:
        torch.set_num_threads(prev)
    return rows


# ---------------------------------------------------------------------------- MLflow summaries
RUN_PARAMS = ("model.family", "model.backbone", "model.width", "optim.optimizer", "optim.lr",
              "optim.momentum", "optim.weight_decay",
              "optim.batch_size", "optim.schedule", "optim.sgdr_period", "optim.sgdr_mult",
              "optim.level_weights", "data.resample", "data.class_weights",
              "data.params.limit_per_class", "model.params.decision_rule",
              "model.params.cls_weight", "model.params.embedding_method",
              "model.params.embedding_dim")
RUN_METRICS = ("micro_f1", "macro_f1", "micro_f1_level_0", "micro_f1_level_1",
               "micro_f1_level_2", "micro_f1_level_3", "accuracy", "mistake_severity",
               "path_consistency", "mahp_250", "hp_at_10", "hp_at_50", "hit_at_3", "hit_at_5",
               "edge_f1", "full_f1", "recon_tpr", "recon_tnr")


def _tracker(results_dir: str, experiment: str, tracking_uri: str | None = None) -> Tracker:
    return Tracker(tracking_uri or default_tracking_uri(results_dir, create=False), experiment)


def trial_rows(tracker: Tracker, metric: str = "val_micro_f1",
               val_keys: Sequence[str] = ("micro_f1",)) -> list[dict[str, Any]]:
    """One dict per trial run of the tracker's experiment, best first.

    ``best_<metric>`` ranks; ``val_<k>`` are read at the best epoch (``best_epoch`` step of the
    metric history); ``test_<k>`` are the run's latest values, which the driver logs for the
    best validation epoch.
    """
    runs = tracker.runs(role="trial")
    # the fixed list, plus every param the runs differ in (what the search varied), so the
    # searched model.params of any family are columns; keys a run did not use stay empty
    keys = sorted({k for r in runs for k in r.data.params})
    varied = [k for k in keys if k.startswith(("optim.", "model.", "data."))
              and k not in RUN_PARAMS and len({r.data.params.get(k) for r in runs}) > 1]
    rows = []
    for r in runs:
        m, p, t = r.data.metrics, r.data.params, r.data.tags
        best_ep = int(m.get("best_epoch", 0))
        row: dict[str, Any] = {
            "run_id": r.info.run_id, "search_id": t.get("hpsearch.search_id"),
            "status": t.get("hpsearch.status", r.info.status),
            "stopped_early": t.get("hpsearch.stopped_early", "false"),
            "epochs_run": t.get("hpsearch.epochs_run", m.get("epoch")),
            "best_epoch": best_ep, f"best_{metric}": m.get(f"best_{metric}"),
            "train_images_per_s": m.get("train_images_per_s"),
        }
        row.update({k: p.get(k) for k in RUN_PARAMS if k in p})
        row.update({k: p.get(k) for k in varied})
        for k in val_keys:
            row[f"val_{k}"] = tracker.metric_at_step(r.info.run_id, f"val_{k}", best_ep) \
                if best_ep else None
        row.update({f"test_{k}": m.get(f"test_{k}") for k in RUN_METRICS
                    if f"test_{k}" in m or k in RUN_METRICS[:2]})
        rows.append(row)
    key = f"best_{metric}"
    rows.sort(key=lambda d: -math.inf if d[key] is None else d[key], reverse=True)
    return rows


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    import csv

    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def compare_best(results_dir: str, experiments: Sequence[str], metric: str = "val_micro_f1",
                 tracking_uri: str | None = None) -> str:
    """Markdown: per experiment, its best run (by ``best_<metric>``) with val metrics at the best
    epoch, test metrics of that epoch, and the search wall time (parent run start to end)."""
    vk = ("micro_f1", "macro_f1")
    head = ("| experiment | family | run | best ep / run | val m-F1 | val M-F1 | test m-F1 | "
            "test M-F1 | test m-F1 per level | mistake sev. | path cons. | mAHP@250 | "
            "hp@10 | leaf acc. | trials (ASHA-stopped) | search wall s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for exp in experiments:
        t = _tracker(results_dir, exp, tracking_uri)
        rows = trial_rows(t, metric, vk)
        if not rows:
            lines.append(f"| {exp} | (no trial runs) |" + " |" * (head.count("|") - 3))
            continue
        b = rows[0]
        per_level = " / ".join(f"{b[f'test_micro_f1_level_{i}']:.3f}" for i in range(4)
                               if b.get(f"test_micro_f1_level_{i}") is not None)
        parents = t.runs(role="search")
        wall = sum((p.info.end_time - p.info.start_time) / 1000 for p in parents
                   if p.info.end_time)
        n_stop = sum(r["stopped_early"] == "true" for r in rows)

        def f(v: Any, d: int = 4) -> str:
            return "-" if v is None else f"{v:.{d}f}"

        lines.append(
            f"| {exp} | {b.get('model.family')} | {b['run_id'][:8]} | {b['best_epoch']} / "
            f"{b['epochs_run']} | {f(b.get('val_micro_f1'))} | {f(b.get('val_macro_f1'))} | "
            f"{f(b.get('test_micro_f1'))} | {f(b.get('test_macro_f1'))} | {per_level} | "
            f"{f(b.get('test_mistake_severity'), 3)} | {f(b.get('test_path_consistency'), 3)} | "
            f"{f(b.get('test_mahp_250'))} | {f(b.get('test_hp_at_10'))} | "
            f"{f(b.get('test_accuracy'))} | {len(rows)} ({n_stop}) | {wall:.0f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- CLI
# ---------------------------------------------------------------------------- label embeddings
def label_throughput(*, family: str = "hyperbolic_cone", dim: int = 10,
                     label_source: str = "wordnet", source_params: dict[str, Any] | None = None,
                     batch_size: int = 1024, negatives_per_side: int = 5,
                     non_basic_fraction: float = 0.5, epochs: int = 3, device: str = "cpu",
                     ceiling_batch: int = 65536, ceiling_steps: int = 20,
                     extra_params: dict[str, Any] | None = None,
                     threads: int | None = None,
                     sparse: Sequence[bool] = (False,)) -> dict[str, Any]:
    """Training throughput of a label-embedding family on a label graph (issue 5).

    Times whole ``LabelEmbeddingExperiment.train_one_epoch`` calls (negative sampling on the
    device, every optimizer step; one untimed warm-up epoch first) and, as the ceiling they are
    measured against, the bare energy forward + backward on ``ceiling_batch`` random node pairs
    (no sampling, no optimizer). Throughput is in **energies per second**: an epoch evaluates
    ``P · (1 + 2k)`` energies for ``P`` training positives and ``k`` negatives per side.

    ``sparse``: the values of ``model.params.sparse_updates`` to time (issue 15: ``(False,
    True)`` times dense and row-sparse updates side by side in one process, their epochs
    alternating, so that both see the same load on a shared machine). The ceiling is the
    dense-gradient lookup of before (``ceiling_energies_per_s``); with sparse modes the
    row-sparse-gradient lookup is timed too (``ceiling_sparse_grad_energies_per_s``).

    ``threads`` sets torch's CPU threads: on a busy machine more threads than free cores make
    these small ops many times slower (OpenMP threads wait for each other), so CPU figures are
    taken with 1 thread, as a 1-CPU Ray trial runs.

    Returns a dict with the graph size, the config, seconds per epoch (each timed epoch),
    epochs/s, energies/s of training and of the ceiling, and the load average around the run;
    the top-level figures are those of the first mode, ``modes`` holds each mode's, and
    ``sparse_over_dense`` the ratio of median epoch times (dense / sparse) when both ran.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    sparse = tuple(dict.fromkeys(bool(x) for x in sparse))
    if not sparse:
        raise ConfigError("label_throughput: sparse=() times nothing; pass (False,), (True,) "
                          "or (False, True)")

    load_before = _loadavg()
    dev = torch.device(device)
    exps: dict[bool, LabelEmbeddingExperiment] = {}
    setup: dict[bool, float] = {}
    for sp in sparse:
        cfg = TrialConfig.from_flat({
            "model.family": family, "model.params.dim": dim,
            "model.params.negatives_per_side": negatives_per_side,
            "model.params.non_basic_fraction": non_basic_fraction,
            "model.params.recon_max_nodes": 0, **{f"model.params.{k}": v for k, v in
                                                  (extra_params or {}).items()},
            "model.params.sparse_updates": sp,
            "data.params": {"label_source": label_source, **(source_params or {})},
            "optim.batch_size": batch_size, "optim.schedule": "none", "optim.epochs": epochs})
        t = time.perf_counter()
        exps[sp] = LabelEmbeddingExperiment(cfg, RunContext(device=dev))
        setup[sp] = time.perf_counter() - t
    first = exps[sparse[0]]
    n_pos = len(first.train_pos)
    per_epoch = n_pos * (1 + 2 * negatives_per_side)
    for exp in exps.values():
        exp.train_one_epoch(0)  # warm-up: allocator, kernels, autotuning
    _sync(dev)
    times: dict[bool, list[float]] = {sp: [] for sp in sparse}
    for e in range(epochs):  # alternate the modes epoch by epoch
        for sp, exp in exps.items():
            t = time.perf_counter()
            exp.train_one_epoch(e + 1)
            _sync(dev)
            times[sp].append(time.perf_counter() - t)
    # ceiling: energy forward + backward over random pairs, same model and dtype
    n = first.splits.num_nodes
    g = torch.Generator(device=dev).manual_seed(0)
    pairs = torch.randint(0, n, (ceiling_batch, 2), generator=g, device=dev)
    model = first.model
    w = model.weight

    def ceiling(sparse_grad: bool) -> float:
        keep, model.sparse_grad = model.sparse_grad, sparse_grad
        try:
            for _ in range(3):
                w.grad = None
                model.pair_energy(pairs).sum().backward()
            _sync(dev)
            t = time.perf_counter()
            for _ in range(ceiling_steps):
                w.grad = None
                model.pair_energy(pairs).sum().backward()
            _sync(dev)
            return ceiling_batch * ceiling_steps / (time.perf_counter() - t)
        finally:
            model.sparse_grad = keep
            w.grad = None

    ceil = ceiling(False)
    ceil_sparse = ceiling(True) if any(sparse) else None
    modes = {}
    for sp in sparse:
        med = float(np.median(times[sp]))
        modes["sparse" if sp else "dense"] = {
            "sparse_updates": sp, "setup_s": setup[sp], "epoch_s": times[sp],
            "epoch_s_median": med, "epochs_per_s": 1.0 / med,
            "train_energies_per_s": per_epoch / med, "train_positives_per_s": n_pos / med,
            "fraction_of_ceiling": per_epoch / med / ceil,
            "optimizer": type(exps[sp].optimizer).__name__}
    top = modes["sparse" if sparse[0] else "dense"]
    return {
        "family": family, "dim": dim, "label_source": label_source,
        "source_params": source_params or {}, "nodes": n,
        "closure_edges": int(len(first.splits.closure)), "train_positives": n_pos,
        "negatives_per_side": negatives_per_side, "batch_size": batch_size,
        "steps_per_epoch": -(-n_pos // batch_size), "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        **{k: top[k] for k in ("setup_s", "epoch_s", "epoch_s_median", "epochs_per_s",
                               "train_energies_per_s", "train_positives_per_s")},
        "ceiling_batch": ceiling_batch, "ceiling_energies_per_s": ceil,
        "ceiling_sparse_grad_energies_per_s": ceil_sparse, "modes": modes,
        "sparse_over_dense": (modes["dense"]["epoch_s_median"]
                              / modes["sparse"]["epoch_s_median"]
                              if len(modes) == 2 else None),
        "dtype": str(w.dtype).replace("torch.", ""), "torch": torch.__version__,
        "loadavg_before": load_before, "loadavg_after": _loadavg()}


class _Parser(argparse.ArgumentParser):
    """One-line argparse errors, like the rest of the CLI (bench sits below cli: no import)."""

    def error(self, message: str):  # noqa: ANN201 - argparse's signature
        self.exit(2, f"hpsearch: error: {message} ('{self.prog} --help' lists the options)\n")


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="hpsearch bench",
                                 description="input-pipeline and label-embedding benchmarks")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("input-pipeline", help="memmap cache vs per-batch JPEG decoding")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--archive", help="data.params.archive (CIFAR JPEG tarball)")
    p.add_argument("--data-root", help="data.root")
    p.add_argument("--limit-per-class", type=int)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--model", default="small_cnn", help="backbone: small_cnn, resnet18, ...")
    p.add_argument("--width", type=int, default=32, help="small_cnn width")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers (JPEG path)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", help="scratch dir for the fresh cache and JPEG files")
    p.add_argument("--reuse-cache", action="store_true", help="use the normal cache location "
                   "instead of a fresh one (no build time)")
    p.add_argument("--json", help="also write the report as JSON to this file")

    r = sub.add_parser("resize", help="decode + resize generated JPEGs (448 -> 224)")
    r.add_argument("--n", type=int, default=64)
    r.add_argument("--src", type=int, default=448)
    r.add_argument("--dst", type=int, default=224)
    r.add_argument("--quality", type=int, default=90)
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--json", help="also write the rows as JSON to this file")
    c = sub.add_parser("runs-csv", help="one CSV row per trial run of an MLflow experiment")
    c.add_argument("--results-dir", default="results")
    c.add_argument("--tracking-uri")
    c.add_argument("--experiment", required=True, help="comma-separated experiments")
    c.add_argument("--metric", default="val_micro_f1")
    c.add_argument("--out", required=True)

    t = sub.add_parser("label-throughput", help="label-embedding training energies/s vs the "
                       "bare energy forward+backward ceiling (WordNet nouns by default)")
    t.add_argument("--family", default="hyperbolic_cone")
    t.add_argument("--dim", type=int, default=10)
    t.add_argument("--label-source", default="wordnet")
    t.add_argument("--source-param", action="append", default=[], metavar="KEY=VALUE",
                   help="label-source params, e.g. root=entity.n.01 (all WordNet nouns)")
    t.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="further model.params, e.g. optimizer=riemannian_adam")
    t.add_argument("--batch-size", type=int, default=1024)
    t.add_argument("--negatives-per-side", type=int, default=5)
    t.add_argument("--non-basic-fraction", type=float, default=0.5)
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    t.add_argument("--ceiling-batch", type=int, default=65536)
    t.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    t.add_argument("--sparse", choices=["off", "on", "both"], default="off",
                   help="model.params.sparse_updates: off (dense updates, as before), on, or "
                   "both side by side in one process (epochs alternating)")
    t.add_argument("--json", help="also write the result as JSON to this file")

    m = sub.add_parser("compare", help="Markdown table of each experiment's best run")
    m.add_argument("--results-dir", default="results")
    m.add_argument("--tracking-uri")
    m.add_argument("--experiments", required=True, help="comma-separated")
    m.add_argument("--metric", default="val_micro_f1")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    try:
        if args.command == "input-pipeline":
            rep = input_pipeline(dataset=args.dataset, archive=args.archive,
                                 data_root=args.data_root, limit_per_class=args.limit_per_class,
                                 image_size=args.image_size, model=args.model, width=args.width,
                                 batches=args.batches, batch_size=args.batch_size,
                                 device=args.device, num_workers=args.num_workers,
                                 seed=args.seed, work_dir=args.work_dir,
                                 fresh_cache=not args.reuse_cache)
            print(json.dumps(rep.config))
            if rep.cache_build_s is not None:
                print(f"cache build (fresh cache dir): {rep.cache_build_s:.2f} s")
            print(f"cache load (cache present): {rep.cache_load_s:.3f} s")
            print(f"JPEG files prepared once in {rep.jpeg_prepare_s:.2f} s")
            print(rep.markdown())
            if args.json:
                Path(args.json).write_text(json.dumps(asdict(rep), indent=1))
        elif args.command == "label-throughput":
            import yaml

            kv = lambda items: {k: yaml.safe_load(v) for k, v in  # noqa: E731
                                (i.split("=", 1) for i in items)}
            res = label_throughput(
                family=args.family, dim=args.dim, label_source=args.label_source,
                source_params=kv(args.source_param), batch_size=args.batch_size,
                negatives_per_side=args.negatives_per_side,
                non_basic_fraction=args.non_basic_fraction, epochs=args.epochs,
                device=args.device, ceiling_batch=args.ceiling_batch,
                extra_params=kv(args.param), threads=args.threads,
                sparse={"off": (False,), "on": (True,), "both": (False, True)}[args.sparse])
            print(json.dumps(res))
            print(f"{res['family']} d={res['dim']} on {res['nodes']} nodes / "
                  f"{res['train_positives']} train edges ({res['device_name']}): "
                  f"{res['epochs_per_s']:.3f} epochs/s, training "
                  f"{res['train_energies_per_s']:,.0f} energies/s, bare energy fwd+bwd "
                  f"{res['ceiling_energies_per_s']:,.0f}/s")
            for name, m in res["modes"].items():
                print(f"  {name} ({m['optimizer']}): {m['epoch_s_median']:.2f} s/epoch, "
                      f"{m['train_energies_per_s']:,.0f} energies/s = "
                      f"{m['fraction_of_ceiling']:.2f} x the ceiling")
            if res["sparse_over_dense"] is not None:
                print(f"  sparse is {res['sparse_over_dense']:.2f} x faster per epoch")
            if args.json:
                Path(args.json).write_text(json.dumps(res, indent=1))
        elif args.command == "runs-csv":
            rows = []
            for exp in args.experiment.split(","):
                rows += [{"experiment": exp, **r} for r in trial_rows(
                    _tracker(args.results_dir, exp, args.tracking_uri), args.metric,
                    ("micro_f1", "macro_f1"))]
            write_csv(rows, args.out)
            print(f"{len(rows)} runs -> {args.out}")
        elif args.command == "compare":
            print(compare_best(args.results_dir, args.experiments.split(","), args.metric,
                               args.tracking_uri))
        else:
            before = _loadavg()
            rows = resize_benchmark(n=args.n, src=args.src, dst=args.dst,
                                    quality=args.quality, repeats=args.repeats,
                                    threads=args.threads)
            print(f"loadavg before: {before}, after: {_loadavg()}")
            print(f"| method ({args.src}->{args.dst}, {args.n} JPEGs q{args.quality}, "
                  f"{args.threads} thread) | images/s | ms/image | mean abs diff vs "
                  "torchvision |\n|---|---|---|---|")
            for r in rows:
                print(f"| {r['method']} | {r['images_per_s']:.1f} | {r['ms_per_image']:.2f} | "
                      f"{r['mean_abs_diff_vs_torchvision']:.2f} |")
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    except HpsearchError as e:
        print(f"hpsearch.bench: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
