"""Joint image + label embedding families (thesis §5.6, §6.2): labels and images in one space.

A label u is a row of a lookup table f_l(u) (the geometry and parametrisation of the label-only
families, :class:`~hpsearch.models.label_embedding.LabelEmbedding`); an image i is mapped
from the features φ(i) of a frozen CNN by a learned affine map (thesis eq. 5.2)

    z(i) = W · s(φ(i)) + b,      s(φ) = (φ − μ) / σ  (train-feature standardisation, or s = id)

and then into the family's space:

* ``joint_order_embedding``: f_i = z (ℝᵈ, order violation energy);
* ``joint_euclidean_cone``: f_i = ẑ (‖z‖ + K) with ``norm_offset`` (the published soft clip,
  applied to images as to labels, oe.py ``FeatNet``), else z;
* ``joint_hyperbolic_cone``: f_i = clip(tanh(artanh(ε_K) + ‖z‖) ẑ) ∈ 𝔻ᵈ, the offset exp-map at
  0 (thesis §5.6, published oe_h.py), projected into [ε_K + 1e-5, 1 − 1e-5] like the labels.

Standardisation is a reparametrisation (W' = W/σ, b' = b − W μ/σ), not extra capacity; it makes
one ``image_lr`` fit backbones with very different feature scales. ``image_map=linear`` is the
thesis' W (the default); ``image_map=mlp`` replaces it by ``mlp_layers`` Linear layers of width
``mlp_hidden`` with ``mlp_activation`` between them and none on the output (the thesis tried a
4-layer MLP and found it worse, §6.2.3; published ``FeatNet`` 2048-4096-2048-1024-d, ReLU).

With ``train_backbone`` (``features: backbone`` or ``checkpoint``) φ is not cached: the CNN is
trained end to end with its own ``backbone_lr`` on the image batches (thesis §6.2.3 tried it
and saw it over-fit); the frozen cached-feature path stays the default.

Trained by :class:`hpsearch.tasks.joint_embedding.JointEmbeddingExperiment` (task
``joint_embedding``). Learning-rate defaults are the thesis' (§6.2.1: EC labels 1e-2, images
1e-3, α = 1; HC labels 1e-4, images 1e-3, Adam with the exp map); ``optim.lr`` is not used.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from hpsearch.config import ModelConfig
from hpsearch.errors import ConfigError
from hpsearch.geometry import offset_expmap0, project_norms, safe_norm
from hpsearch.hierarchy import Hierarchy
from hpsearch.models.base import FamilyParams, register_family
from hpsearch.models.label_embedding import (
    EuclideanConeParams,
    HyperbolicConeParams,
    LabelEmbedding,
    LabelEmbeddingParams,
    OrderEmbeddingParams,
)

TASK = "joint_embedding"
GEOMETRY = {"joint_order_embedding": "order", "joint_euclidean_cone": "euclidean_cone",
            "joint_hyperbolic_cone": "hyperbolic_cone"}
FEATURE_STD_FLOOR = 1e-6  # constant feature dimensions are left unscaled, not divided by 0


class JointEmbeddingParams(FamilyParams):
    """Options shared by the joint families (``model.params``)."""

    dim: int = Field(10, gt=0)  # embedding dimension d (thesis: 10, 100, 1000)
    margin: float = Field(1.0, gt=0)  # α of max(0, α − E) on negatives (eq. 2.3)
    negatives_per_side: int = Field(5, ge=1)  # k (u,v') + k (u',v) per positive (thesis 5+5)
    # how a *label* endpoint is replaced: per_level = pass i from level (i+o) mod (L+1), slot
    # L = any label (thesis pick-per-level); same_level = a label of the replaced one's level;
    # uniform = any label. An *image* endpoint is always replaced by another training image.
    negative_strategy: Literal["per_level", "same_level", "uniform"] = "per_level"
    label_lr: float = Field(1e-2, gt=0)  # thesis §6.2.1 (EC)
    image_lr: float = Field(1e-3, gt=0)  # thesis §6.2.1
    image_optimizer: Literal["adam", "sgd"] = "adam"  # for W (labels: `optimizer`)
    momentum: float = Field(0.0, ge=0, lt=1)  # for sgd / rsgd
    image_weight_decay: float = Field(0.0, ge=0)  # L2 on W (not in the thesis)
    features: Literal["backbone", "checkpoint"] = "backbone"  # where φ comes from
    feature_checkpoint: str | None = None  # features=checkpoint: a classifier run's ckpt dir
    feature_seed: int = 0  # seeds a random-weights backbone (features=backbone, no weights)
    feature_batch_size: int = Field(256, gt=0)  # extraction batch (once per source + dataset)
    feature_norm: Literal["standardize", "none"] = "standardize"  # s(φ); see module doc
    image_bias: bool = True  # b in W φ + b (published Linear has a bias)
    image_map: Literal["linear", "mlp"] = "linear"  # W (thesis) or an MLP (§6.2.3)
    mlp_hidden: int = Field(256, gt=0)  # image_map=mlp: width of every hidden layer
    mlp_layers: int = Field(2, ge=2, le=8)  # image_map=mlp: Linear layers (published FeatNet 4)
    mlp_activation: Literal["relu", "tanh", "gelu"] = "relu"  # between layers, not on output
    # images as one more pick-per-level slot (per_level only; thesis §5.6, oe.py pass 4)
    negative_image_slot: bool = False
    # None: image endpoints -> images, label endpoints -> labels (default). r: every
    # replacement is an image with probability r (thesis §6.2.4's 50:50 is 0.5)
    image_negative_fraction: float | None = Field(None, ge=0, le=1)
    # labels: train on the label closure only (images unused, W untrained): the label-only
    # first stage of HC* (thesis Table 6.4) on hierarchies too small for the label_embedding
    # task's 5% edge splits (CIFAR-10: 10 non-basic edges); select it by val_full_f1
    train_edges: Literal["all", "labels"] = "all"
    train_backbone: bool = False  # end to end: the CNN trains on image batches, no cache
    backbone_lr: float = Field(1e-4, gt=0)  # train_backbone: Adam lr of the CNN
    init: Literal["random", "from_run"] = "random"  # label table (thesis: from a label run)
    init_from: str | None = None  # from_run: label_embeddings.pt, its folder or a ckpt dir
    init_scale: float = Field(1.0, gt=0)  # std of the random Euclidean label init
    dtype: Literal["float32", "float64"] = "float32"
    recon_max_nodes: int = Field(5000, ge=0)  # skip label-graph reconstruction above N labels

    @model_validator(mode="after")
    def _check_paths(self) -> JointEmbeddingParams:
        if self.init == "from_run" and not self.init_from:
            raise ValueError("init='from_run' needs init_from=<label_embeddings.pt of a "
                             "label-embedding run, or its folder / checkpoint directory>")
        if self.negative_image_slot and self.negative_strategy != "per_level":
            raise ValueError(f"negative_image_slot is a pick-per-level slot; set "
                             f"negative_strategy=per_level (got {self.negative_strategy!r})")
        if self.negative_image_slot and self.image_negative_fraction is not None:
            raise ValueError("negative_image_slot and image_negative_fraction both decide "
                             "which negatives are images; set one of them")
        if self.features == "checkpoint" and not self.feature_checkpoint:
            raise ValueError("features='checkpoint' needs feature_checkpoint=<checkpoint "
                             "directory of a trained image-classifier run>")
        return self


class JointOrderEmbeddingParams(JointEmbeddingParams):
    energy: Literal["squared", "plain"] = "squared"  # ||max(0,x−y)||² (code) or ||.|| (eq 2.2)
    optimizer: Literal["adam", "sgd"] = "adam"  # labels


class JointEuclideanConeParams(JointEmbeddingParams):
    K: float = Field(3.0, gt=0)  # aperture constant (published code)
    energy: Literal["cosine", "angle"] = "cosine"  # thesis §6.1.2
    norm_offset: bool = True  # soft clip f = ẑ(‖z‖ + K) for labels and images: ‖f‖ >= K
    optimizer: Literal["adam", "sgd"] = "adam"  # labels


class JointHyperbolicConeParams(JointEmbeddingParams):
    margin: float = Field(0.1, gt=0)
    K: float = Field(0.1, gt=0)
    energy: Literal["angle", "cosine"] = "angle"
    # labels: Adam on exp_0-parametrised vectors (thesis §6.2.5: RSGD collapsed jointly), or
    # Riemannian optimizers on ball parameters; images always go through the exp map
    optimizer: Literal["adam_expmap0", "riemannian_adam", "rsgd"] = "adam_expmap0"
    retraction: Literal["expmap", "first_order"] = "expmap"  # rsgd step
    label_lr: float = Field(1e-4, gt=0)  # thesis §6.2.1 (HC)


def label_params(geometry: str, p: JointEmbeddingParams) -> LabelEmbeddingParams:
    """The label-only params that give the label table of a joint model."""
    common = {"dim": p.dim, "margin": p.margin, "init_scale": p.init_scale, "dtype": p.dtype,
              "energy": p.energy, "optimizer": p.optimizer}  # type: ignore[attr-defined]
    if geometry == "order":
        return OrderEmbeddingParams(**common)
    if geometry == "euclidean_cone":
        return EuclideanConeParams(**common, K=p.K,  # type: ignore[attr-defined]
                                   norm_offset=p.norm_offset)  # type: ignore[attr-defined]
    return HyperbolicConeParams(**common, K=p.K,  # type: ignore[attr-defined]
                                retraction=p.retraction)  # type: ignore[attr-defined]


class JointEmbedding(nn.Module):
    """Label table + image map into one embedding space.

    Args:
        geometry: ``order``, ``euclidean_cone`` or ``hyperbolic_cone``.
        params: the family's validated params.
        num_labels: N.
        feature_dim: F, the size of the frozen image features.
    """

    def __init__(self, geometry: str, params: JointEmbeddingParams, num_labels: int,
                 feature_dim: int) -> None:
        super().__init__()
        if feature_dim < 1:
            raise ConfigError(f"feature_dim must be >= 1, got {feature_dim}")
        self.geometry = geometry
        self.params = params
        self.labels = LabelEmbedding(num_labels, geometry, label_params(geometry, params))
        dtype = self.labels.weight.dtype
        self.feature_dim = int(feature_dim)
        self.image_map = build_image_map(params, feature_dim, dtype)
        self.register_buffer("feature_mean", torch.zeros(feature_dim, dtype=dtype))
        self.register_buffer("feature_scale", torch.ones(feature_dim, dtype=dtype))

    @property
    def dim(self) -> int:
        return self.labels.dim

    @property
    def margin(self) -> float:
        return self.labels.margin

    @property
    def num_labels(self) -> int:
        return self.labels.num_nodes

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Labels as the label-only families; W and b ~ U(±1/√F) (torch's Linear default),
        drawn from ``generator`` so a trial is reproducible."""
        self.labels.reset_parameters(generator)
        for lin in self.image_linears():
            bound = 1.0 / math.sqrt(lin.in_features)
            for t in (lin.weight, lin.bias):
                if t is not None:
                    u = torch.rand(t.shape, generator=generator, dtype=t.dtype)
                    t.copy_(((2 * u - 1) * bound).to(t.device))

    def image_linears(self) -> list[nn.Linear]:
        """The Linear layers of the image map, input first (one for ``linear``)."""
        return [m for m in self.image_map.modules() if isinstance(m, nn.Linear)]

    @torch.no_grad()
    def set_feature_stats(self, train_features: Tensor) -> None:
        """μ, σ of the *training* features ``[M, F]`` (only with ``feature_norm=standardize``)."""
        if self.params.feature_norm != "standardize" or len(train_features) == 0:
            return
        f = train_features.to(self.feature_mean)
        self.feature_mean.copy_(f.mean(0))
        std = f.std(0, correction=0) if len(f) > 1 else torch.ones_like(self.feature_scale)
        self.feature_scale.copy_(torch.where(std > FEATURE_STD_FLOOR, std,
                                             torch.ones_like(std)))

    def label_embeddings(self, idx: Tensor | None = None) -> Tensor:
        """f_l of ``idx`` (all labels when None): ``[..., d]``."""
        return self.labels(idx)

    def image_embeddings(self, features: Tensor) -> Tensor:
        """f_i of image features ``[B, F]`` -> ``[B, d]`` (eq. 5.2 plus the space's map)."""
        z = self.image_map((features.to(self.feature_mean) - self.feature_mean)
                           / self.feature_scale)
        if self.geometry == "order" or self.labels.mode == "raw":
            return z
        if self.geometry == "euclidean_cone":  # soft clip, as the labels' soft_clip mode
            r = safe_norm(z, keepdim=True)
            return z / torch.where(r > 0, r, torch.ones_like(r)) * (r + self.labels.K)
        m = self.labels.min_norm
        return project_norms(offset_expmap0(z, m), m)

    def energy(self, x: Tensor, y: Tensor) -> Tensor:
        """E(parent x, child y), broadcast over ``[...]``: low = "y is-a x"."""
        return self.labels.energy(x, y)

    def describe(self) -> dict[str, object]:
        p = self.params
        z = "W s(phi) + b" if p.image_map == "linear" else (
            f"MLP_{p.mlp_layers}x{p.mlp_hidden}_{p.mlp_activation}(s(phi))")
        return {**self.labels.describe(), "feature_dim": self.feature_dim,
                "feature_norm": p.feature_norm, "image_bias": p.image_bias,
                "image_map_kind": p.image_map,
                "image_map": {"order": z,
                              "euclidean_cone": f"soft_clip({z})" if
                              self.labels.mode == "soft_clip" else z,
                              "hyperbolic_cone": f"project(offset_expmap0({z}))"}[
                                  self.geometry]}

    def extra_repr(self) -> str:
        return f"geometry={self.geometry}, feature_dim={self.feature_dim}, dim={self.dim}"


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def build_image_map(p: JointEmbeddingParams, feature_dim: int, dtype: torch.dtype) -> nn.Module:
    """``linear``: z = W s + b (thesis eq. 5.2). ``mlp``: ``mlp_layers`` Linear layers F → H →
    … → H → d with ``mlp_activation`` between them, none on the output (thesis §6.2.3)."""
    if p.image_map == "linear":
        return nn.Linear(feature_dim, p.dim, bias=p.image_bias, dtype=dtype)
    widths = [feature_dim] + [p.mlp_hidden] * (p.mlp_layers - 1) + [p.dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        if i:
            layers.append(ACTIVATIONS[p.mlp_activation]())
        layers.append(nn.Linear(a, b, bias=p.image_bias, dtype=dtype))
    return nn.Sequential(*layers)


def build_joint_embedding(family: str, params: JointEmbeddingParams, num_labels: int,
                          feature_dim: int) -> JointEmbedding:
    """The module of a registered joint family."""
    if family not in GEOMETRY:
        raise ConfigError(f"{family!r} is not a joint-embedding family; allowed: "
                          f"{', '.join(sorted(GEOMETRY))}")
    return JointEmbedding(GEOMETRY[family], params, num_labels, feature_dim)


def _builder(family: str):
    def build(cfg: ModelConfig, params: JointEmbeddingParams, h: Hierarchy, in_ch: int = 3,
              *, feature_dim: int | None = None) -> JointEmbedding:
        if feature_dim is None:  # F depends on the feature source, which the task resolves
            raise ConfigError(f"family {family!r} needs feature_dim (the size of its frozen "
                              "image features); build it with "
                              "hpsearch.tasks.joint_embedding.joint_model(cfg, hierarchy)")
        return build_joint_embedding(family, params, h.num_nodes, feature_dim)

    build.__name__ = f"build_{family}"
    return build


register_family("joint_order_embedding", task=TASK, params=JointOrderEmbeddingParams,
                description="order embeddings of labels + images via W·CNN(i) (thesis §5.6)"
                )(_builder("joint_order_embedding"))
register_family("joint_euclidean_cone", task=TASK, params=JointEuclideanConeParams,
                description="Euclidean cones of labels + images via W·CNN(i) (thesis §5.6)"
                )(_builder("joint_euclidean_cone"))
register_family("joint_hyperbolic_cone", task=TASK, params=JointHyperbolicConeParams,
                description="hyperbolic cones of labels + images via exp0(W·CNN(i)) (§5.6)"
                )(_builder("joint_hyperbolic_cone"))
