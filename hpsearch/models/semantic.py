"""Hierarchy-based semantic image embeddings (Barz & Denzler, WACV 2019).

Fixed class embeddings φ(c) on the unit sphere reproduce the LCS-height similarity of the leaf
classes (:mod:`hpsearch.class_embeddings`); the network maps an image to f(x), L2-normalised,
and is trained to correlate with the embedding of its class:

    L = mean_i w_i (1 - <φ(y_i), f(x_i)/||f(x_i)||>) / mean_i w_i
        + cls_weight · CE(g(f̂(x)), y)                      (paper eq. 5 + their `cls_weight`)

where g = ReLU -> BatchNorm1d -> Linear(D, C) is their classification head on the *normalised*
embedding, and w_i = the leaf-level class weight of y_i (1 without class weights). Labels are
the hierarchy's last level, so the family needs a leveled tree like the per-level heads.

Output layout of ``forward`` (``[B, D + C]``, or ``[B, D]`` when there is no classifier):
``outputs[:, :D]`` is the unit-norm image embedding, ``outputs[:, D:]`` the classifier logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from hpsearch.class_embeddings import class_embedding
from hpsearch.hierarchy import Hierarchy, unpadded
from hpsearch.metrics.retrieval import (
    balanced_accuracy,
    leaf_class_similarity,
    retrieval_metrics,
)
from hpsearch.models.base import (
    FamilyParams,
    Head,
    level_weights_for,
    register_head_family,
)

#: Softmax temperature over cosine similarities for ``predict="nearest"``: leaf probabilities
#: are softmax(cos(f̂, φ_c) / T). The leaf argmax (nearest class) does not depend on T; upper
#: levels are sums of leaf probabilities, and T = 0.05 makes a cosine gap of 0.1 a factor e^2.
NEAREST_TEMPERATURE = 0.05

#: Cut-offs of the reported HP@k (those beyond the split size are skipped).
HP_KS = (1, 10, 50, 100, 250)


class SemanticParams(FamilyParams):
    """``model.params`` of ``semantic_embedding``."""

    embedding_method: Literal["unitsphere", "approx"] = "unitsphere"  # exact n-dim, or eigh
    embedding_dim: int | None = Field(None, gt=0)  # approx only; None = number of classes
    cls_weight: float = Field(0.1, ge=0)  # weight of the CE term (paper/README: 0.1)
    # how labels are read; "auto" = the classifier when cls_weight > 0, else nearest class
    predict: Literal["auto", "nearest", "classifier"] = "auto"
    mahp_k: int = Field(250, ge=2)  # cut-off of the validation mAHP@k (paper: 250)

    @model_validator(mode="after")
    def _classifier_needs_training(self) -> SemanticParams:
        if self.predict == "classifier" and self.cls_weight == 0:
            raise ValueError("predict='classifier' needs cls_weight > 0 (the classifier would "
                             "never be trained); use predict='nearest'")
        return self

    @property
    def predictor(self) -> Literal["nearest", "classifier"]:
        """The resolved ``predict`` (``auto`` follows ``cls_weight``)."""
        if self.predict == "auto":
            return "classifier" if self.cls_weight > 0 else "nearest"
        return self.predict


class SemanticEmbeddingHead(Head):
    """features ``[B, F]`` -> Linear(F, D) -> L2-normalise (+ classifier logits).

    Buffers: ``class_embeddings`` ``[C, D]`` (unit rows), ``sim_lcs`` / ``sim_wup`` ``[C, C]``
    class similarities for retrieval metrics (on the original tree behind ``leveling: pad``,
    :func:`~hpsearch.metrics.retrieval.leaf_class_similarity`), ``leaf_paths`` ``[C, L]`` for
    level marginals.
    """

    def __init__(self, in_dim: int, hierarchy: Hierarchy, params: SemanticParams) -> None:
        super().__init__(hierarchy)
        hierarchy.require_leveled("the semantic embedding family")
        self.params = params
        leaves = list(hierarchy.levels[-1])  # local index order = label order
        normalize = params.embedding_method == "approx"  # rows of a rank-d approx are < 1
        # on the original tree, as Barz & Denzler do: padding (leveling: pad) would raise the
        # inner nodes' heights and change the embedding's pairwise similarities
        _, E = class_embedding(unpadded(hierarchy), [hierarchy.names[g] for g in leaves],
                               params.embedding_method, params.embedding_dim,
                               normalize=normalize)
        self.num_classes, self.dim = E.shape
        self.register_buffer("class_embeddings", torch.tensor(E, dtype=torch.float32))
        # retrieval is scored on the original tree's heights/depths, not the padded one's
        self.register_buffer("sim_lcs", torch.tensor(leaf_class_similarity(hierarchy, "lcs")))
        self.register_buffer("sim_wup", torch.tensor(leaf_class_similarity(hierarchy, "wup")))
        self.register_buffer("leaf_paths", torch.tensor(np.asarray(hierarchy.leaf_paths)))
        self.embed = nn.Linear(in_dim, self.dim)
        self.classifier: nn.Module | None = None
        if params.cls_weight > 0:
            self.classifier = nn.Sequential(nn.ReLU(), nn.BatchNorm1d(self.dim),
                                            nn.Linear(self.dim, self.num_classes))

    def forward(self, features: Tensor) -> Tensor:
        z = F.normalize(self.embed(features).float(), dim=-1)  # [B, D], unit rows
        if self.classifier is None:
            return z
        return torch.cat([z, self.classifier(z)], dim=-1)  # [B, D + C]

    def split_outputs(self, outputs: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(embedding [B, D], logits [B, C] or None)``."""
        z = outputs[:, : self.dim]
        return z, (outputs[:, self.dim:] if self.classifier is not None else None)

    def loss(self, outputs: Tensor, level_labels: Tensor, *,
             level_weights: Sequence[float] | None = None,
             class_weights: Sequence[Tensor] | None = None) -> Tensor:
        """Inverse correlation + ``cls_weight`` x CE on the leaf level.

        ``level_weights`` are validated but have no effect: the objective lives on the leaf
        level only. ``class_weights[-1]`` weights both terms per sample (weighted means).
        """
        level_weights_for(self.hierarchy, level_weights)
        z, logits = self.split_outputs(outputs)
        y = level_labels[:, -1]
        inv_corr = 1.0 - (z.float() * self.class_embeddings[y]).sum(-1)  # [B]
        cw = None if class_weights is None else class_weights[-1].to(z.device, torch.float32)
        if cw is None:
            total = inv_corr.mean()
        else:
            w = cw[y]
            total = (w * inv_corr).sum() / w.sum().clamp_min(1e-12)
        if logits is not None:
            total = total + self.params.cls_weight * F.cross_entropy(logits.float(), y, weight=cw)
        return total

    def leaf_probs(self, outputs: Tensor) -> Tensor:
        """``[B, C]`` leaf probabilities from the configured predictor."""
        z, logits = self.split_outputs(outputs)
        if self.params.predictor == "classifier" and logits is not None:
            return logits.float().softmax(-1)
        protos = F.normalize(self.class_embeddings, dim=-1)
        return (z.float() @ protos.T / NEAREST_TEMPERATURE).softmax(-1)

    def level_probs(self, outputs: Tensor) -> list[Tensor]:
        """Leaf probabilities, and for every upper level the sum over each node's leaves."""
        p = self.leaf_probs(outputs)
        out = []
        for lvl, n in enumerate(self.hierarchy.level_sizes):
            acc = p.new_zeros(p.shape[0], n)
            out.append(acc.index_add_(1, self.leaf_paths[:, lvl], p))
        return out

    @torch.no_grad()
    def eval_metrics(self, outputs: Tensor, level_labels: Tensor) -> dict[str, float]:
        """Retrieval over the split (``mahp_{k}``, ``mahp_{k}_wup``, ``hp_at_{k}``) plus leaf
        ``accuracy`` and ``balanced_accuracy`` of the configured predictor.

        ``mahp_{k}`` keeps the configured k in its name but uses min(k, N - 1) on a split of
        N < k + 1 items, so a search always finds the metric; it is absent when N < 3.
        """
        y = level_labels[:, -1]
        pred = self.leaf_probs(outputs).argmax(-1)
        out = {"accuracy": float((pred == y).double().mean()),
               "balanced_accuracy": balanced_accuracy(pred, y)}
        n = outputs.shape[0]
        if n >= 3:
            z, _ = self.split_outputs(outputs)
            k, k_eff = self.params.mahp_k, min(self.params.mahp_k, n - 1)
            res = retrieval_metrics(z.float(), y, {"": self.sim_lcs, "_wup": self.sim_wup},
                                    ks=HP_KS, ahp_k=k_eff)
            for key, v in res.items():
                out[key.replace(f"mahp_{k_eff}", f"mahp_{k}", 1)] = v
        return out


register_head_family("semantic_embedding", SemanticEmbeddingHead, params=SemanticParams,
                     description="hierarchy-based semantic image embeddings (Barz & Denzler "
                                 "2019)")
