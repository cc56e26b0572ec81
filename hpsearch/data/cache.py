"""One on-disk cache of decoded, resized images shared by every real dataset.

A dataset is decoded once into ``<cache>/<name>-<hash>/images.npy`` (uint8 ``[N, S, S, C]``)
and every later trial memory-maps it, so trials never decode JPEGs and all trials of a node share
the page cache. Builders lay rows out split by split (train, val, test) so a split is a
contiguous slice of the memory map, i.e. a view, not a copy.

Decoding runs on CPU threads by default. ``HPSEARCH_DECODE_DEVICE=cuda`` (or ``auto``: CUDA when
this process sees a GPU) decodes JPEG batches with nvJPEG through torchvision
(``decode_jpeg(list, device="cuda")``) and resizes them on the GPU, which pays for large
images (ETHEC's 448 px specimens; issue 3); a batch holding a file nvJPEG cannot read (a PNG,
say) is decoded on the CPU instead, file by file.

Concurrency: a build holds an exclusive ``fcntl`` lock on ``<entry>/.lock``; a second process
waits for it and then finds the finished file. The array is written to a temporary file and
``os.replace``-d into place, so ``images.npy`` exists only when complete.

A build shows a progress bar on stderr (:func:`progress_bar`) when stderr is a terminal, or
always with ``HPSEARCH_PROGRESS=1`` (``0``: never).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from hpsearch.errors import DataError

CACHE_VERSION = 1  # bump when decoding/resizing changes, to invalidate old entries
CHUNK = 512  # images decoded per batch of work


def cache_root(root: str | os.PathLike | None = None, override: str | None = None) -> Path:
    """Where cached arrays live.

    Order: an explicit ``override`` (the ``cache_dir`` dataset option), then
    ``$HPSEARCH_CACHE`` (e.g. a node-local SSD), then ``<root>/.hpsearch-cache`` when the dataset
    root is writable, then ``~/.cache/hpsearch``.
    """
    if override:
        return Path(override).expanduser()
    env = os.environ.get("HPSEARCH_CACHE")
    if env:
        return Path(env).expanduser()
    if root is not None and os.access(root, os.W_OK):
        return Path(root) / ".hpsearch-cache"
    return Path.home() / ".cache" / "hpsearch"


def cache_key(parts: Any) -> str:
    """12 hex digits of the SHA-1 of ``parts`` (JSON-serialisable) plus the cache version."""
    blob = json.dumps([CACHE_VERSION, parts], sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


@contextmanager
def locked(path: Path):
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh_ = open(path, "a+")  # noqa: SIM115 - closed by the with below
    except OSError as e:
        raise DataError(f"cannot write the image cache at {path.parent} ({e.strerror}); point "
                        "it at a writable place with data.params.cache_dir or $HPSEARCH_CACHE"
                        ) from None
    with fh_ as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # say why we stand still, then wait
            print(f"hpsearch: waiting for another process to finish the cache entry "
                  f"{path.parent} (lock {path.name})", file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def progress_bar(total: int, desc: str, unit: str = "img") -> Any:
    """A tqdm bar on stderr for a long preparation step (a cache build, feature extraction):
    shown when ``$HPSEARCH_PROGRESS`` is ``1``, hidden when it is ``0``, else shown when stderr
    is a terminal (so never in a log file or a Ray worker, whose stderr is a file). A hidden
    bar is tqdm's own no-op; ``update`` and ``close`` work either way."""
    from tqdm import tqdm

    force = os.environ.get("HPSEARCH_PROGRESS", "").strip()
    try:
        show = force == "1" or (force != "0" and sys.stderr.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stderr
        show = force == "1"
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not show,
                dynamic_ncols=True, mininterval=0.5)


def entry_dir(name: str, key_parts: Any, cache: Path) -> Path:
    return cache / f"{name}-{cache_key(key_parts)}"


def cached_image_array(
    key_parts: Any,
    paths_or_loader: Sequence[str | os.PathLike | Encoded]
    | Callable[[], np.ndarray | Sequence[str | os.PathLike | Encoded]],
    size: int | None,
    *,
    cache: Path,
    name: str = "images",
    workers: int | None = None,
    stamp: Callable[[], str | None] | None = None,
) -> np.memmap:
    """Decode (once) and memory-map a uint8 ``[N, size, size, C]`` image array.

    Args:
        key_parts: JSON-serialisable identity of the content (source files + fingerprints,
            order, options); a different key is a different entry.
        paths_or_loader: image files or :class:`Encoded` bytes (decoded to RGB) in row order,
            or a uint8 ``[N, H, W, C]`` array (CIFAR pickles, IDX files; resized), or a
            callable returning either, called only when the entry must be built.
        size: side of the square output; ``None`` keeps the loader's size (paths need a size).
        cache: the cache root (see :func:`cache_root`).
        name: entry-name prefix, for humans browsing the cache.
        workers: decoding threads (default: all CPUs, at most 16).
        stamp: digest of the source files' sizes and mtimes (see
            :func:`hpsearch.data._io.files_stamp`), ``None`` when some are absent. Stored with
            the entry; a different stamp rebuilds it (an image replaced or moved to another
            class keeps its name, so the key alone would serve the old pixels). When the
            files are gone the entry is used as it is: a node may hold only the cache.

    Returns:
        ``np.load(<entry>/images.npy, mmap_mode="r")``.

    Raises:
        DataError: an image is missing or cannot be decoded (names the file).
    """
    d = entry_dir(name, key_parts, cache)
    final, stamp_file = d / "images.npy", d / "stamp.txt"
    now = stamp() if stamp is not None else None

    def fresh() -> bool:
        if not final.is_file():
            return False
        return now is None or (stamp_file.is_file() and stamp_file.read_text() == now)

    if fresh():
        return np.load(final, mmap_mode="r")
    with locked(d / ".lock"):
        if fresh():  # another process finished it while we waited
            return np.load(final, mmap_mode="r")
        for stale in d.glob("images.tmp-*.npy"):  # left by a killed build; we hold the lock
            stale.unlink(missing_ok=True)
        tmp = d / f"images.tmp-{os.getpid()}.npy"
        try:
            src = paths_or_loader() if callable(paths_or_loader) else paths_or_loader
            desc = f"image cache {d.name}"
            if isinstance(src, np.ndarray):
                _write_from_array(tmp, src, size, desc)
            else:
                if size is None:
                    raise ValueError("size is required when decoding image files")
                items = [p if isinstance(p, Encoded) else Path(p) for p in src]
                _write_from_paths(tmp, items, size, workers, desc)
            stamp_file.unlink(missing_ok=True)  # never a new stamp beside old pixels
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()
        if now is not None:
            stamp_file.write_text(now)
        (d / "key.json").write_text(json.dumps(key_parts, default=str)[:100_000])
    return np.load(final, mmap_mode="r")


def resize_uint8(batch: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``[N, H, W, C]`` to ``[N, size, size, C]``: bilinear with antialias."""
    if batch.shape[1] == size and batch.shape[2] == size:
        return np.ascontiguousarray(batch, dtype=np.uint8)
    import torch
    import torchvision.transforms.v2.functional as TF

    if not batch.flags.writeable or not batch.flags.c_contiguous:
        batch = np.array(batch, dtype=np.uint8, order="C")  # torch wants writable memory
    t = torch.from_numpy(batch).permute(0, 3, 1, 2)
    out = TF.resize(t, [size, size], antialias=True)
    return out.permute(0, 2, 3, 1).contiguous().numpy()


def _write_from_array(tmp: Path, arr: np.ndarray, size: int | None,
                      desc: str = "image cache") -> None:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise DataError(f"dataset loader returned {arr.dtype} {arr.shape}; expected uint8 "
                        "[N, H, W, C]")
    s_h, s_w = (arr.shape[1], arr.shape[2]) if size is None else (size, size)
    out = _allocated_memmap(tmp, (len(arr), s_h, s_w, arr.shape[3]))
    with progress_bar(len(arr), desc) as bar:
        for a in range(0, len(arr), 4 * CHUNK):
            out[a:a + 4 * CHUNK] = arr[a:a + 4 * CHUNK] if size is None \
                else resize_uint8(arr[a:a + 4 * CHUNK], size)
            bar.update(len(out[a:a + 4 * CHUNK]))
    out.flush()
    del out


def _allocated_memmap(tmp: Path, shape: tuple[int, ...]) -> np.memmap:
    """``open_memmap`` with its blocks reserved up front. A memmap is a sparse file: on a full
    disk the first write to an unbacked page kills the process with SIGBUS and no message,
    so reserve the bytes first and turn ENOSPC into a :class:`DataError` that says where."""
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    if hasattr(os, "posix_fallocate"):
        try:
            with open(tmp, "r+b") as fh:
                os.posix_fallocate(fh.fileno(), 0, os.path.getsize(tmp))
        except OSError as e:
            del out
            tmp.unlink(missing_ok=True)
            need = int(np.prod(shape))
            raise DataError(f"cannot reserve {need / 2**20:.0f} MiB for the image cache in "
                            f"{tmp.parent} ({e.strerror}); free space there, or point the "
                            "cache elsewhere with data.params.cache_dir or $HPSEARCH_CACHE"
                            ) from None
    return out


class Encoded(NamedTuple):
    """An encoded image already in memory (e.g. a tar member): ``name`` is for messages."""

    name: str
    data: bytes


def decode_image(src: Path | Encoded, size: int, *, gray: bool = False) -> np.ndarray:
    """One file -> uint8 ``[size, size, 3]`` RGB (``[size, size, 1]`` with ``gray``).

    torchvision's decoder, PIL as the fallback for formats it lacks (BMP, TIFF, ...). 16-bit
    PNGs decode to uint16 and are rescaled to uint8 (``to_dtype(scale=True)``), not wrapped.
    Training (the cache) and ``predict`` (bundles) both decode through here, so an image
    gives the model the same pixels in both.
    """
    path = src.name if isinstance(src, Encoded) else src
    data = _read(src)
    img = None
    try:
        import torch
        import torchvision.transforms.v2.functional as TF
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_image as tv_decode

        t = tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                      mode=ImageReadMode.GRAY if gray else ImageReadMode.RGB)
        if t.dtype != torch.uint8:
            t = TF.to_dtype(t, torch.uint8, scale=True)
        img = t.permute(1, 2, 0).numpy()
    except Exception:  # unsupported format or torchvision build: try PIL
        try:
            import io

            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                img = np.asarray(im.convert("L" if gray else "RGB"))
            if gray:
                img = img[..., None]
        except Exception:
            raise DataError(f"{path}: cannot decode; expected a JPEG/PNG (or PIL-readable) "
                            "image") from None
    return resize_uint8(img[None], size)[0]


def decode_device() -> str:
    """``cpu`` or ``cuda``, from ``$HPSEARCH_DECODE_DEVICE`` (``cpu`` default, ``cuda``,
    ``auto`` = CUDA when available)."""
    want = os.environ.get("HPSEARCH_DECODE_DEVICE", "cpu").strip().lower() or "cpu"
    if want not in ("cpu", "cuda", "auto"):
        raise DataError(f"HPSEARCH_DECODE_DEVICE={want!r}; expected cpu, cuda or auto")
    if want == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if want == "cuda":
        raise DataError("HPSEARCH_DECODE_DEVICE=cuda but torch sees no CUDA device; unset it "
                        "or use auto")
    return "cpu"


def _read(src: Path | Encoded) -> bytes:
    if isinstance(src, Encoded):
        return src.data
    try:
        return Path(src).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{src}: image file not found") from None


def decode_batch(srcs: Sequence[Path | Encoded], size: int, device: str) -> np.ndarray:
    """Files -> uint8 ``[N, size, size, 3]``: one batched ``torchvision.io.decode_jpeg`` call on
    ``device`` (nvJPEG on CUDA), resized there with the same antialiased bilinear resize as
    :func:`resize_uint8`. When the batch decoder rejects the batch (e.g. it holds a PNG), every
    file of it is decoded by :func:`decode_image` instead."""
    import torch
    import torchvision.transforms.v2.functional as TF
    from torchvision.io import ImageReadMode, decode_jpeg

    datas = [torch.frombuffer(bytearray(_read(s)), dtype=torch.uint8) for s in srcs]
    out = np.empty((len(srcs), size, size, 3), dtype=np.uint8)
    try:
        imgs = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    except Exception:  # noqa: BLE001 - a non-JPEG or unsupported file: one by one
        imgs = None
    for i, src in enumerate(srcs):
        if imgs is None:
            out[i] = decode_image(src, size)
            continue
        t = imgs[i]
        if t.shape[-2:] != (size, size):
            t = TF.resize(t, [size, size], antialias=True)
        out[i] = t.permute(1, 2, 0).cpu().numpy()
    return out


def _write_from_paths(
    tmp: Path, paths: list[Path | Encoded], size: int, workers: int | None,
    desc: str = "image cache",
) -> None:
    missing = [p for p in paths if not isinstance(p, Encoded) and not p.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: image file not found ({len(missing)} of {len(paths)} "
                        "listed images are missing)")
    out = _allocated_memmap(tmp, (len(paths), size, size, 3))
    device = decode_device()
    with progress_bar(len(paths), desc) as bar:
        if device != "cpu":
            for a in range(0, len(paths), CHUNK // 4):  # 128 images per nvJPEG batch
                out[a:a + CHUNK // 4] = decode_batch(paths[a:a + CHUNK // 4], size, device)
                bar.update(len(paths[a:a + CHUNK // 4]))
            out.flush()
            return
        workers = workers or min(16, os.cpu_count() or 1)

        def work(i: int) -> None:
            out[i] = decode_image(paths[i], size)

        if workers <= 1 or len(paths) < 64:
            for i in range(len(paths)):
                work(i)
                bar.update(1)
        else:
            # decoders and torch kernels release the GIL, so threads scale without pickling
            import torch

            prev = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(workers) as pool:
                    for a in range(0, len(paths), CHUNK):
                        for _ in pool.map(work, range(a, min(a + CHUNK, len(paths)))):
                            bar.update(1)
            finally:
                torch.set_num_threads(prev)
    out.flush()
