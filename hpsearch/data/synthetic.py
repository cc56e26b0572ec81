"""The embedded default dataset: procedurally generated hierarchical images.

Each node of a random 4-level tree (default 4 -> 10 -> 25 -> 60) owns a colour template made
of random noise at a level-specific spatial frequency: coarse levels draw smooth, strong
blobs (global colour layout), fine levels draw high-frequency, weaker texture. An image is the
sum of the templates along its leaf's root path, randomly shifted, with per-image contrast
jitter and pixel noise. Telling families apart needs only the low frequencies; telling sibling
species apart needs the faint fine texture, so the finest level is genuinely the hardest.
Leaf counts follow a Zipf law like ETHEC's long tail. Deterministic by seed; cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from hpsearch.config import DataConfig
from hpsearch.data.base import DATASETS, HierDataset, ImageSplit
from hpsearch.errors import ConfigError
from hpsearch.hierarchy import Hierarchy, encode_level_labels

DEFAULTS = {
    "level_sizes": [4, 10, 25, 60],
    "max_per_leaf": 300,  # images of the most frequent leaf
    "min_per_leaf": 12,  # images of the rarest leaves
    "zipf": 0.7,  # long-tail exponent of the leaf counts
    "noise": 0.25,  # per-pixel Gaussian noise (image range ~[0, 1])
    "amplitudes": [0.55, 0.35, 0.25, 0.2],  # template strength per level, coarse to fine
    "grids": [2, 4, 8, 16],  # noise grid per level: 2x2 is smooth, 16x16 is fine texture
    "shift": 2,  # max random translation in pixels
    "size": 32,
    "seed": 0,
}
LEVEL_NAMES = ("family", "subfamily", "genus", "species")
PREFIX = ("fam", "sub", "gen", "sp")


def cache_dir(root: str | None) -> Path:
    base = root or os.environ.get("HPSEARCH_CACHE") or Path.home() / ".cache" / "hpsearch"
    return Path(base)


def _params(cfg: DataConfig) -> dict:
    unknown = set(cfg.params) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"data.params.{sorted(unknown)[0]}: unknown synthetic option; "
                          f"allowed: {', '.join(sorted(DEFAULTS))}")
    p = {**DEFAULTS, **cfg.params}
    p["size"] = cfg.image_size
    sizes = list(p["level_sizes"])
    if any(b < a for a, b in zip(sizes, sizes[1:], strict=False)) or min(sizes) < 1:
        raise ConfigError(f"data.params.level_sizes must be positive and non-decreasing, "
                          f"got {sizes}")
    if not (len(p["amplitudes"]) == len(p["grids"]) == len(sizes)):
        raise ConfigError("data.params: level_sizes, amplitudes and grids need equal lengths")
    if p["min_per_leaf"] < 3:
        raise ConfigError(f"data.params.min_per_leaf must be >= 3 (one image per split), "
                          f"got {p['min_per_leaf']}")
    return p


def make_tree(level_sizes: list[int], rng: np.random.Generator) -> list[list[str]]:
    """Random tree with the given level sizes; every parent gets at least one child.

    Returns one root-to-leaf path (of names) per last-level node.
    """
    names = [[f"{PREFIX[i] if i < len(PREFIX) else f'l{i}_'}{j:03d}" for j in range(n)]
             for i, n in enumerate(level_sizes)]
    parent: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    for lvl in range(1, len(level_sizes)):
        n_par, n = level_sizes[lvl - 1], level_sizes[lvl]
        p = np.concatenate([np.arange(n_par), rng.integers(0, n_par, n - n_par)])
        parent.append(np.sort(p))  # siblings get consecutive local indices
    paths = []
    for j in range(level_sizes[-1]):
        path = [j]
        for lvl in range(len(level_sizes) - 1, 0, -1):
            path.append(int(parent[lvl][path[-1]]))
        paths.append([names[lvl][k] for lvl, k in enumerate(reversed(path))])
    return paths


def _templates(n: int, grid: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` zero-mean colour noise templates ``[n, size, size, 3]`` at spatial scale ``grid``."""
    import torch
    import torch.nn.functional as F

    z = torch.from_numpy(rng.standard_normal((n, 3, grid, grid)).astype(np.float32))
    up = F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False)
    up = up / up.flatten(1).std(dim=1).clamp_min(1e-6)[:, None, None, None]
    return up.permute(0, 2, 3, 1).numpy()


def generate(p: dict) -> tuple[np.ndarray, list[list[str]], np.ndarray]:
    """Images ``uint8 [N, S, S, 3]``, the label path of every image, and the split id of each
    image (0 train, 1 val, 2 test: 80/10/10 per leaf, at least one val and one test image)."""
    rng = np.random.default_rng(p["seed"])
    sizes, size = list(p["level_sizes"]), int(p["size"])
    paths = make_tree(sizes, rng)
    n_leaf = len(paths)
    ranks = rng.permutation(n_leaf) + 1
    counts = np.maximum(p["min_per_leaf"], np.round(p["max_per_leaf"] * ranks ** -p["zipf"]))
    counts = counts.astype(np.int64)
    index = [{name: k for k, name in enumerate(sorted({pt[lvl] for pt in paths}))}
             for lvl in range(len(sizes))]
    temps = [_templates(sizes[lvl], p["grids"][lvl], size + 2 * p["shift"], rng)
             for lvl in range(len(sizes))]
    leaf_of = np.repeat(np.arange(n_leaf), counts)
    n = len(leaf_of)
    canvas = np.full((n, size + 2 * p["shift"], size + 2 * p["shift"], 3), 0.5, np.float32)
    for lvl in range(len(sizes)):
        node = np.array([index[lvl][paths[j][lvl]] for j in range(n_leaf)])[leaf_of]
        gain = p["amplitudes"][lvl] * rng.uniform(0.7, 1.3, (n, 1, 1, 1)).astype(np.float32)
        canvas += 0.5 * gain * temps[lvl][node]
    s = p["shift"]
    dx, dy = rng.integers(0, 2 * s + 1, n), rng.integers(0, 2 * s + 1, n)
    img = np.stack([canvas[i, dy[i]:dy[i] + size, dx[i]:dx[i] + size] for i in range(n)])
    img += rng.normal(0, p["noise"], img.shape).astype(np.float32)
    img = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    split = np.zeros(n, dtype=np.int64)
    for j in range(n_leaf):
        idx = rng.permutation(np.flatnonzero(leaf_of == j))
        n_val = max(1, int(round(0.1 * len(idx))))
        split[idx[:n_val]] = 1
        split[idx[n_val:2 * n_val]] = 2
    return img, [paths[j] for j in leaf_of], split


def _level_names(n: int) -> tuple[str, ...]:
    return LEVEL_NAMES[:n] if n <= len(LEVEL_NAMES) else tuple(f"level{i}" for i in range(n))


@DATASETS.register("synthetic")
def build_synthetic(cfg: DataConfig) -> HierDataset:
    """The embedded default dataset (see module docstring); cached as ``.npy`` under
    ``cfg.root`` (default ``$HPSEARCH_CACHE`` or ``~/.cache/hpsearch``)."""
    p = _params(cfg)
    key = hashlib.sha1(json.dumps(p, sort_keys=True).encode()).hexdigest()[:12]
    d = cache_dir(cfg.root) / f"synthetic-{key}"
    if not (d / "done").exists():
        img, paths, split = generate(p)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f"images.{os.getpid()}.npy"
        np.save(tmp, img)
        os.replace(tmp, d / "images.npy")
        (d / "meta.json").write_text(json.dumps({"params": p, "paths": paths,
                                                 "split": split.tolist()}))
        (d / "done").write_text("ok")
    meta = json.loads((d / "meta.json").read_text())
    images = np.load(d / "images.npy", mmap_mode="r")
    paths, split = meta["paths"], np.asarray(meta["split"])
    h = Hierarchy.from_level_labels(sorted({tuple(x) for x in paths}),
                                    level_names=_level_names(len(p["level_sizes"])))
    labels = encode_level_labels(h, paths)

    def part(k: int) -> ImageSplit:
        idx = np.flatnonzero(split == k)
        return ImageSplit(np.ascontiguousarray(images[idx]), labels[idx])

    return HierDataset("synthetic", h, part(0), part(1), part(2),
                       mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), meta={"cache": str(d)})
