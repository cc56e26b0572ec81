"""Self-contained export bundles and prediction from them (no Ray, no MLflow).

A bundle directory holds ``manifest.json`` (task, family, files and their SHA-256),
``config.json`` (the fully resolved trial config), ``hierarchy.json``, the weights, the
preprocessing, and for image classifiers a ``torch.export`` program (``program.pt2``) that maps
uint8 ``[B, H, W, C]`` images to per-level probabilities. Families with label vectors
(``cosine_embedding``, thesis §5.1) add ``label_vectors.pt`` (:func:`load_label_vectors`): the
label embeddings in hierarchy order with their names and levels. ``SHA256SUMS`` covers every
file; loading verifies it.

Trust model (docs/security.md):

* ``SHA256SUMS`` is unkeyed: it catches corruption and careless edits, not tampering (whoever
  edits a file can rewrite the sums).
* Signing: with ``HPSEARCH_BUNDLE_KEY`` set, :func:`write_bundle` writes ``SIGNATURE``, an
  HMAC-SHA256 under that key of ``SHA256SUMS`` (which pins ``manifest.json`` and every file),
  and :func:`load_bundle` refuses a bundle whose signature is missing or does not match,
  before reading any other file of it. ``HPSEARCH_REQUIRE_SIGNATURE=1`` makes a missing key an
  error on both sides (an environment that must never write or read unsigned bundles).
* Nothing of a bundle is unpickled unless it is authenticated: ``torch.export.load`` unpickles
  (it calls ``torch.load(weights_only=False)`` and ``pickle.loads`` on parts of the archive),
  so :class:`Predictor` runs ``program.pt2`` only from a bundle whose signature it verified.
  Any other bundle predicts through the model rebuilt from ``config.json`` (JSON) and
  ``weights.pt`` read with ``torch.load(weights_only=True)`` (tensors only): the same
  probabilities, and a planted pickle is a one-line :class:`ExportError`, never run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
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
from hpsearch.models.cosine import CosineEmbeddingHead
from hpsearch.models.hedging import hedged_paths, predicted_path
from hpsearch.tasks import TASKS, Experiment, task_of, validate_trial
from hpsearch.tasks.classifier import PredictProgram

FORMAT_VERSION = 1
SUMS_FILE = "SHA256SUMS"
SIGNATURE_FILE = "SIGNATURE"  # HMAC-SHA256 of SHA256SUMS under HPSEARCH_BUNDLE_KEY
KEY_ENV = "HPSEARCH_BUNDLE_KEY"
REQUIRE_ENV = "HPSEARCH_REQUIRE_SIGNATURE"
MIN_KEY_CHARS = 16
_SIG_CONTEXT = b"hpsearch-bundle-v1\0"  # domain separation: this key signs only bundle sums
LABEL_VECTORS_FILE = "label_vectors.pt"  # label embeddings of cosine_embedding bundles
LABEL_VECTORS_FORMAT = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def signing_key() -> bytes | None:
    """The bundle signing key from ``HPSEARCH_BUNDLE_KEY`` (None when unset or empty); a key
    of fewer than :data:`MIN_KEY_CHARS` characters is an :class:`ExportError`."""
    key = os.environ.get(KEY_ENV, "")
    if not key:
        return None
    if len(key) < MIN_KEY_CHARS:
        raise ExportError(f"{KEY_ENV} has {len(key)} characters; use at least {MIN_KEY_CHARS} "
                          "random ones, e.g. python -c 'import secrets; "
                          "print(secrets.token_hex(32))'")
    return key.encode()


def signature_required() -> bool:
    """``HPSEARCH_REQUIRE_SIGNATURE``: 1/true/yes or 0/false/no (unset: no)."""
    v = os.environ.get(REQUIRE_ENV, "").strip().lower()
    if v in ("", "0", "false", "no"):
        return False
    if v in ("1", "true", "yes"):
        return True
    raise ExportError(f"{REQUIRE_ENV}={os.environ[REQUIRE_ENV]!r}: set it to 1 (only signed "
                      "bundles) or 0")


def _signing_key_or_refuse(what: str) -> bytes | None:
    key = signing_key()
    if key is None and signature_required():
        raise ExportError(f"{REQUIRE_ENV}=1 but {KEY_ENV} is not set: set {KEY_ENV} to the "
                          f"bundle signing key to {what} signed bundles")
    return key


def _signature(key: bytes, sums: bytes) -> str:
    return hmac.new(key, _SIG_CONTEXT + sums, hashlib.sha256).hexdigest()


def _verify_signature(p: Path, key: bytes, sums: bytes) -> None:
    """``SIGNATURE`` of bundle ``p`` matches its ``SHA256SUMS`` bytes ``sums`` under ``key``,
    else ExportError."""
    f = p / SIGNATURE_FILE
    if not f.is_file():
        raise ExportError(f"bundle {p} is not signed but {KEY_ENV} is set: export it again "
                          f"with the key set, or unset {KEY_ENV} to load unsigned bundles "
                          "(checksums only)")
    parts = f.read_text(errors="replace").split()
    want = _signature(key, sums).encode()
    if len(parts) != 2 or parts[0] != "hmac-sha256" or \
            not hmac.compare_digest(parts[1].encode(), want):
        raise ExportError(f"bundle {p}: {SIGNATURE_FILE} does not match under {KEY_ENV}: the "
                          "bundle was edited or signed with another key; do not use it")


def write_bundle(exp: Experiment, out_dir: str | Path,
                 extra: dict[str, Any] | None = None) -> Path:
    """Export experiment ``exp`` (its current weights) into ``out_dir``; signed when
    ``HPSEARCH_BUNDLE_KEY`` is set (see the module docstring)."""
    key = _signing_key_or_refuse("write")
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
    manifest.update(_write_label_vectors(exp, out))
    (out / "config.json").write_text(json.dumps(cfg.model_dump(), indent=1))
    if exp.hierarchy is not None:
        (out / "hierarchy.json").write_text(json.dumps(exp.hierarchy.to_dict()))
    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "manifest.json")
    manifest["files"] = {f: _sha256(out / f) for f in files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    sums = [f"{_sha256(out / f)}  {f}" for f in [*files, "manifest.json"]]
    (out / SUMS_FILE).write_text("\n".join(sums) + "\n")
    if key is not None:
        sig = _signature(key, (out / SUMS_FILE).read_bytes())
        (out / SIGNATURE_FILE).write_text(f"hmac-sha256 {sig}\n")
    return out


def _write_label_vectors(exp: Experiment, out: Path) -> dict[str, Any]:
    """Write ``label_vectors.pt`` when the experiment's head has label vectors (a
    :class:`~hpsearch.models.cosine.CosineEmbeddingHead`); returns the manifest entries."""
    head = getattr(getattr(exp, "model", None), "head", None)
    if not isinstance(head, CosineEmbeddingHead):
        return {}
    h = head.hierarchy
    # labels.weight rows are level-major, i.e. the hierarchy's global index order
    vectors = head.labels.weight.detach().to("cpu", torch.float32).clone()  # [num_nodes, N]
    torch.save({"format": LABEL_VECTORS_FORMAT, "names": list(h.names),
                "level": torch.as_tensor(h.depth, dtype=torch.int64), "vectors": vectors,
                "projection": head.projection, "cosine": bool(head.cosine)},
               out / LABEL_VECTORS_FILE)
    return {"label_vectors": LABEL_VECTORS_FILE}


@dataclass(frozen=True, eq=False)
class Bundle:
    path: Path
    manifest: dict[str, Any]
    hierarchy: Hierarchy | None
    signed: bool = False  # its SIGNATURE was verified under HPSEARCH_BUNDLE_KEY

    @property
    def config(self):
        return validate_trial(json.loads((self.path / "config.json").read_text()))


def load_bundle(path: str | Path) -> Bundle:
    """Open a bundle: verify its signature (when ``HPSEARCH_BUNDLE_KEY`` is set) before
    reading anything else, then every checksum; nothing is unpickled here."""
    p = Path(path)
    if not (p / "manifest.json").is_file() or not (p / SUMS_FILE).is_file():
        raise ExportError(f"{p} is not an hpsearch bundle (no manifest.json / SHA256SUMS); "
                          "create one with 'hpsearch export RUN_ID --out DIR'")
    key = _signing_key_or_refuse("load")
    raw = (p / SUMS_FILE).read_bytes()  # read once: what is verified is what is parsed
    if key is not None:
        _verify_signature(p, key, raw)
    sums: dict[str, str] = {}
    for n, line in enumerate(raw.decode(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise ExportError(f"{p / 'SHA256SUMS'} line {n} is malformed: {line[:80]!r}")
        sums[parts[1].strip()] = parts[0]
    # every file of the bundle must be covered: a line deleted from SHA256SUMS must not let
    # an edited file through
    present = {f.name for f in p.iterdir()
               if f.is_file() and f.name not in (SUMS_FILE, SIGNATURE_FILE)}
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
    return Bundle(p, manifest, h, signed=key is not None)


@dataclass(frozen=True, eq=False)
class LabelVectors:
    """A bundle's label vectors (``label_vectors.pt``).

    Attributes:
        names: label names in hierarchy (global index) order, level-major.
        level: ``[num_nodes]`` int64 level of every label.
        vectors: ``[num_nodes, N]`` float32 label vectors, row i for ``names[i]``.
        projection: ``shared`` (one image space for every level) or ``per_level`` (level l's
            vectors live in level l's own space: compare them within a level only).
        cosine: the model scored ``s · cos`` rather than the dot product (then only the
            directions of the vectors mattered).
    """

    names: tuple[str, ...]
    level: torch.Tensor
    vectors: torch.Tensor
    projection: str
    cosine: bool

    def per_level(self) -> dict[int, torch.Tensor]:
        """Level -> ``[n_l, N]`` vectors, rows in the level's local index order."""
        return {int(lvl): self.vectors[self.level == lvl]
                for lvl in torch.unique(self.level).tolist()}


def load_label_vectors(bundle: Bundle) -> LabelVectors:
    """The label vectors of a ``load_bundle``-verified bundle (tensors and plain data only,
    ``weights_only=True``), checked against its hierarchy; ExportError when it has none."""
    name = bundle.manifest.get("label_vectors")
    if name is None:
        raise ExportError(f"bundle {bundle.path} ({bundle.manifest.get('family')!r}) has no "
                          "label vectors; only cosine_embedding bundles carry them")
    f = bundle.path / name
    raw = _load_tensors(f, "a torch file")
    h = bundle.hierarchy
    ok = (isinstance(raw, dict) and raw.get("format") == LABEL_VECTORS_FORMAT
          and isinstance(raw.get("vectors"), torch.Tensor) and raw["vectors"].dim() == 2
          and isinstance(raw.get("level"), torch.Tensor)
          and isinstance(raw.get("names"), list) and h is not None
          and tuple(raw["names"]) == tuple(h.names)
          and raw["vectors"].shape[0] == h.num_nodes
          and raw["level"].tolist() == [int(d) for d in h.depth]
          and raw.get("projection") in ("shared", "per_level"))
    if not ok:
        raise ExportError(f"bundle file {f} is not the label vectors of the bundle's "
                          f"hierarchy (format {LABEL_VECTORS_FORMAT}); export the bundle again")
    return LabelVectors(tuple(raw["names"]), raw["level"], raw["vectors"], raw["projection"],
                        bool(raw.get("cosine")))


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


def _load_tensors(f: Path, what: str) -> Any:
    """``torch.load(f, weights_only=True)`` of a bundle file: tensors and plain data only;
    anything more, or a file that is not ``what``, is a one-line :class:`ExportError` (nothing
    in it is run)."""
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ExportError(f"bundle file {f} refused: it holds more than tensors (nothing in "
                          "it was run); do not use this bundle, export it again") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ExportError(f"bundle file {f} is not {what} ({type(e).__name__}); export the "
                          "bundle again") from None


def _read_weights(f: Path) -> dict[str, torch.Tensor]:
    """A bundle's ``weights.pt``: a state dict of tensors (``weights_only=True``); anything
    else is a one-line :class:`ExportError`, nothing in it is run."""
    state = _load_tensors(f, "a torch weights file")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ExportError(f"bundle file {f} is not a state dict of tensors; export the bundle "
                          "again")
    return state


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
        # program.pt2 unpickles when loaded: only from a bundle whose signature was verified
        self.source = "program" if "program" in bundle.manifest and bundle.signed else "weights"
        if self.source == "program":
            try:
                ep = torch.export.load(str(bundle.path / bundle.manifest["program"]))
            except Exception as e:  # noqa: BLE001 - e.g. saved by another torch version
                raise ExportError(f"bundle {bundle.path}: cannot load its program.pt2 "
                                  f"({type(e).__name__}: {str(e)[:160]}); export it again "
                                  "with this torch") from None
            self.fn = ep.module()
        else:  # config + weights (tensors only): the same model, nothing of it unpickled
            cfg = bundle.config
            in_ch = 1 if cfg.model.grayscale else self.pre["channels"]
            # the weights file replaces any pretrained weights: no need for that file here
            mcfg = cfg.model.model_copy(update={"pretrained_weights": None,
                                                "freeze_backbone": False,
                                                "train_layers": "all"})
            model = build_model(mcfg, self.h, in_ch)
            model.load_state_dict(_read_weights(bundle.path / bundle.manifest["weights"]))
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
