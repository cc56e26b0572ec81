"""The MLflow model of an export bundle: what ``models:/NAME/VERSION`` loads and serves.

The bundle directory travels unchanged as the model's ``bundle`` artifact, so its
``SHA256SUMS`` (and ``SIGNATURE``) travel with it and :func:`hpsearch.bundle.load_bundle`
verifies them when MLflow loads the model (``load_context``). Prediction is the bundle's own
code (:class:`hpsearch.bundle.Predictor`, :func:`hpsearch.bundle.label_paths`), never a copy.

Image classifiers (``task: classifier``):

* input: a DataFrame column ``image`` of type ``binary``: the encoded bytes of a PNG/JPEG
  (anything :func:`hpsearch.data.cache.decode_image` reads). In MLflow's serving JSON the
  column is base64 text, which MLflow decodes because the signature says ``binary``:
  ``{"dataframe_split": {"columns": ["image"], "data": [["iVBORw0..."]]},
  "params": {"hedge": 0.5}}``. Images of any size: they are resized as in training.
* param ``hedge`` (double, default 0 = off): the path stops before the first level whose
  confidence is below it (:mod:`hpsearch.models.hedging`, as ``hpsearch predict --hedge``).
* output: one row per image, a column per level (its name from the hierarchy: the label,
  null beyond a hedged path's end), ``<level>_prob`` (its probability at that level) and
  ``depth`` (levels predicted).

Label tables (``task: label_embedding`` and ``joint_embedding``): what their bundles hold is
a table of label embeddings (``label_embeddings.pt``, names in ``label_nodes.json``) and its
energy E(parent, child) (low = child is-a parent). A joint bundle's image side needs the
frozen CNN features of its feature source, which the bundle does not hold, so its model
serves the label side only, like a label-embedding bundle:

* input: columns ``child`` (a label name) and optional ``parent``.
* param ``top_k`` (long, default 5).
* output: ``energy`` E(parent, child) and ``is_a`` (energy <= the bundle's calibrated
  threshold; null when there is no parent, and for joint bundles, which have no threshold),
  and ``ancestors`` / ``ancestor_energies``: the ``top_k`` labels of lowest E(label, child),
  i.e. the likeliest "child is-a label" (the label itself left out).

MLflow is imported only when a model is saved or loaded: importing this module (the tracking
floor) needs torch alone.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpsearch.bundle import Bundle, Predictor, load_bundle
from hpsearch.errors import ExportError
from hpsearch.models.joint_embedding import label_params
from hpsearch.models.label_embedding import LabelEmbedding, build_label_embedding
from hpsearch.provenance import code_version
from hpsearch.tasks import TASKS
from hpsearch.tasks.label_embedding import EMBEDDINGS_FILE, NODES_FILE

IMAGE_COLUMN = "image"
CHILD_COLUMN, PARENT_COLUMN = "child", "parent"
HEDGE_PARAM, TOP_K_PARAM = "hedge", "top_k"
DEFAULT_TOP_K = 5
BUNDLE_KEY = "bundle"  # the bundle's name among the model's artifacts (artifacts/bundle/)
ALWAYS_SET = ("depth", CHILD_COLUMN, "ancestors", "ancestor_energies")  # never-null outputs
# what a model needs besides hpsearch itself (which is not on PyPI: the env that serves it
# has hpsearch installed, e.g. `mlflow models serve --env-manager local`)
REQUIREMENTS = ("mlflow", "torch", "torchvision", "numpy", "pandas", "pydantic", "geoopt",
                "pillow")


def _level_names(b: Bundle) -> list[str]:
    h = b.hierarchy
    return [h.level_names[i] if h.level_names else f"level_{i}" for i in range(h.num_levels)]


class ImageScorer:
    """Label paths of encoded images from a classifier bundle (its :class:`Predictor`)."""

    def __init__(self, bundle: Bundle) -> None:
        self.predictor = Predictor(bundle)
        self.levels = _level_names(bundle)

    def predict(self, images: list[bytes], hedge: float | None = None):
        """A DataFrame: per level its label and probability, and ``depth``."""
        import pandas as pd  # what MLflow hands pyfunc models; only where a model predicts

        with tempfile.TemporaryDirectory(prefix="hpsearch-model-") as d:
            files = []
            for i, data in enumerate(images):
                if isinstance(data, str):  # base64 text that reached us undecoded
                    raise ExportError(f"column {IMAGE_COLUMN!r} row {i} is text; send the "
                                      "image's encoded bytes (base64 in JSON, with the model's "
                                      "signature, which types the column as binary)")
                f = Path(d) / f"{i:06d}.img"
                f.write_bytes(bytes(data))
                files.append(f)
            preds = self.predictor.predict_files(files, hedge=hedge)
        rows = []
        for p in preds:
            row: dict[str, Any] = {}
            steps = {s["level"]: s for s in p["path"]}
            for lvl in self.levels:
                s = steps.get(lvl)
                row[lvl] = s["label"] if s else None
                row[f"{lvl}_prob"] = s["prob"] if s else None
            row["depth"] = len(p["path"])
            rows.append(row)
        cols = [c for lvl in self.levels for c in (lvl, f"{lvl}_prob")] + ["depth"]
        return pd.DataFrame(rows, columns=cols)

    def example(self) -> list[bytes]:
        """One PNG of the bundle's image size (seeded noise): the model's input example."""
        from torchvision.io import encode_png  # torchvision's codecs: only the example writes

        size, ch = self.predictor.pre["size"], self.predictor.pre["channels"]
        px = np.random.default_rng(0).integers(0, 256, (ch, size, size), dtype=np.uint8)
        return [bytes(encode_png(torch.from_numpy(px)).numpy().tobytes())]


class LabelScorer:
    """Is-a energies and likeliest ancestors of label names from a label table bundle."""

    def __init__(self, bundle: Bundle) -> None:
        m = bundle.manifest
        self.names = [str(s) for s in json.loads((bundle.path / NODES_FILE).read_text())]
        self.index = {n: i for i, n in enumerate(self.names)}
        table = torch.load(bundle.path / EMBEDDINGS_FILE, map_location="cpu", weights_only=True)
        if not isinstance(table, torch.Tensor) or table.shape[0] != len(self.names):
            raise ExportError(f"bundle {bundle.path}: {EMBEDDINGS_FILE} is not a table of "
                              f"{len(self.names)} label embeddings; export the bundle again")
        self.table = table
        params = bundle.config.model.params
        if m["task"] == "joint_embedding":  # the label table of a joint model
            self.energy_of: LabelEmbedding = LabelEmbedding(
                len(self.names), m["geometry"], label_params(m["geometry"], params))
        else:
            self.energy_of = build_label_embedding(m["family"], params, len(self.names))
        self.threshold = m.get("threshold")  # label_embedding only: calibrated on val edges

    def _ids(self, names: list[str], column: str) -> list[int]:
        bad = [n for n in names if n not in self.index]
        if bad:
            raise ExportError(f"column {column!r}: unknown label {bad[0]!r}; the bundle's "
                              f"labels are e.g. {', '.join(self.names[:5])}")
        return [self.index[n] for n in names]

    @torch.no_grad()
    def predict(self, children: list[str], parents: list[str | None] | None = None,
                top_k: int = DEFAULT_TOP_K):
        import pandas as pd  # what MLflow hands pyfunc models; only where a model predicts

        if top_k < 1:
            raise ExportError(f"{TOP_K_PARAM}={top_k}: ask for at least 1 label")
        parents = list(parents) if parents is not None else [None] * len(children)
        ch = self._ids(list(children), CHILD_COLUMN)
        # E(every label, child): [B, N]; low energy = child is-a that label
        e_all = self.energy_of.energy(self.table[None, :, :], self.table[ch][:, None, :])
        e_all[torch.arange(len(ch)), torch.tensor(ch, dtype=torch.long)] = float("inf")
        k = min(top_k, len(self.names) - 1)
        best = torch.topk(e_all, k, dim=1, largest=False)
        rows = []
        for i, (c, p) in enumerate(zip(children, parents, strict=True)):
            energy = is_a = None
            if isinstance(p, str) and p:
                pi = self._ids([p], PARENT_COLUMN)[0]
                energy = float(self.energy_of.energy(self.table[pi], self.table[ch[i]]))
                if self.threshold is not None:
                    is_a = bool(energy <= float(self.threshold))
            rows.append({CHILD_COLUMN: c, PARENT_COLUMN: p if isinstance(p, str) else None,
                         "energy": energy, "is_a": is_a,
                         "ancestors": [self.names[j] for j in best.indices[i].tolist()],
                         "ancestor_energies": [round(float(v), 6) for v in best.values[i]]})
        return pd.DataFrame(rows)

    def example(self) -> tuple[list[str], list[str]]:
        """(child, parent) columns of one example row: the last and the first label."""
        return [self.names[-1]], [self.names[0]]


def scorer_of(bundle: Bundle) -> ImageScorer | LabelScorer:
    """The scorer of a bundle's kind (``TaskSpec.exports``)."""
    task = bundle.manifest.get("task")
    exports = TASKS.get(task).exports if task in TASKS else None
    if exports == "predictor":
        return ImageScorer(bundle)
    if exports == "embeddings" and (bundle.path / EMBEDDINGS_FILE).is_file():
        return LabelScorer(bundle)
    raise ExportError(f"bundle {bundle.path}: no MLflow model for task {task!r}")


def _predict_frame(scorer: ImageScorer | LabelScorer, frame: Any,
                   params: dict[str, Any] | None) -> Any:
    """What the pyfunc's ``predict`` does with MLflow's DataFrame and params."""
    params = params or {}
    if isinstance(scorer, ImageScorer):
        if IMAGE_COLUMN not in frame.columns:
            raise ExportError(f"input has no {IMAGE_COLUMN!r} column (got "
                              f"{list(frame.columns)}); send encoded image bytes in it")
        hedge = params.get(HEDGE_PARAM)
        hedge = None if hedge is None or float(hedge) == 0.0 else float(hedge)
        return scorer.predict(list(frame[IMAGE_COLUMN]), hedge)
    if CHILD_COLUMN not in frame.columns:
        raise ExportError(f"input has no {CHILD_COLUMN!r} column (got {list(frame.columns)})")
    parents = None
    if PARENT_COLUMN in frame.columns:
        parents = [p if isinstance(p, str) else None for p in frame[PARENT_COLUMN]]
    top_k = int(params.get(TOP_K_PARAM) or DEFAULT_TOP_K)
    return scorer.predict(list(frame[CHILD_COLUMN]), parents, top_k)


_CLASS: dict[str, type] = {}


def _bundle_model_class() -> type:
    """:class:`BundleModel`, an ``mlflow.pyfunc.PythonModel`` made on first use: MLflow is
    imported here, not when the tracking floor is (tests/test_layering.py)."""
    if "BundleModel" not in _CLASS:
        import mlflow.pyfunc  # only when a model is saved or loaded

        class BundleModel(mlflow.pyfunc.PythonModel):
            """An hpsearch export bundle as an MLflow pyfunc model (see the module)."""

            def load_context(self, context) -> None:
                # verifies SHA256SUMS (and SIGNATURE under HPSEARCH_BUNDLE_KEY) first
                self.scorer = scorer_of(load_bundle(context.artifacts[BUNDLE_KEY]))

            def predict(self, context, model_input, params=None):
                return _predict_frame(self.scorer, model_input, params)

        # pickled by reference (module attribute BundleModel, see __getattr__), not by value
        BundleModel.__module__, BundleModel.__qualname__ = __name__, "BundleModel"
        _CLASS["BundleModel"] = BundleModel
    return _CLASS["BundleModel"]


def __getattr__(name: str) -> Any:
    if name == "BundleModel":
        return _bundle_model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _requirements() -> list[str]:
    out = []
    for dist in REQUIREMENTS:
        try:
            out.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            out.append(dist)
    return out


def signature_and_example(bundle: Bundle) -> tuple[Any, Any]:
    """(ModelSignature, input example DataFrame) of a bundle's model: the input schema and
    params are explicit; the output schema is inferred from the example's prediction."""
    import pandas as pd  # what MLflow hands pyfunc models
    from mlflow.models import ModelSignature
    from mlflow.models.signature import _infer_schema
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    scorer = scorer_of(bundle)
    if isinstance(scorer, ImageScorer):
        example = pd.DataFrame({IMAGE_COLUMN: scorer.example()})
        inputs = Schema([ColSpec(DataType.binary, IMAGE_COLUMN)])
        params = ParamSchema([ParamSpec(HEDGE_PARAM, DataType.double, 0.0)])
    else:
        child, parent = scorer.example()
        example = pd.DataFrame({CHILD_COLUMN: child, PARENT_COLUMN: parent})
        inputs = Schema([ColSpec(DataType.string, CHILD_COLUMN),
                         ColSpec(DataType.string, PARENT_COLUMN, required=False)])
        params = ParamSchema([ParamSpec(TOP_K_PARAM, DataType.long, DEFAULT_TOP_K)])
    out = _predict_frame(scorer, example, {})
    if isinstance(scorer, LabelScorer) and out["is_a"].isna().all():
        out = out.drop(columns=["is_a"])  # all null (joint bundle): not a typeable column
    # hedged paths and pairs without a parent leave columns null: only these never are
    outputs = Schema([ColSpec(c.type, c.name, required=c.name in ALWAYS_SET)
                      for c in _infer_schema(out).inputs])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params), example


def save_model(bundle_dir: str | Path, path: str | Path) -> Path:
    """Write the MLflow model (``MLmodel``, ``python_model.pkl``, ``artifacts/bundle/``...)
    of the bundle at ``bundle_dir`` into the new directory ``path``; returns ``path``."""
    import mlflow.pyfunc  # only when a model is saved

    bundle = load_bundle(bundle_dir)  # refuse a corrupt bundle before it is published
    signature, example = signature_and_example(bundle)
    meta = {"hpsearch_code_version": code_version(), "hpsearch_task": bundle.manifest["task"],
            "hpsearch_family": bundle.manifest["family"],
            "hpsearch_run_id": str(bundle.manifest.get("run_id", ""))}
    with tempfile.TemporaryDirectory(prefix="hpsearch-model-") as d:
        # MLflow names the copy after the folder: artifacts/bundle/ whatever it was called
        src = Path(d) / BUNDLE_KEY
        shutil.copytree(bundle_dir, src)
        mlflow.pyfunc.save_model(str(path), python_model=_bundle_model_class()(),
                                 artifacts={BUNDLE_KEY: str(src)}, signature=signature,
                                 input_example=example, pip_requirements=_requirements(),
                                 metadata=meta)
    return Path(path)
