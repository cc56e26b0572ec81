"""Label-embedding families (thesis ch. 5): order embeddings, Euclidean and hyperbolic cones.

Each family is a table of label vectors plus an energy E(f(u), f(v)) that is low when v is-a u.
They are trained by :class:`hpsearch.tasks.label_embedding.LabelEmbeddingExperiment` (task
``label_embedding``), never by the image classifier loop.

Parametrisations (``LabelEmbedding.mode``):

* ``raw``: f(u) = w_u (order embeddings; unconstrained coordinates, thesis §5.2).
* ``soft_clip``: f(u) = ŵ_u (||w_u|| + K) (Euclidean cones, published code): ||f|| >= K, so
  the aperture arcsin(K/||x||) is always defined.
* ``ball``: f(u) = w_u, a ``geoopt.ManifoldParameter`` on a :class:`ConeBall` kept in
  [ε_K + 1e-5, 1 − 1e-5] by the Riemannian optimizer (hyperbolic cones with RSGD/RAdam).
* ``expmap0``: f(u) = clip(tanh(artanh(ε_K) + ||w_u||) ŵ_u) (hyperbolic cones trained with
  plain Adam, thesis §5.6 "exp-map at 0").

Row-sparse gradients (``LabelEmbedding(sparse_grad=True)``, set by the label-only task from
``model.params.sparse_updates``): lookups go through ``F.embedding(idx, w, sparse=True)``, so
``w.grad`` is a sparse tensor of the looked-up rows and the optimizer (built with
``build_optimizer(..., sparse=True)``, hpsearch/tasks/optim.py) updates only those rows. The
forward values are the same; only the gradient's layout and the optimizer's semantics differ
(lazy Adam moments, see optim.py). The joint task never sets it.
"""

from __future__ import annotations

from typing import Literal

import geoopt
import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.nn import functional as F

from hpsearch.config import ModelConfig
from hpsearch.errors import ConfigError
from hpsearch.geometry import (
    ConeBall,
    euclidean_cone_energy,
    hyperbolic_cone_energy,
    inner_radius,
    offset_expmap0,
    offset_expmap0_inverse,
    order_violation,
    project_norms,
    safe_norm,
)
from hpsearch.geometry._numerics import BOUNDARY_EPS
from hpsearch.hierarchy import Hierarchy
from hpsearch.models.base import FamilyParams, register_family

TASK = "label_embedding"


class LabelEmbeddingParams(FamilyParams):
    """Options shared by the label-embedding families (``model.params``)."""

    dim: int = Field(10, gt=0)  # embedding dimension d
    margin: float = Field(1.0, gt=0)  # α of max(0, α − E) on negatives (thesis eq. 2.3)
    negatives_per_side: int = Field(5, ge=1)  # k (u,v') + k (u',v) per positive, on the fly
    negative_strategy: Literal["uniform", "per_level"] = "per_level"  # training negatives
    eval_negatives_per_side: int = Field(5, ge=1)  # fixed val/test negatives (thesis: 5 + 5)
    eval_negative_strategy: Literal["uniform", "per_level"] = "per_level"  # published val/test
    label_lr: float | None = Field(None, gt=0)  # None: optim.lr
    momentum: float = Field(0.0, ge=0, lt=1)  # for sgd / rsgd
    non_basic_fraction: float = Field(0.5, ge=0, le=1)  # p: train = basic + p·|non-basic|
    split_seed: int = 0  # seeds the edge split, independent of the trial seed
    use_predefined_splits: bool = True  # use a label source's shipped splits when it has them
    init: Literal["random", "from_run"] = "random"
    init_from: str | None = None  # from_run: label_embeddings.pt (or the folder holding it)
    init_scale: float = Field(1.0, gt=0)  # std of the random Euclidean init
    dtype: Literal["float32", "float64"] = "float32"
    recon_max_nodes: int = Field(5000, ge=0)  # skip all-pairs reconstruction above N nodes
    # update only the rows a batch looks up (sparse gradients + geoopt's SparseRiemannianAdam /
    # SparseRiemannianSGD math): lazy Adam moments (an untouched row neither moves nor decays
    # its moments), lazy momentum, no weight decay; SGD/RSGD without momentum are exact;
    # tasks/optim.py. Off by default: on, epochs on WordNet nouns were 2.3-2.5x faster and on
    # ETHEC no faster; F1 checked only for the Adam variants on ETHEC (results/BENCHMARKS.md)
    sparse_updates: bool = False

    def aperture(self) -> float:
        """The cone aperture constant K (0 for order embeddings, which have no cone)."""
        return 0.0

    @model_validator(mode="after")
    def _check_init(self) -> LabelEmbeddingParams:
        if self.init == "from_run" and not self.init_from:
            raise ValueError("init='from_run' needs init_from=<path to label_embeddings.pt>")
        return self


class OrderEmbeddingParams(LabelEmbeddingParams):
    energy: Literal["squared", "plain"] = "squared"  # ||max(0,x−y)||² (code) or ||.|| (eq 2.2)
    optimizer: Literal["adam", "sgd"] = "adam"


class EuclideanConeParams(LabelEmbeddingParams):
    margin: float = Field(0.01, gt=0)  # thesis Table 6.1
    K: float = Field(3.0, gt=0)  # aperture constant, published label code
    energy: Literal["cosine", "angle"] = "cosine"  # thesis §6.1.2: cosine trains more stably
    norm_offset: bool = True  # f = ŵ(||w|| + K) keeps ||f|| >= K (published soft_clip)
    optimizer: Literal["adam", "sgd"] = "adam"

    def aperture(self) -> float:
        return self.K


class HyperbolicConeParams(LabelEmbeddingParams):
    margin: float = Field(0.1, gt=0)  # thesis Table 6.2
    K: float = Field(0.1, gt=0)  # aperture constant (both published codes)
    energy: Literal["angle", "cosine"] = "angle"
    optimizer: Literal["rsgd", "riemannian_adam", "adam_expmap0"] = "riemannian_adam"
    retraction: Literal["expmap", "first_order"] = "expmap"  # RSGD step (eq. 2.13) or x + u
    init: Literal["random", "poincare_init", "from_run"] = "random"
    init_epochs: int = Field(100, ge=1)  # poincare_init: Poincaré-embedding epochs
    init_lr: float = Field(0.03, gt=0)  # poincare_init: RSGD learning rate
    init_burn_in: int = Field(20, ge=0)  # poincare_init: first epochs at lr/10
    init_rescale: float = Field(0.7, gt=0, le=1)  # cones start from 0.7 × Poincaré vectors
    # poincare_init: the endpoint its negatives replace; "parent" (Nickel & Kiela's code) puts
    # hypernyms near the origin, "child" inverts the norm order (pretrain.py docstring)
    init_corrupt: Literal["parent", "child"] = "parent"

    def aperture(self) -> float:
        return self.K


GEOMETRY = {"order_embedding": "order", "euclidean_cone": "euclidean_cone",
            "hyperbolic_cone": "hyperbolic_cone"}


class LabelEmbedding(nn.Module):
    """A table of label embeddings and its energy.

    Args:
        num_nodes: number of labels N.
        geometry: ``order``, ``euclidean_cone`` or ``hyperbolic_cone``.
        params: the family's validated params.
        sparse_grad: look rows up with ``F.embedding(..., sparse=True)`` so that the table's
            gradient is row-sparse (for the sparse optimizers of tasks/optim.py).
    """

    def __init__(self, num_nodes: int, geometry: str, params: LabelEmbeddingParams,
                 sparse_grad: bool = False) -> None:
        super().__init__()
        self.sparse_grad = bool(sparse_grad)
        if geometry not in ("order", "euclidean_cone", "hyperbolic_cone"):
            raise ConfigError(f"unknown embedding geometry {geometry!r}; allowed: order, "
                              "euclidean_cone, hyperbolic_cone")
        self.geometry = geometry
        self.params = params
        self.num_nodes = int(num_nodes)
        self.dim = params.dim
        self.margin = params.margin
        self.K = params.aperture()
        self.energy_kind: str = params.energy  # type: ignore[attr-defined]
        dtype = torch.float64 if params.dtype == "float64" else torch.float32
        data = torch.zeros(self.num_nodes, self.dim, dtype=dtype)
        self.min_norm = 0.0
        if geometry == "order":
            self.mode = "raw"
        elif geometry == "euclidean_cone":
            self.mode = "soft_clip" if params.norm_offset else "raw"  # type: ignore[attr-defined]
        else:
            self.min_norm = inner_radius(self.K) + BOUNDARY_EPS[dtype]
            if params.optimizer == "adam_expmap0":  # type: ignore[attr-defined]
                self.mode = "expmap0"
            else:
                self.mode = "ball"
                exact = params.retraction == "expmap"  # type: ignore[attr-defined]
                self.ball = ConeBall(self.min_norm, exact=exact)
        if self.mode == "ball":
            self.weight: nn.Parameter = geoopt.ManifoldParameter(data, manifold=self.ball)
        else:
            self.weight = nn.Parameter(data)
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random init: N(0, init_scale²) for Euclidean tables; for hyperbolic cones random
        directions with norm ε_K + U[0, 0.05] (published label code)."""
        w = self.weight
        if self.geometry == "hyperbolic_cone":
            d = torch.randn(w.shape, generator=generator, dtype=w.dtype)
            d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            r = self.min_norm + 0.05 * torch.rand(w.shape[0], 1, generator=generator,
                                                  dtype=w.dtype)
            self.set_embeddings((d * r).to(w.device))
        else:
            w.copy_(torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device)
                    * self.params.init_scale)

    @torch.no_grad()
    def set_embeddings(self, x: Tensor) -> None:
        """Make :meth:`forward` return ``x`` (``[N, d]``; invertible up to the constraints)."""
        if x.shape != self.weight.shape:
            raise ConfigError(f"embeddings of shape {tuple(x.shape)} do not fit a table of "
                              f"{tuple(self.weight.shape)} (num_nodes, dim)")
        x = x.to(self.weight)
        if self.mode == "raw":
            w = x
        elif self.mode == "soft_clip":
            r = safe_norm(x, keepdim=True)
            w = x / r.clamp_min(1e-12) * (r - self.K).clamp_min(1e-6)
        elif self.mode == "ball":
            w = project_norms(x, self.min_norm)
        else:
            w = offset_expmap0_inverse(x, self.min_norm)
        self.weight.copy_(w)

    # ------------------------------------------------------------------ maps
    def forward(self, idx: Tensor | None = None) -> Tensor:
        """Embeddings of ``idx`` (any shape; all labels when None): ``[..., d]``."""
        if idx is None:
            w = self.weight
        elif self.sparse_grad:
            w = F.embedding(idx, self.weight, sparse=True)
        else:
            w = self.weight[idx]
        if self.mode in ("raw", "ball"):
            return w
        if self.mode == "soft_clip":
            r = safe_norm(w, keepdim=True)
            return w / torch.where(r > 0, r, torch.ones_like(r)) * (r + self.K)
        return project_norms(offset_expmap0(w, self.min_norm), self.min_norm)

    def energy(self, x: Tensor, y: Tensor) -> Tensor:
        """E(x, y) for parent embeddings x and child embeddings y (broadcast over ``[...]``)."""
        if self.geometry == "order":
            return order_violation(x, y, squared=self.energy_kind == "squared")
        if self.geometry == "euclidean_cone":
            return euclidean_cone_energy(x, y, self.K, space=self.energy_kind)  # type: ignore
        return hyperbolic_cone_energy(x, y, self.K, space=self.energy_kind)  # type: ignore

    def pair_energy(self, pairs: Tensor) -> Tensor:
        """Energies of index pairs ``[..., 2]`` (parent, child) -> ``[...]``."""
        return self.energy(self(pairs[..., 0]), self(pairs[..., 1]))

    def describe(self) -> dict[str, object]:
        return {"geometry": self.geometry, "energy": self.energy_kind, "K": self.K,
                "margin": self.margin, "dim": self.dim, "mode": self.mode,
                "min_norm": self.min_norm, "num_nodes": self.num_nodes,
                "curvature": -1.0 if self.geometry == "hyperbolic_cone" else 0.0}

    def extra_repr(self) -> str:
        return (f"num_nodes={self.num_nodes}, dim={self.dim}, geometry={self.geometry}, "
                f"energy={self.energy_kind}, mode={self.mode}"
                + (", sparse_grad=True" if self.sparse_grad else ""))


def build_label_embedding(family: str, params: LabelEmbeddingParams,
                          num_nodes: int, sparse_grad: bool = False) -> LabelEmbedding:
    """The module of a registered label-embedding family for ``num_nodes`` labels
    (``sparse_grad``: row-sparse gradients, :class:`LabelEmbedding`)."""
    if family not in GEOMETRY:
        raise ConfigError(f"{family!r} is not a label-embedding family; allowed: "
                          f"{', '.join(sorted(GEOMETRY))}")
    return LabelEmbedding(num_nodes, GEOMETRY[family], params, sparse_grad=sparse_grad)


def _builder(family: str):
    def build(cfg: ModelConfig, params: LabelEmbeddingParams, h: Hierarchy,
              in_ch: int = 3) -> LabelEmbedding:
        return build_label_embedding(family, params, h.num_nodes)

    build.__name__ = f"build_{family}"
    return build


register_family("order_embedding", task=TASK, params=OrderEmbeddingParams,
                description="order embeddings of the label DAG (Vendrov 2016; thesis §5.2)"
                )(_builder("order_embedding"))
register_family("euclidean_cone", task=TASK, params=EuclideanConeParams,
                description="Euclidean entailment cones of the labels (Ganea 2018; thesis §5.3)"
                )(_builder("euclidean_cone"))
register_family("hyperbolic_cone", task=TASK, params=HyperbolicConeParams,
                description="hyperbolic entailment cones on the Poincaré ball (thesis §5.4)"
                )(_builder("hyperbolic_cone"))
