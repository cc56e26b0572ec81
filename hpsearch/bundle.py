"""Self-contained export bundles and prediction from them (no Ray, no MLflow).

A bundle directory holds ``manifest.json`` (task, family, files and their SHA-256),
``config.json`` (the fully resolved trial config), ``hierarchy.json``, the weights, the
preprocessing, and for image classifiers a ``torch.export`` program (``program.pt2``) that maps
uint8 ``[B, H, W, C]`` images to per-level probabilities. ``SHA256SUMS`` covers every file;
loading verifies it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hpsearch.data.cache import decode_image
from hpsearch.data.transforms import Preprocess
from hpsearch.errors import ExportError
from hpsearch.hierarchy import Hierarchy
from hpsearch.models import build_model
from hpsearch.models.hedging import hedged_paths, predicted_path
from hpsearch.tasks import TASKS, Experiment, task_of, validate_trial
from hpsearch.tasks.classifier import PredictProgram

FORMAT_VERSION = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bundle(exp: Experiment, out_dir: str | Path,
                 extra: dict[str, Any] | None = None) -> Path:
    """Export experiment ``exp`` (its current weights) into ``out_dir``."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty; choose a new --out directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create the bundle directory {out} ({e.strerror}); choose "
                          "a writable --out") from None
    cfg = exp.cfg
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "task": task_of(cfg).name, "family": cfg.model.family,
        "dataset": cfg.data.name, "torch": torch.__version__, **(extra or {}),
    }
    manifest.update(exp.export(out))
    (out / "config.json").write_text(json.dumps(cfg.model_dump(), indent=1))
    if exp.hierarchy is not None:
        (out / "hierarchy.json").write_text(json.dumps(exp.hierarchy.to_dict()))
    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "manifest.json")
    manifest["files"] = {f: _sha256(out / f) for f in files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    sums = [f"{_sha256(out / f)}  {f}" for f in [*files, "manifest.json"]]
    (out / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return out


@dataclass(frozen=True, eq=False)
class Bundle:
    path: Path
    manifest: dict[str, Any]
    hierarchy: Hierarchy | None

    @property
    def config(self):
        return validate_trial(json.loads((self.path / "config.json").read_text()))


def load_bundle(path: str | Path) -> Bundle:
    """Open a bundle and verify every checksum."""
    p = Path(path)
    if not (p / "manifest.json").is_file() or not (p / "SHA256SUMS").is_file():
        raise ExportError(f"{p} is not an hpsearch bundle (no manifest.json / SHA256SUMS); "
                          "create one with 'hpsearch export RUN_ID --out DIR'")
    sums: dict[str, str] = {}
    for n, line in enumerate((p / "SHA256SUMS").read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise ExportError(f"{p / 'SHA256SUMS'} line {n} is malformed: {line[:80]!r}")
        sums[parts[1].strip()] = parts[0]
    # every file of the bundle must be covered: a line deleted from SHA256SUMS must not let
    # an edited file through
    present = {f.name for f in p.iterdir() if f.is_file() and f.name != "SHA256SUMS"}
    unlisted = sorted(present - set(sums))
    if unlisted or "manifest.json" not in sums:
        raise ExportError(f"bundle {p}: {', '.join(unlisted) or 'manifest.json'} not covered "
                          "by SHA256SUMS: the bundle is corrupt or was edited")
    for name, digest in sums.items():
        f = p / name
        if not f.is_file():
            raise ExportError(f"bundle file {f} is missing")
        if _sha256(f) != digest:
            raise ExportError(f"checksum mismatch for {f}: the bundle is corrupt or was edited")
    try:
        manifest = json.loads((p / "manifest.json").read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{p / 'manifest.json'}: not valid JSON ({e})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"bundle {p} has format_version {manifest.get('format_version')!r}; "
                          f"this hpsearch reads version {FORMAT_VERSION}: export it again")
    missing = sorted(set(manifest.get("files", {})) - set(sums))
    if missing:
        raise ExportError(f"bundle {p}: manifest lists {', '.join(missing)} but SHA256SUMS "
                          "does not cover them")
    h = None
    if (p / "hierarchy.json").is_file():
        h = Hierarchy.from_dict(json.loads((p / "hierarchy.json").read_text()))
    return Bundle(p, manifest, h)


def read_images(paths: Sequence[str | Path], size: int, channels: int = 3) -> torch.Tensor:
    """Decode image files into uint8 ``[B, size, size, C]`` exactly as the training cache does
    (:func:`hpsearch.data.cache.decode_image`: same decoders, 16-bit scaling, resize)."""
    out = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"image {path} does not exist")
        out.append(torch.from_numpy(decode_image(path, size, gray=channels == 1)))
    return torch.stack(out)


class Predictor:
    """Per-level probabilities for images, from a classifier bundle."""

    def __init__(self, bundle: Bundle) -> None:
        task = bundle.manifest.get("task")
        if task not in TASKS or TASKS.get(task).exports != "predictor":
            raise ExportError(f"bundle {bundle.path} holds a {bundle.manifest.get('task')!r} "
                              "model; 'predict' needs an image classifier")
        self.bundle = bundle
        self.h = bundle.hierarchy
        self.pre = bundle.manifest["preprocess"]
        if "program" in bundle.manifest:
            self.fn = torch.export.load(str(bundle.path / bundle.manifest["program"])).module()
        else:  # the family did not export: rebuild it from config + weights
            cfg = bundle.config
            in_ch = 1 if cfg.model.grayscale else self.pre["channels"]
            model = build_model(cfg.model, self.h, in_ch)
            model.load_state_dict(torch.load(bundle.path / bundle.manifest["weights"],
                                             map_location="cpu", weights_only=True))
            pre = Preprocess(mean=tuple(self.pre["mean"]), std=tuple(self.pre["std"]),
                             size=self.pre["size"], grayscale=self.pre["grayscale"])
            self.fn = PredictProgram(model.eval(), pre)

    @torch.no_grad()
    def level_probs(self, images: torch.Tensor) -> list[torch.Tensor]:
        flat = self.fn(images)
        return list(torch.split(flat, list(self.h.level_sizes), dim=-1))

    def predict_files(self, paths: Sequence[str | Path], hedge: float | None = None,
                      batch_size: int = 64) -> list[dict[str, Any]]:
        """Label path per image file, decoded and run ``batch_size`` images at a time."""
        if hedge is not None and not 0.0 <= hedge <= 1.0:  # also refuses NaN
            raise ExportError(f"--hedge is a probability threshold in [0, 1], got {hedge}")
        cumulative = self.bundle.manifest.get("family") in CUMULATIVE_FAMILIES
        out: list[dict[str, Any]] = []
        for a in range(0, len(paths), batch_size):
            chunk = list(paths[a:a + batch_size])
            probs = self.level_probs(read_images(chunk, self.pre["size"],
                                                 self.pre["channels"]))
            out += [dict(image=str(p), path=path) for p, path in
                    zip(chunk, label_paths(self.h, probs, hedge, cumulative=cumulative),
                        strict=True)]
        return out


# families whose per-level scores are not marginals: hedge on the product along the path
CUMULATIVE_FAMILIES = frozenset({"per_level", "masked_per_level", "cosine_embedding",
                                 "multilabel"})


def label_paths(h: Hierarchy, probs: list[torch.Tensor], hedge: float | None = None, *,
                cumulative: bool = False) -> list[list[dict[str, Any]]]:
    """Root-to-leaf path per image (greedy top-down through the hierarchy, so it is always a
    consistent path), each node with its probability at its level. With ``hedge=τ`` the path
    stops before the first level whose confidence is below τ (see
    :mod:`hpsearch.models.hedging`; ``cumulative`` multiplies probabilities along the path)."""
    path = predicted_path(probs, h)
    depth = torch.full((len(path),), h.num_levels)
    if hedge is not None:
        depth, _ = hedged_paths(probs, hedge, hierarchy=h, cumulative=cumulative)
    out = []
    for i in range(len(path)):
        steps = []
        for lvl in range(int(depth[i])):
            local = int(path[i, lvl])
            g = h.global_index(lvl, local)
            level_name = h.level_names[lvl] if h.level_names else f"level_{lvl}"
            steps.append({"level": level_name, "label": h.names[g],
                          "prob": round(float(probs[lvl][i, local]), 6)})
        out.append(steps)
    return out
