"""The ``joint_embedding`` experiment: labels and images in one order-preserving space
(thesis §5.6, §6.2).

Graph. Nodes are the N labels (global :class:`~hpsearch.hierarchy.Hierarchy` indices
``0..N-1``) and the M *training* images (``N..N+M-1``). Positives are the label closure plus,
for every training image, one edge from each label of its root path (every level) to the
image: ``|closure| + L·M`` edges, the transitive closure of "label tree + label → image".
val/test images are never in the graph; they are only classified.

Negatives (per positive, drawn on the device every epoch, :class:`JointNegativeSampler`):
``k`` corrupted children (u, v') and ``k`` corrupted parents (u', v). A *label* endpoint is
replaced by a label (``negative_strategy``: pick-per-level, same level as the replaced label,
or any label); an *image* endpoint — only label → image edges have one — by another training
image. Hence a negative is label–label or label → image, **never image–image** (thesis §5.6:
images are not pushed apart unless their labels require it). A candidate that is a positive
(closure edge, or a label on the image's root path) or a self pair is redrawn; after all
rounds it is masked out of the loss. Two variants (thesis §5.6, §6.2.4):
``negative_image_slot`` makes images one more pick-per-level slot (so label-label positives
also get (u, image) and (image, v) negatives, the published oe.py's last pass), and
``image_negative_fraction`` r makes every replacement an image with probability r (0.5 =
the thesis' 50:50); neither ever pairs two images.

Loss per batch (eq. 2.3), a sum as in the published code; ``loss`` reported per positive:

    L = Σ_pos E(f(u), f(v)) + Σ_neg max(0, α − E(f(u'), f(v')))

with f = the label table for labels and f_i = map(W · s(φ(i)) + b) for images
(:class:`~hpsearch.models.joint_embedding.JointEmbedding`); labels and W have separate
optimizers and learning rates (``label_lr``, ``image_lr``).

Classification (eq. 5.1), per level l and image i: ŷ_l(i) = argmin_{u ∈ level l} E(f(u), f_i(i)).
Cone energies are exactly 0 for every cone that contains the image, so ties are common; they are
broken by the signed violation (Ξ − ψ for cones, max_j (x_j − y_j) for order embeddings: how
deep inside the cone/orthant the image lies), never by label index. Metrics (bare names):

* ``micro_f1`` over all (image, level) pairs (= pair accuracy), ``micro_f1_level_<l>``,
  ``macro_f1`` (mean over labels that are true or predicted somewhere; the published code's
  per-level macro divided by N_l + 1), precision/recall variants (``level_metrics``);
* ``hit_at_3``, ``hit_at_5``: the true label is among the k lowest energies of its level,
  averaged over (image, level) pairs (published oe.py);
* label-graph reconstruction over all ordered label pairs (thesis §5.6 "graph reconstruction
  task", no image edges): ``full_f1``, ``recon_tpr``, ``recon_tnr``, ``recon_threshold``,
  ``recon_basic_f1`` (as the label-only experiment).

Features come from a frozen network, extracted once per (source, dataset) and cached
(:mod:`hpsearch.tasks.joint_embedding.features`). With ``train_backbone`` the same network
(same seeded init or checkpoint) is trained end to end instead: every batch's images go
through it (train mode), with its own Adam at ``backbone_lr``; the cache then only gives the
step-0 train features for the standardisation μ/σ. Staged init (thesis §6.2.6):
``init=from_run`` loads the label table from a label-only run's ``label_embeddings.pt`` (its
folder, or its checkpoint directory), matched by label name
(:mod:`hpsearch.tasks.joint_embedding.init`).

Distributed runs are not data-parallel (every rank runs the same seeded computation); use one
worker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hpsearch.data import HierDataset, load_dataset
from hpsearch.data.negatives import JointNegativeSampler
from hpsearch.errors import ConfigError, DataError, NonFiniteLossError
from hpsearch.hierarchy import Hierarchy
from hpsearch.metrics.classification import level_metrics, levels_to_multihot
from hpsearch.metrics.hierarchical import leaf_lca_heights, mistake_severity, path_consistency
from hpsearch.models.joint_embedding import (
    JointEmbedding,
    JointEmbeddingParams,
    build_joint_embedding,
)
from hpsearch.tasks.base import RunContext, require_family
from hpsearch.tasks.config import TrialConfig
from hpsearch.tasks.edges import ReconstructionCache, margin_epoch
from hpsearch.tasks.joint_embedding.classify import CHUNK_ELEMS, classify_levels
from hpsearch.tasks.joint_embedding.features import (
    SPLITS,
    build_extractor,
    cached_features,
    feature_source,
)
from hpsearch.tasks.joint_embedding.init import JOINT_META_FILE, load_label_table
from hpsearch.tasks.label_embedding import EMBEDDINGS_FILE, NODES_FILE
from hpsearch.tasks.optim import build_optimizer, build_scheduler, load_optimizer_state

TASK = "joint_embedding"
IMAGE_MAP_FILE = "image_map.pt"
BACKBONE_FILE = "backbone.pt"  # train_backbone: the fine-tuned CNN's state dict


def check_level_labels(data: HierDataset) -> None:
    """Joint embeddings classify one label per level (eq. 5.1): the hierarchy must be leveled
    and every split's level labels must fit its levels, else :class:`DataError`."""
    h = data.hierarchy
    if not h.is_leveled:
        raise DataError(f"dataset {data.name!r}: joint embeddings classify one label "
                        "per level (eq. 5.1) and need a tree whose leaves all lie on the "
                        "last level")
    for s in SPLITS:
        y = data.split(s).level_labels
        if y.ndim != 2 or y.shape[1] != h.num_levels or (len(y) and (
                (y < 0).any() or (y >= np.asarray(h.level_sizes)).any())):
            raise DataError(f"dataset {data.name!r} split {s}: level labels of shape "
                            f"{y.shape} do not fit the hierarchy's levels "
                            f"{list(h.level_sizes)}")


@dataclass(frozen=True, eq=False)
class TrainingGraph:
    """The graph a joint model is trained on (module docstring, "Graph"): labels ``0..N-1``,
    training images ``N..N+M-1``; positives are the label closure plus one edge from each label
    of an image's root path to the image; negatives come from :attr:`sampler`."""

    closure: Tensor  # [E, 2] label (ancestor, descendant) pairs
    basic: Tensor  # [B, 2] label (parent, child) edges
    positives: Tensor  # [E + M·L, 2]
    sampler: JointNegativeSampler

    @classmethod
    def build(cls, h: Hierarchy, train_local: Tensor, p: JointEmbeddingParams,
              device: torch.device) -> TrainingGraph:
        """From the hierarchy and the training images' local level labels ``[M, L]``."""
        n = h.num_nodes
        offsets = torch.as_tensor(h.offsets, dtype=torch.int64, device=device)
        train_global = train_local + offsets  # [M, L] label ids of root paths
        m, levels = train_global.shape
        closure = torch.as_tensor(h.closure_edges, dtype=torch.int64,
                                  device=device).reshape(-1, 2)
        basic = torch.as_tensor(h.basic_edges, dtype=torch.int64, device=device).reshape(-1, 2)
        images = n + torch.arange(m, device=device).repeat_interleave(levels)
        image_edges = torch.stack([train_global.reshape(-1), images], dim=1)  # [M·L, 2]
        sampler = JointNegativeSampler(
            n, closure, torch.as_tensor(h.depth), train_global,
            strategy=p.negative_strategy, negatives_per_side=p.negatives_per_side,
            device=device, image_slot=p.negative_image_slot,
            image_fraction=p.image_negative_fraction)
        pos = closure if p.train_edges == "labels" else torch.cat([closure, image_edges])
        return cls(closure, basic, pos, sampler)


def classification_metrics(pred: Tensor, y: Tensor, hits: dict[int, Tensor], h: Hierarchy,
                           lca: np.ndarray) -> dict[str, float]:
    """Metrics of the eq. 5.1 prediction ``pred [M, L]`` against ``y [M, L]`` (local labels):
    the classifiers' per-level and hierarchy-aware metrics under the same names, and hit@k
    overall and per level."""
    pm = levels_to_multihot(pred, h.offsets, h.num_nodes)
    tm = levels_to_multihot(y, h.offsets, h.num_nodes)
    out = level_metrics(pm, tm, h.offsets, h.level_sizes)
    p_np, y_np = pred.cpu().numpy(), y.cpu().numpy()
    out["accuracy"] = float((p_np[:, -1] == y_np[:, -1]).mean())
    out.update(mistake_severity(p_np[:, -1], y_np[:, -1], lca))
    out["path_consistency"] = path_consistency(p_np, h)
    for k, hk in hits.items():
        out[f"hit_at_{k}"] = float(hk.double().mean())
        for lvl in range(hk.shape[1]):
            out[f"hit_at_{k}_level_{lvl}"] = float(hk[:, lvl].double().mean())
    return out


class JointEmbeddingExperiment:
    """Trains one joint family on an image dataset with a label hierarchy.

    Args:
        cfg: the trial config; ``cfg.model.family`` must be a ``joint_embedding`` family.
        ctx: device / rank.
        dataset: the loaded dataset (``load_dataset(cfg.data)`` when omitted).
    """

    def __init__(self, cfg: TrialConfig, ctx: RunContext | None = None,
                 dataset: HierDataset | None = None) -> None:
        self.cfg = cfg
        self.ctx = ctx or RunContext()
        self.device = torch.device(self.ctx.device)
        p: JointEmbeddingParams = require_family(cfg, TASK)
        self.params = p
        self.data = dataset if dataset is not None else load_dataset(cfg.data)
        h = self.data.hierarchy
        self.hierarchy: Hierarchy | None = h
        self.nodes = tuple(h.names)
        n = h.num_nodes
        check_level_labels(self.data)

        self.source = feature_source(cfg.model, p)
        # end to end: only the step-0 train features (for μ, σ); the CNN then runs per batch
        feats = cached_features(self.source, cfg.data, self.data, device=self.device,
                                batch_size=p.feature_batch_size,
                                splits=("train",) if p.train_backbone else SPLITS)
        self.features = {s: torch.from_numpy(np.array(f, dtype=np.float32)).to(self.device)
                         for s, f in feats.items()}  # [M_s, F]
        self.backbone: torch.nn.Module | None = None
        if p.train_backbone:
            ext = build_extractor(self.source, self.data, cfg.data, self.device)
            self.backbone, self.preprocess = ext.net, ext.preprocess
            self.backbone.requires_grad_(True)
            self.images = {s: self.data.split(s).images for s in SPLITS}  # uint8 [M, H, W, C]
        self.level_labels = {s: torch.as_tensor(self.data.split(s).level_labels,
                                                dtype=torch.int64, device=self.device)
                             for s in SPLITS}  # [M_s, L] local
        feature_dim = int(self.features["train"].shape[1])

        init_gen = torch.Generator().manual_seed(cfg.seed)
        self.model: JointEmbedding = build_joint_embedding(cfg.model.family, p, n, feature_dim)
        self.model.reset_parameters(init_gen)
        self.model.set_feature_stats(self.features["train"].cpu())
        self.model.to(self.device)
        if p.init == "from_run":
            self.model.labels.set_embeddings(self._init_table())
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)

        self.label_optimizer = build_optimizer([self.model.labels.weight], p.optimizer,
                                               lr=p.label_lr, momentum=p.momentum)
        self.image_optimizer = build_optimizer(
            self.model.image_map.parameters(), p.image_optimizer, lr=p.image_lr,
            momentum=p.momentum if p.image_optimizer == "sgd" else 0.0,
            weight_decay=p.image_weight_decay)
        self.optimizers: tuple[torch.optim.Optimizer, ...] = (self.label_optimizer,
                                                              self.image_optimizer)
        if self.backbone is not None:
            self.optimizers += (build_optimizer(
                [q for q in self.backbone.parameters() if q.requires_grad], "adam",
                lr=p.backbone_lr),)
        self.schedulers = tuple(build_scheduler(o, cfg.optim) for o in self.optimizers)

        self.offsets = tuple(h.offsets)
        self.level_sizes = tuple(h.level_sizes)
        graph = TrainingGraph.build(h, self.level_labels["train"], p, self.device)
        self.closure, self.basic = graph.closure, graph.basic
        self.train_pos, self.sampler = graph.positives, graph.sampler
        self.steps = 0
        self._reconstruction = ReconstructionCache(p.recon_max_nodes, CHUNK_ELEMS)
        self._lca: np.ndarray | None = None  # leaf LCA heights, for mistake severity

    def _init_table(self) -> Tensor:
        p = self.params
        x = load_label_table(p.init_from, self.nodes, self.model.geometry)  # type: ignore
        if x.ndim != 2 or x.shape[1] != p.dim:
            raise ConfigError(f"init_from={p.init_from!r} holds {x.shape[-1]}-d label "
                              f"embeddings but model.params.dim={p.dim}; set dim to "
                              f"{x.shape[-1]} or use a run of dimension {p.dim}")
        return x

    # ------------------------------------------------------------------ embeddings
    def _embed(self, ids: Tensor, split: str = "train") -> Tensor:
        """Embeddings of node ids (labels < N <= images of ``split``): ``[..., d]``; each
        distinct node is embedded once."""
        n = self.model.num_labels
        uniq, inv = torch.unique(ids.reshape(-1), return_inverse=True)  # sorted: labels first
        lab = uniq[uniq < n]
        img = uniq[uniq >= n] - n
        parts = [self.model.label_embeddings(lab)]
        if len(img):
            parts.append(self.model.image_embeddings(self._image_features(img, split)))
        table = torch.cat(parts)
        return table[inv].reshape(*ids.shape, -1)

    def _image_features(self, idx: Tensor, split: str) -> Tensor:
        """φ of images ``idx`` of ``split``: ``[n, F]`` (cached, or the trained CNN)."""
        if self.backbone is None:
            return self.features[split][idx]
        x = torch.from_numpy(np.asarray(self.images[split][idx.cpu().numpy()]))
        f = self.backbone.forward_features(self.preprocess(x.to(self.device)))
        return f.reshape(len(idx), -1)

    def _loss(self, pos: Tensor, neg: Tensor, ok: Tensor) -> Tensor:
        b = len(pos)
        emb = self._embed(torch.cat([pos.reshape(-1, 2), neg.reshape(-1, 2)]))  # [B+B·2k, 2, d]
        e = self.model.energy(emb[:, 0], emb[:, 1])
        e_pos, e_neg = e[:b], e[b:].reshape(ok.shape)
        return e_pos.sum() + ((self.model.margin - e_neg).clamp_min(0) * ok).sum()

    # ------------------------------------------------------------------ training
    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        params = [q for q in self.model.parameters() if q.requires_grad]
        if self.backbone is not None:
            self.backbone.train()
            params += [q for q in self.backbone.parameters() if q.requires_grad]
        st = margin_epoch(self.train_pos, self.sampler, self._loss, self.optimizers, params,
                          batch_size=self.cfg.optim.batch_size,
                          grad_clip=self.cfg.optim.grad_clip, generator=self.gen)
        self.steps += st.steps
        lrs = [float(o.param_groups[0]["lr"]) for o in self.optimizers]
        for sch in self.schedulers:
            if sch is not None:
                sch.step()
        mean = st.mean_loss
        finite = all(bool(torch.isfinite(q).all()) for q in params)
        if not np.isfinite(mean) or not finite:
            raise NonFiniteLossError(
                f"joint-embedding loss became {mean} in epoch {epoch} (family "
                f"{self.cfg.model.family}, label_lr {lrs[0]}, image_lr {lrs[1]}); lower "
                "model.params.label_lr / image_lr or set optim.grad_clip")
        extra = {"backbone_lr": lrs[2]} if self.backbone is not None else {}
        return {"loss": mean, "label_lr": lrs[0], "image_lr": lrs[1], **extra,
                "positives": float(st.positives),
                "valid_negative_fraction": st.valid_negative_fraction}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def image_embeddings(self, split: str) -> Tensor:
        """``[M_split, d]`` f_i of every image of ``split`` (on the device)."""
        if self.backbone is not None:
            self.backbone.eval()
            n = len(self.images[split])
            bs = self.params.feature_batch_size
            parts = [self.model.image_embeddings(self._image_features(
                torch.arange(a, min(a + bs, n)), split)) for a in range(0, n, bs)]
            return torch.cat(parts) if parts else torch.zeros(0, self.model.dim,
                                                              device=self.device)
        f = self.features[split]
        rows = max(1, CHUNK_ELEMS // max(f.shape[1], 1))
        parts = [self.model.image_embeddings(f[a:a + rows]) for a in range(0, len(f), rows)]
        return torch.cat(parts) if parts else f.new_zeros(0, self.model.dim)

    @torch.no_grad()
    def predict(self, split: str) -> tuple[Tensor, dict[int, Tensor]]:
        """Eq. 5.1 on ``split``: ``(pred [M, L] local labels, {k: hit@k [M, L]})``."""
        return classify_levels(self.model, self.model.label_embeddings(),
                               self.image_embeddings(split), self.offsets, self.level_sizes,
                               self.level_labels[split])

    def reconstruction(self) -> dict[str, float]:
        """Label-graph reconstruction over all ordered label pairs (cached per update)."""
        return self._reconstruction(self.steps, self.model.energy,
                                    self.model.label_embeddings, self.closure, self.basic)

    def evaluate(self, split: str) -> dict[str, float]:
        if split not in SPLITS:
            raise ConfigError(f"joint embeddings evaluate one of {SPLITS}, got {split!r}")
        self.model.eval()
        y = self.level_labels[split]
        if len(y) == 0:
            raise DataError(f"split {split!r} of {self.data.name!r} has no images")
        pred, hits = self.predict(split)
        if self._lca is None:
            self._lca = leaf_lca_heights(self.hierarchy)
        out = classification_metrics(pred, y, hits, self.hierarchy, self._lca)
        out.update(self.reconstruction())
        return out

    # ------------------------------------------------------------------ state / export
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "backbone": None if self.backbone is None else self.backbone.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [None if s is None else s.state_dict() for s in self.schedulers],
            "steps": self.steps,
            "generator": self.gen.get_state(),
            "feature_source": self.source.key_parts(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.backbone is not None and state.get("backbone") is not None:
            self.backbone.load_state_dict(state["backbone"])
        opt_states = state.get("optimizers")  # absent from best.pt (inference state)
        for o, st in zip(self.optimizers, opt_states or [None] * len(self.optimizers),
                         strict=True):
            if st is None:
                continue
            load_optimizer_state(o, st)
        for sch, st in zip(self.schedulers,
                           state.get("schedulers") or [None] * len(self.schedulers),
                           strict=True):
            if sch is not None and st is not None:
                sch.load_state_dict(st)
        self.steps = int(state.get("steps", 0))
        if state.get("generator") is not None:
            self.gen.set_state(state["generator"].cpu())
        self._reconstruction.clear()

    def reports(self, split: str) -> dict[str, str]:
        return {}

    @property
    def geometry(self) -> str:
        return self.model.geometry

    @torch.no_grad()
    def embeddings(self) -> Tensor:
        """``[N, d]`` label embeddings (CPU): lets a joint run seed another (staged init)."""
        return self.model.label_embeddings().detach().cpu()

    def export(self, out_dir: Path) -> dict[str, Any]:
        """Write ``label_embeddings.pt`` ([N, d] f_l), ``label_nodes.json``, ``image_map.pt``
        (W, b, feature μ/σ) and ``joint_embedding.json`` (geometry, energy, feature source)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.embeddings(), out_dir / EMBEDDINGS_FILE)
        (out_dir / NODES_FILE).write_text(json.dumps(list(self.nodes)))
        m = self.model
        image_map: dict[str, Any] = {"feature_mean": m.feature_mean.detach().cpu(),
                                     "feature_scale": m.feature_scale.detach().cpu()}
        if isinstance(m.image_map, torch.nn.Linear):
            image_map["weight"] = m.image_map.weight.detach().cpu()
            image_map["bias"] = (None if m.image_map.bias is None
                                 else m.image_map.bias.detach().cpu())
        else:  # mlp: Sequential state dict (Linear layers at the even indices)
            image_map["layers"] = {k: v.detach().cpu() for k, v in
                                   m.image_map.state_dict().items()}
        torch.save(image_map, out_dir / IMAGE_MAP_FILE)
        files = [EMBEDDINGS_FILE, NODES_FILE, IMAGE_MAP_FILE, JOINT_META_FILE]
        if self.backbone is not None:
            torch.save({k: v.detach().cpu() for k, v in self.backbone.state_dict().items()},
                       out_dir / BACKBONE_FILE)
            files.append(BACKBONE_FILE)
        meta = {"family": self.cfg.model.family, **m.describe(),
                "feature_source": self.source.describe(),
                "feature_source_key": self.source.key_parts(),
                "train_backbone": self.params.train_backbone,
                "levels": {"offsets": list(self.offsets), "sizes": list(self.level_sizes)},
                "convention": "edge (u, v) means v is-a u; an image i gets, per level, the "
                              "label u minimising E(f(u), f_i(i)), f_i = map(W ((phi - mean) / "
                              "scale) + b) (thesis eq. 5.1, 5.2)"}
        (out_dir / JOINT_META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return {"task": TASK, "files": files,
                "energy": m.labels.energy_kind, "geometry": m.geometry,
                "feature_source": self.source.describe()}

